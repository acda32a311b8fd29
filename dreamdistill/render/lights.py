"""The light of the training and orbit renders: a far point light fixed in each camera's frame."""

from __future__ import annotations

import torch

from dreamdistill.render.cameras import Cameras
from dreamdistill.render.config import RenderConfig
from dreamdistill.render.volume import Light

LIGHT_DISTANCE = 50.0
"""The point light sits this far along the light direction (practically a directional light)."""


def camera_light(cameras: Cameras, config: RenderConfig, generator: torch.Generator | None = None) -> Light:
    """A far point light in the camera frame's ``light_direction`` (jittered), per camera."""
    direction = torch.tensor(config.light_direction, dtype=torch.float32).expand(len(cameras), 3)
    if config.light_jitter > 0 and generator is not None:
        direction = direction + config.light_jitter * torch.randn(len(cameras), 3, generator=generator)
    direction = torch.nn.functional.normalize(direction, dim=-1)
    world = torch.einsum("bij,bj->bi", cameras.camera_to_world[:, :3, :3].float(), direction.to(cameras.azimuth))
    return Light(world * LIGHT_DISTANCE, torch.full((len(cameras),), config.ambient))
