"""Occupancy grid over the scene box [-1, 1]^3 for skipping empty space while marching rays.

Our own implementation of nerfacc's update rule (works on any device): each cell keeps an exponential
moving maximum of ``density * step_size`` (the opacity of one step) at a jittered point in the cell; a
cell is occupied when that exceeds ``min(opacity_threshold, mean)``, and the occupied set is dilated by
``dilation`` cells (one jittered sample per cell can miss a thin sliver of surface, and the margin lets
geometry grow). During warm-up every cell is
re-evaluated; afterwards a random quarter of all cells plus a random quarter's worth of occupied cells.
The CPU renderer looks cells up directly (:meth:`OccupancyGrid.occupied`); on CUDA the renderer hands the
same binary grid to nerfacc's ``OccGridEstimator`` (:meth:`OccupancyGrid.nerfacc_estimator`), whose
CUDA traversal skips empty cells.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

DensityFn = Callable[[torch.Tensor], torch.Tensor]


def dilate(mask: torch.Tensor, cells: int) -> torch.Tensor:
    """Grow a boolean grid [X, Y, Z] by ``cells`` in every direction (a cube neighbourhood)."""
    if cells <= 0:
        return mask
    grown = nn.functional.max_pool3d(mask[None, None].float(), 2 * cells + 1, stride=1, padding=cells)
    return grown[0, 0] > 0


class OccupancyGrid(nn.Module):
    """A ``resolution^3`` binary occupancy grid of [-bound, bound]^3; starts fully occupied."""

    def __init__(
        self,
        resolution: int = 64,
        opacity_threshold: float = 0.01,
        decay: float = 0.95,
        warmup_steps: int = 256,
        update_every: int = 16,
        bound: float = 1.0,
        dilation: int = 1,
    ) -> None:
        super().__init__()
        self.resolution = resolution
        self.opacity_threshold = opacity_threshold
        self.decay = decay
        self.warmup_steps = warmup_steps
        self.update_every = update_every
        self.bound = bound
        self.dilation = dilation
        cells = resolution**3
        self.register_buffer("occupancy", torch.zeros(cells))  # EMA of density * step_size per cell
        self.register_buffer("mask", torch.ones(resolution, resolution, resolution, dtype=torch.bool))  # [x, y, z]
        self._estimator: list[Any] = []  # a list, so that nerfacc's module is not registered as a submodule

    @property
    def occupied_fraction(self) -> float:
        return float(self.mask.float().mean())

    def cell_of(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat cell index [N] of world points x [N, 3] (clamped) and whether each point is inside the box [N]."""
        unit = (x + self.bound) / (2 * self.bound)  # [N, 3] in [0, 1] inside the box
        inside = ((unit >= 0) & (unit <= 1)).all(dim=-1)
        cell = (unit * self.resolution).long().clamp(0, self.resolution - 1)
        flat = (cell[:, 0] * self.resolution + cell[:, 1]) * self.resolution + cell[:, 2]
        return flat, inside

    def occupied(self, x: torch.Tensor) -> torch.Tensor:
        """Whether world points x [N, 3] fall in occupied cells, [N] bool (False outside the box)."""
        flat, inside = self.cell_of(x)
        return self.mask.view(-1)[flat] & inside

    def occupied_bounds(self) -> tuple[torch.Tensor, torch.Tensor]:
        """World-space corners (min [3], max [3]) of the box around all occupied cells (empty: min > max)."""
        cells = torch.nonzero(self.mask)  # [M, 3]
        if cells.numel() == 0:
            return self.mask.new_ones(3, dtype=torch.float32), -self.mask.new_ones(3, dtype=torch.float32)
        size = 2 * self.bound / self.resolution
        return cells.amin(dim=0) * size - self.bound, (cells.amax(dim=0) + 1) * size - self.bound

    @torch.no_grad()
    def update(
        self,
        density_fn: DensityFn,
        step_size: float,
        step: int | None = None,
        generator: torch.Generator | None = None,
        chunk: int = 1 << 18,
    ) -> bool:
        """Re-evaluate cells with ``density_fn(x [M, 3]) -> [M]``; with ``step`` only every ``update_every``
        steps (all cells before ``warmup_steps``). Without ``step``, every cell now. Returns whether it ran."""
        if step is not None and step % self.update_every != 0:
            return False
        device = self.occupancy.device
        cells = self.resolution**3
        if step is None or step < self.warmup_steps:
            indices = torch.arange(cells, device=device)
        else:
            uniform = torch.randperm(cells, generator=generator)[: cells // 4].to(device)
            occupied = torch.nonzero(self.mask.view(-1))[:, 0]
            pick = torch.randperm(occupied.numel(), generator=generator)[: cells // 4].to(device)
            indices = torch.cat([uniform, occupied[pick]])
        res = self.resolution
        coords = torch.stack([indices // (res * res), (indices // res) % res, indices % res], dim=-1)  # [M, 3]
        jitter = torch.rand(coords.shape, generator=generator).to(device)
        points = (coords + jitter) / res * (2 * self.bound) - self.bound  # [M, 3] world
        values = torch.cat([density_fn(part) for part in points.split(chunk)]).float() * step_size
        self.occupancy[indices] = torch.maximum(self.occupancy[indices] * self.decay, values)
        threshold = self.occupancy.mean().clamp(max=self.opacity_threshold)
        self.mask.copy_(dilate((self.occupancy > threshold).view(res, res, res), self.dilation))
        return True

    @torch.no_grad()
    def visible_cells(self, density_fn: DensityFn, step_size: float, samples: int = 8, min_opacity: float = 1e-4,
                      seed: int = 0, chunk: int = 1 << 18) -> OccupancyGrid:
        """A tight grid of the field as it is now, for renders without gradients: a cell is kept (then dilated
        by ``dilation``) when the largest step opacity ``density * step_size`` at ``samples`` jittered points
        (drawn from ``seed``: renders are reproducible) exceeds ``min_opacity``. Samples it drops add less
        than ``min_opacity`` each to a pixel. The training grid keeps a slowly decaying maximum (so geometry
        can grow back), which on a short run still remembers the initial blob."""
        res = self.resolution
        generator = torch.Generator().manual_seed(seed)
        corner = torch.stack(torch.meshgrid(*[torch.arange(res)] * 3, indexing="ij"), dim=-1).reshape(-1, 3)
        peak = torch.zeros(res**3, device=self.mask.device)
        for _ in range(samples):
            points = (corner + torch.rand(corner.shape, generator=generator)) / res * (2 * self.bound) - self.bound
            points = points.to(self.mask.device)
            values = torch.cat([density_fn(part) for part in points.split(chunk)]).float() * step_size
            peak = torch.maximum(peak, values)
        grid = OccupancyGrid(res, self.opacity_threshold, self.decay, self.warmup_steps, self.update_every,
                             self.bound, self.dilation).to(self.mask.device)
        grid.occupancy.copy_(peak)
        grid.mask.copy_(dilate((peak > min_opacity).view(res, res, res), self.dilation) & self.mask)
        return grid

    def nerfacc_estimator(self) -> Any:
        """nerfacc's ``OccGridEstimator`` over the same box, sharing this grid's state (for CUDA marching)."""
        import nerfacc

        if not self._estimator:
            box = [-self.bound] * 3 + [self.bound] * 3
            self._estimator.append(nerfacc.OccGridEstimator(roi_aabb=box, resolution=self.resolution, levels=1))
        estimator = self._estimator[0].to(self.mask.device)
        estimator.binaries = self.mask[None]  # [1, x, y, z], nerfacc's layout
        estimator.occs = self.occupancy
        return estimator
