"""Deterministic DDIM (η = 0): the transition and an N-step sampler (CFG lives in ``denoiser.py``)."""

from __future__ import annotations

from collections.abc import Callable

import torch

from dreamdistill.diffusion.schedule import NoiseSchedule, _shape_like, x0_from_eps

EpsFunction = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x_t [B, ...], t [B] integer timesteps) -> ε̂ [B, ...]."""


def ddim_transition(*, x_s: torch.Tensor, x0: torch.Tensor, alpha_s, sigma_s, alpha_t, sigma_t) -> torch.Tensor:
    """DDIM_{s→t}(x_s; x̂0) = (σ_t/σ_s) x_s + α_s (α_t/α_s − σ_t/σ_s) x̂0."""
    ratio = _shape_like(sigma_t / sigma_s, x_s)
    coefficient = _shape_like(alpha_s * (alpha_t / alpha_s - sigma_t / sigma_s), x_s)
    return ratio * x_s + coefficient * x0


def ddim_step(
    eps_fn: EpsFunction, x_s: torch.Tensor, s: torch.Tensor, t: torch.Tensor, schedule: NoiseSchedule
) -> tuple[torch.Tensor, torch.Tensor]:
    """One deterministic step from integer timestep s to t (t < 0: to the final ᾱ).

    Returns (x_t, x̂0). Schedule coefficients are computed in float64.
    """
    s = torch.as_tensor(s, device=x_s.device).expand(x_s.shape[0])
    t = torch.as_tensor(t, device=x_s.device).expand(x_s.shape[0])
    alpha_s, sigma_s = schedule.alpha_sigma(s)
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    eps = eps_fn(x_s, s)
    x0 = x0_from_eps(x_t=x_s.double(), eps=eps.double(), alpha=alpha_s, sigma=sigma_s)
    x_t = ddim_transition(x_s=x_s.double(), x0=x0, alpha_s=alpha_s, sigma_s=sigma_s, alpha_t=alpha_t, sigma_t=sigma_t)
    return x_t.to(x_s.dtype), x0.to(x_s.dtype)


def ddim_sample(
    eps_fn: EpsFunction,
    noise: torch.Tensor,
    schedule: NoiseSchedule,
    timesteps: torch.Tensor,
    progress: Callable | None = None,
) -> torch.Tensor:
    """Deterministic DDIM from ``noise`` through ``timesteps`` (noisiest first) to x̂0.

    Each step goes to the next listed timestep; the last goes to the final ᾱ.
    ``progress`` optionally wraps the step iterator (e.g. tqdm).
    """
    x = noise
    following = torch.cat([timesteps[1:], torch.tensor([-1], dtype=timesteps.dtype)])
    pairs = list(zip(timesteps.tolist(), following.tolist()))
    for s, t in progress(pairs) if progress else pairs:
        x, _ = ddim_step(eps_fn, x, torch.tensor(s), torch.tensor(t), schedule)
    return x
