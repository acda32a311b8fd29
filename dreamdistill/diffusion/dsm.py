"""Denoising score matching in a network's own prediction type (the teacher's, a fake score's, the VSD critic's)."""

from __future__ import annotations

import torch

from dreamdistill.diffusion.schedule import PredictionType, output_from_x0_eps


def denoising_loss(output: torch.Tensor, *, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma,
                   prediction_type: PredictionType) -> torch.Tensor:
    """DSM, eq. E ‖f(x_t, t) − target(x0, ε)‖² with x_t = α x0 + σ ε and target ε, v = α ε − σ x0 or x0."""
    target = output_from_x0_eps(x0=x0.float(), eps=eps.float(), alpha=alpha, sigma=sigma,
                                prediction_type=prediction_type)
    return (output.float() - target.float()).square().mean()
