"""The scene's regularisers: pure penalties on a render, and their weighted total for one step."""

from __future__ import annotations

import torch

from dreamdistill.lift3d.config import RegularizerConfig
from dreamdistill.lift3d.schedules import ramp_weight
from dreamdistill.render.volume import RenderOutput


def sparsity_penalty(opacity: torch.Tensor, target: float) -> torch.Tensor:
    """Σ over images of H·W·max(0, mean opacity − target) for opacity [B, 1, H, W] (Σ opacity when target = 0)."""
    pixels = opacity.shape[-1] * opacity.shape[-2]
    return (opacity.flatten(1).mean(1) - target).clamp(min=0).sum() * pixels


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """−p log p − (1 − p) log(1 − p), elementwise, with p clamped away from 0 and 1."""
    p = p.clamp(1e-5, 1 - 1e-5)
    return -(p * p.log() + (1 - p) * (1 - p).log())


DISTORTION_OPACITY_FLOOR = 0.01
"""ε of the normalised distortion L_dist / (A² + ε): on rays under about 0.1 opacity (A² < ε) the term is the raw,
quadratic one again (× 1/ε), so a faint haze still pays to fade, and empty rays do not divide by zero."""


def normalised_distortion(distortion: torch.Tensor, opacity: torch.Tensor) -> torch.Tensor:
    """Per-pixel distortion over (opacity² + ε): scaling all of a ray's weights by s leaves it (nearly) unchanged."""
    return distortion / (opacity.square() + DISTORTION_OPACITY_FLOOR)


def normal_smoothness_penalty(normal: torch.Tensor) -> torch.Tensor:
    """Σ over horizontally and vertically adjacent pixel pairs (u, v) of sg(|N_u| |N_v|)·|n̂_u − n̂_v|² for a
    composited normal map N [B, 3, H, W] (Σ_i w_i n_i per pixel, so |N| ≤ the opacity), n̂ = N / |N|, summed over
    the batch. The weight is detached, so the term cannot fall by thinning the object. It is small at a silhouette
    and on a hazy ray whose normals cancel (small |N|), and it bounds the gradient: ∂/∂N_v is at most about
    4 |N_u|, where a weight by opacity would grow as A_v / |N_v|."""
    length = normal.norm(dim=1, keepdim=True)
    unit = normal / length.clamp(min=1e-6)
    weight = length.detach()
    across = (unit[..., :, 1:] - unit[..., :, :-1]).square().sum(1, keepdim=True)
    down = (unit[..., 1:, :] - unit[..., :-1, :]).square().sum(1, keepdim=True)
    return ((across * weight[..., :, 1:] * weight[..., :, :-1]).sum()
            + (down * weight[..., 1:, :] * weight[..., :-1, :]).sum())


def regularizer_losses(config: RegularizerConfig, out: RenderOutput, progress: float,
                       model_elements: int) -> dict[str, torch.Tensor]:
    """The active regularisers on a (square) render ``out`` at ``progress``, weighted, by config name
    (opacity_sparsity, opacity_entropy, orientation, normal_smoothness, distortion, eikonal); their sum is the
    regulariser loss.

    Each is a per-pixel sum rescaled to ``model_elements`` per image, the number of elements of the teacher's
    model space (3·32² for the toy teacher, 4·64² latents for SD): the surrogate loss is a sum over those, so
    a weight means the same for either teacher and at any render resolution, averaged over the batch."""
    resolution = out.image.shape[-1]
    per_image = model_elements / resolution**2 / out.image.shape[0]
    losses = {}
    if config.opacity_sparsity:
        losses["opacity_sparsity"] = (config.opacity_sparsity * sparsity_penalty(out.opacity, config.opacity_target)
                                      * per_image)
    entropy_weight = ramp_weight(config.opacity_entropy, config.opacity_entropy_from, progress)
    if entropy_weight:
        losses["opacity_entropy"] = entropy_weight * binary_entropy(out.opacity).sum() * per_image
    if config.orientation and out.orientation is not None:
        losses["orientation"] = config.orientation * out.orientation.sum() * per_image
    smoothness_weight = ramp_weight(config.normal_smoothness, config.normal_smoothness_from, progress)
    if smoothness_weight and out.normal is not None:
        losses["normal_smoothness"] = smoothness_weight * normal_smoothness_penalty(out.normal) * per_image
    distortion_weight = ramp_weight(config.distortion, config.distortion_from, progress)
    if distortion_weight and out.distortion is not None:
        distortion = (normalised_distortion(out.distortion, out.opacity) if config.distortion_normalised
                      else out.distortion)
        losses["distortion"] = distortion_weight * distortion.sum() * per_image
    if config.eikonal and out.eikonal is not None:
        losses["eikonal"] = config.eikonal * out.eikonal.sum() * per_image
    return losses
