"""Settings of the training renders: resolution schedule, batch, marching, shading, light, background, occupancy."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from dreamdistill.config import Range
from dreamdistill.scene.background import BackgroundMode


@dataclass
class RenderConfig:
    """Training renders: resolution schedule, batch, marching, shading, light, background, occupancy."""

    resolution: Annotated[int, Range(8, 2048)] = 32
    """Render resolution (pixels) for most of the run."""
    resolution_start: Annotated[int | None, Range(8, 2048)] = None
    """A lower resolution for the first part of the run (None: no schedule)."""
    resolution_switch: Annotated[float, Range(0, 1)] = 0.5
    """Fraction of the run after which ``resolution`` replaces ``resolution_start``."""
    supersample: Annotated[int, Range(1, 8)] = 1
    """Training renders at ``supersample`` × the resolution, box-averaged down (the toy world's data is rendered
    2 × 2 supersampled: a leg thinner than a pixel shows as a paler pixel, not as all or nothing)."""
    pixel_jitter: bool = False
    """Training rays through a random point of their pixel (stochastic antialiasing at no extra cost)."""
    batch_size: Annotated[int, Range(1, 256)] = 4
    """Cameras per step."""
    step_divisions: Annotated[int, Range(8, 4096)] = 128
    """Marching steps across the box diagonal (step size = 2√3 / this)."""
    albedo_warmup: Annotated[float, Range(0, 1)] = 0.1
    """Fraction of the run rendered with plain albedo before lit shading starts."""
    diffuse_probability: Annotated[float, Range(0, 1)] = 0.8
    """After warm-up, chance of diffuse shading for a step."""
    textureless_probability: Annotated[float, Range(0, 1)] = 0.0
    """After warm-up, chance of textureless shading."""
    textureless_until: Annotated[float, Range(0, 1, open_low=True)] = 1.0
    """Fraction of the run after which the textureless chance goes to diffuse shading (1: the whole run)."""
    geometry_probability: Annotated[float, Range(0, 1)] = 0.0
    """After warm-up, chance of geometry shading (diffuse with the albedo detached; the rest is albedo)."""

    def shading_chances(self) -> tuple[tuple[str, float], ...]:
        """(shading, chance) of one draw after warm-up, in draw order; albedo takes what is left."""
        return (("diffuse", self.diffuse_probability), ("textureless", self.textureless_probability),
                ("geometry", self.geometry_probability))
    ambient: Annotated[float, Range(0, 1)] = 0.5
    """Ambient fraction of the lit shadings."""
    light_direction: Annotated[tuple[float, float, float], Range(-1, 1)] = (-0.45, 0.6, 0.66)
    """Direction towards the light in the camera frame (x right, y up, z back): the toy data's upper left."""
    light_jitter: Annotated[float, Range(0, 10)] = 0.0
    """Std of a random perturbation of the light direction."""
    background: BackgroundMode = "fixed"
    """fixed (``background_color``), learned (MLP on direction) or random (per image while training)."""
    background_color: Annotated[tuple[float, float, float], Range(0, 1)] = (1.0, 1.0, 1.0)
    """Background colour (fixed), or the start of the learned one."""
    occupancy_resolution: Annotated[int, Range(0, 512)] = 48
    """Occupancy grid cells per side (0: no occupancy grid)."""
    occupancy_update_every: Annotated[int, Range(1, 10**6)] = 16
    """Steps between occupancy updates."""
    occupancy_warmup: Annotated[int, Range(0, 10**9)] = 64
    """Steps during which every cell is re-evaluated."""
    occupancy_threshold: Annotated[float, Range(0, 1)] = 0.01
    """Opacity of one marching step below which a cell counts as empty."""
    occupancy_decay: Annotated[float, Range(0, 1)] = 0.95
    """Per-update decay of each cell's remembered step opacity (Instant-NGP's 0.95 is sized for runs of 10^4+
    steps; on a run of a few hundred a cell forgets the initial blob only with a faster decay)."""
