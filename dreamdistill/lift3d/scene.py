"""A run's scene: field, background and occupancy grid built from the config or a checkpoint; orbit renders."""

from __future__ import annotations

import math

import numpy as np
import torch

from dreamdistill.lift3d.config import LiftConfig
from dreamdistill.render.cameras import Cameras
from dreamdistill.render.config import RenderConfig
from dreamdistill.render.lights import camera_light
from dreamdistill.render.occupancy import OccupancyGrid
from dreamdistill.render.volume import Shading, render
from dreamdistill.scene.background import Background
from dreamdistill.scene.config import SceneConfig
from dreamdistill.scene.field import Field
from dreamdistill.scene.hashgrid import HashGrid


def build_field(s: SceneConfig) -> Field:
    """The hash-grid field of a scene config (parameters drawn from the global RNG)."""
    grid = HashGrid(levels=s.levels, features_per_level=s.features_per_level, log2_table_size=s.log2_table_size,
                    base_resolution=s.base_resolution, max_resolution=s.max_resolution, backend=s.backend)
    return Field(grid, hidden_dim=s.hidden_dim, hidden_layers=s.hidden_layers, blob_density=s.blob_density,
                 blob_radius=s.blob_radius, geometry=s.geometry, beta=s.sdf_beta)


def marching_step(config: RenderConfig) -> float:
    """Marching step size: the box diagonal (2√3) over ``step_divisions``."""
    return 2 * math.sqrt(3) / config.step_divisions


def build_scene(config: LiftConfig, device: torch.device | str = "cpu"
                ) -> tuple[Field, Background, OccupancyGrid | None]:
    """Field, background and occupancy grid (None when ``occupancy_resolution`` is 0) on ``device``, from the
    global RNG."""
    r = config.render
    field_ = build_field(config.scene).to(device)
    background = Background(r.background, r.background_color).to(device)
    occupancy = occupancy_grid(r).to(device) if r.occupancy_resolution > 0 else None
    return field_, background, occupancy


def occupancy_grid(config: RenderConfig) -> OccupancyGrid:
    """A fresh occupancy grid with the ``occupancy_*`` settings of ``config``."""
    return OccupancyGrid(config.occupancy_resolution, config.occupancy_threshold, decay=config.occupancy_decay,
                         warmup_steps=config.occupancy_warmup, update_every=config.occupancy_update_every)


def load_scene(config: LiftConfig, checkpoint: dict,
               device: torch.device) -> tuple[Field, Background, OccupancyGrid | None]:
    """:func:`build_scene` with a checkpoint's field (and its background and occupancy when it has them), on
    ``device``, in eval mode."""
    field_, background, occupancy = build_scene(config, device)
    field_.load_state_dict(checkpoint["field"])
    if checkpoint.get("background") is not None:
        background.load_state_dict(checkpoint["background"])
    if occupancy is not None and checkpoint.get("occupancy") is not None:
        occupancy.load_state_dict(checkpoint["occupancy"])
    field_.eval()
    background.eval()
    return field_, background, occupancy


@torch.no_grad()
def render_orbit(field_: Field, background: Background, occupancy: OccupancyGrid | None, config: RenderConfig,
                 cameras: Cameras, resolution: int, shading: Shading = "diffuse",
                 occupancy_is_visible: bool = False) -> torch.Tensor:
    """Deterministic renders [B, 3, H, W] (on the CPU) with the training light (the teacher's look): the
    validation, turntable and metric renders of a run, and ``dreamdistill eval``. Puts the modules in eval mode.
    Marches only the occupancy grid's :meth:`~OccupancyGrid.visible_cells` (several times fewer samples);
    ``occupancy_is_visible``: ``occupancy`` already is that grid for this field (computed once for a field that
    does not change)."""
    field_.eval()
    background.eval()
    if occupancy is not None and not occupancy_is_visible:
        occupancy = occupancy.visible_cells(field_.density, marching_step(config))
    images = []
    for part in range(0, len(cameras), 4):
        sub = Cameras(*(t[part:part + 4] for t in (cameras.azimuth, cameras.elevation, cameras.distance,
                                                   cameras.fov)))
        out = render(field_, background, sub, resolution, shading=shading, light=camera_light(sub, config),
                     occupancy=occupancy, step_size=marching_step(config), stratified=False)
        images.append(out.image.cpu())
    return torch.cat(images)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [0, 1] -> [B, H, W, 3] uint8."""
    return (images.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)
