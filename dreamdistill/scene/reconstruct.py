"""Fit a :class:`Field` to posed images by photometric loss (a NeRF fit), and PSNR.

Used by the reconstruction benchmark and test; also a quick way to check the field and renderer together.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from dataclasses import field as dataclass_field

import torch

from dreamdistill.render.cameras import Cameras, generate_rays
from dreamdistill.render.occupancy import OccupancyGrid
from dreamdistill.render.volume import DEFAULT_STEP_SIZE, render, render_rays
from dreamdistill.scene.field import Field


def psnr(image: torch.Tensor, target: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB of images in [0, 1]."""
    mse = float(torch.mean((image.clamp(0, 1) - target) ** 2))
    return 10 * math.log10(1.0 / max(mse, 1e-12))


@dataclass
class FitResult:
    field: Field
    occupancy: OccupancyGrid
    steps: int
    seconds: float
    losses: list[float] = dataclass_field(default_factory=list)


def fit_field(
    images: torch.Tensor,
    cameras: Cameras,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    steps: int = 2000,
    max_seconds: float = float("inf"),
    rays_per_step: int = 4096,
    learning_rate: float = 1e-2,
    final_learning_rate_factor: float = 0.1,
    step_size: float = DEFAULT_STEP_SIZE,
    field: Field | None = None,
    seed: int = 0,
) -> FitResult:
    """Fit a field to ``images`` [N, 3, H, W] seen from ``cameras`` over a known solid ``background``.

    Stops after ``steps`` Adam steps or ``max_seconds``, whichever comes first; the learning rate decays
    exponentially to ``final_learning_rate_factor`` times its start over that budget.
    """
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    field = field if field is not None else Field()
    occupancy = OccupancyGrid()
    resolution = images.shape[-1]
    origins, directions = (t.reshape(-1, 3) for t in generate_rays(cameras, resolution))
    targets = images.permute(0, 2, 3, 1).reshape(-1, 3)
    background_color = torch.tensor(background)
    optimizer = torch.optim.Adam(
        [
            {"params": field.grid.parameters(), "lr": learning_rate},
            {"params": field.mlp.parameters(), "lr": learning_rate, "weight_decay": 1e-6},
        ],
        betas=(0.9, 0.99),
        eps=1e-15,
    )
    field.train()
    start = time.perf_counter()
    losses: list[float] = []
    step = 0
    while step < steps and time.perf_counter() - start < max_seconds:
        progress = max(step / steps, (time.perf_counter() - start) / max_seconds)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate * final_learning_rate_factor**progress
        occupancy.update(field.density, step_size, step=step, generator=generator)
        batch = torch.randint(0, origins.shape[0], (rays_per_step,), generator=generator)
        out = render_rays(
            field,
            origins[batch],
            directions[batch],
            background=background_color.expand(rays_per_step, 3),
            occupancy=occupancy,
            step_size=step_size,
            stratified=True,
            generator=generator,
        )
        loss = torch.nn.functional.mse_loss(out.color, targets[batch])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
        step += 1
    field.eval()
    return FitResult(field, occupancy, step, time.perf_counter() - start, losses)


@torch.no_grad()
def evaluate_psnr(
    field: Field,
    images: torch.Tensor,
    cameras: Cameras,
    occupancy: OccupancyGrid | None = None,
    background: tuple[float, float, float] = (1.0, 1.0, 1.0),
    step_size: float = DEFAULT_STEP_SIZE,
) -> list[float]:
    """PSNR per view of the field's renders against ``images`` [N, 3, H, W] over ``background``."""
    out = render(
        field,
        torch.tensor(background),
        cameras,
        images.shape[-1],
        occupancy=occupancy,
        step_size=step_size,
        stratified=False,
    )
    return [psnr(rendered, target) for rendered, target in zip(out.image, images)]
