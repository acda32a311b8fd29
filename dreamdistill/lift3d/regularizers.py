"""The scene's regularisers: pure penalties on a render, and their weighted total for one step."""

from __future__ import annotations

import torch

from dreamdistill.lift3d.config import RegularizerConfig
from dreamdistill.lift3d.schedules import ramp_weight
from dreamdistill.render.cameras import Cameras, generate_rays
from dreamdistill.render.volume import RenderOutput


def sparsity_penalty(opacity: torch.Tensor, target: float) -> torch.Tensor:
    """Σ over images of H·W·max(0, mean opacity − target) for opacity [B, 1, H, W] (Σ opacity when target = 0)."""
    pixels = opacity.shape[-1] * opacity.shape[-2]
    return (opacity.flatten(1).mean(1) - target).clamp(min=0).sum() * pixels


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """−p log p − (1 − p) log(1 − p), elementwise, with p clamped away from 0 and 1."""
    p = p.clamp(1e-5, 1 - 1e-5)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def orientation_penalty(normal: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """max(0, N·d)² per pixel [B, H, W] for composited normals N [B, 3, H, W] and ray directions d [B, H, W, 3]."""
    return (normal.permute(0, 2, 3, 1) * directions).sum(-1).clamp(min=0).pow(2)


def regularizer_losses(config: RegularizerConfig, out: RenderOutput, cameras: Cameras, progress: float,
                       teacher_image_size: int) -> dict[str, torch.Tensor]:
    """The active regularisers on a (square) render ``out`` of ``cameras`` at ``progress``, weighted, by config
    name (opacity_sparsity, opacity_entropy, orientation); their sum is the regulariser loss.

    Each is a per-pixel sum counted in the teacher's pixels (the surrogate's scale) at any render resolution:
    a 64 px render for a 32 px teacher weighs each render pixel a quarter."""
    resolution = out.image.shape[-1]
    per_image = (teacher_image_size / resolution) ** 2 / out.image.shape[0]
    losses = {}
    if config.opacity_sparsity:
        losses["opacity_sparsity"] = (config.opacity_sparsity * sparsity_penalty(out.opacity, config.opacity_target)
                                      * per_image)
    entropy_weight = ramp_weight(config.opacity_entropy, config.opacity_entropy_from, progress)
    if entropy_weight:
        losses["opacity_entropy"] = entropy_weight * binary_entropy(out.opacity).sum() * per_image
    if config.orientation and out.normal is not None:
        _, directions = generate_rays(cameras.to(out.image.device), resolution)
        losses["orientation"] = config.orientation * orientation_penalty(out.normal, directions).sum() * per_image
    return losses
