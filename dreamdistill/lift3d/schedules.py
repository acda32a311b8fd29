"""What changes over a run, as pure functions of progress ∈ [0, 1] (and each step's seed)."""

from __future__ import annotations

import torch

from dreamdistill.render.config import RenderConfig
from dreamdistill.render.volume import Shading
from dreamdistill.scene.config import SceneConfig


def step_seed(seed: int, step: int) -> int:
    """Seed of step ``step``'s random stream (independent of how the run was interrupted)."""
    return (seed * 1_000_003 + step * 7_919 + 12_345) % (2**63 - 1)


def learning_rate_factor(final_factor: float, progress: float) -> float:
    """Exponential decay of the learning rate: 1 at the start, ``final_factor`` at the end of the run."""
    return final_factor**progress


def resolution_at(config: RenderConfig, progress: float) -> int:
    """The resolution schedule."""
    if config.resolution_start is not None and progress < config.resolution_switch:
        return config.resolution_start
    return config.resolution


def pick_shading(config: RenderConfig, progress: float, generator: torch.Generator) -> Shading:
    """albedo during warm-up, then diffuse / textureless / geometry / albedo with the configured chances; from
    ``textureless_until`` on, the textureless chance is diffuse's."""
    draw = float(torch.rand(1, generator=generator))
    if progress < config.albedo_warmup:
        return "albedo"
    cumulative = 0.0
    for shading, chance in config.shading_chances():
        cumulative += chance
        if draw < cumulative:
            late_textureless = shading == "textureless" and progress >= config.textureless_until
            return "diffuse" if late_textureless else shading
    return "albedo"


def ramp_weight(weight: float, start: float, progress: float) -> float:
    """``weight`` scaled by a linear ramp from 0 at ``start`` to 1 at the end of the run (1 when start = 0)."""
    if start <= 0:
        return weight
    return weight * min(max((progress - start) / (1 - start), 0.0), 1.0)


def active_levels(scene: SceneConfig, progress: float) -> float | None:
    """The coarse-to-fine level schedule: ``levels_start`` growing linearly to all levels at ``levels_full_at``."""
    if scene.levels_start <= 0 or scene.levels_start >= scene.levels:
        return None
    fraction = min(progress / scene.levels_full_at, 1.0) if scene.levels_full_at > 0 else 1.0
    return scene.levels_start + (scene.levels - scene.levels_start) * fraction


def sdf_beta_at(scene: SceneConfig, progress: float) -> float:
    """The sdf geometry's Laplace scale: geometric from ``sdf_beta`` at the start to ``sdf_beta_end`` at the end
    (wide transitions while the shape forms, a sharp surface at the end; VolSDF learns β, here it is scheduled)."""
    return scene.sdf_beta * (scene.sdf_beta_end / scene.sdf_beta) ** min(max(progress, 0.0), 1.0)
