"""Noise-schedule math: x_t = α_t x_0 + σ_t ε (DESIGN.md notation).

This is the only module that reads a diffusers scheduler's ``alphas_cumprod``
(ᾱ_t = α_t²). Everything here is a pure function of tensors; schedule arithmetic
runs in float32 or wider and the results are cast back by the callers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

PredictionType = Literal["epsilon", "v_prediction", "sample"]
TimestepSpacing = Literal["leading", "trailing", "linspace"]


@dataclass(frozen=True)
class NoiseSchedule:
    """A discrete schedule read off a diffusers scheduler.

    ``alphas_cumprod`` [T] is ᾱ_t for integer t in [0, T); ``final_alpha_cumprod`` is the
    ᾱ a DDIM sampler lands on after its last step (1 when ``set_alpha_to_one``).
    """

    alphas_cumprod: torch.Tensor  # [T] float64
    final_alpha_cumprod: float
    prediction_type: PredictionType
    timestep_spacing: TimestepSpacing = "leading"
    steps_offset: int = 0
    _device_tables: dict = field(default_factory=dict, init=False, repr=False, compare=False)
    """``alphas_cumprod`` per device, copied once (no host-to-device copy per call)."""

    @classmethod
    def from_scheduler(cls, scheduler) -> NoiseSchedule:
        """Read a diffusers scheduler (any class with ``alphas_cumprod`` and a DDIM-like config)."""
        config = scheduler.config
        alphas_cumprod = torch.as_tensor(scheduler.alphas_cumprod, dtype=torch.float64)
        final = 1.0 if config.get("set_alpha_to_one", True) else float(alphas_cumprod[0])
        return cls(
            alphas_cumprod=alphas_cumprod,
            final_alpha_cumprod=final,
            prediction_type=config.get("prediction_type", "epsilon"),
            timestep_spacing=config.get("timestep_spacing", "leading"),
            steps_offset=int(config.get("steps_offset", 0)),
        )

    @property
    def num_train_timesteps(self) -> int:
        return self.alphas_cumprod.shape[0]

    def alpha_bar(self, t: torch.Tensor) -> torch.Tensor:
        """ᾱ_t for integer timesteps; t < 0 means "after the last step" (final ᾱ)."""
        t = torch.as_tensor(t)
        table = self._device_tables.get(t.device)
        if table is None:
            table = self._device_tables.setdefault(t.device, self.alphas_cumprod.to(t.device))
        values = table[t.clamp(min=0).long()]
        return torch.where(t < 0, torch.full_like(values, self.final_alpha_cumprod), values)

    def alpha_sigma(self, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(α_t, σ_t) in float64 for integer timesteps."""
        return alpha_sigma_from_alpha_bar(self.alpha_bar(t))

    def log_snr(self, t: torch.Tensor) -> torch.Tensor:
        """λ_t = log(α_t² / σ_t²)."""
        return log_snr_from_alpha_bar(self.alpha_bar(t))

    def timesteps(self, num_steps: int, spacing: TimestepSpacing | None = None) -> torch.Tensor:
        """Sampling timesteps, noisiest first (same values as diffusers' ``set_timesteps``)."""
        return sampling_timesteps(
            self.num_train_timesteps, num_steps, spacing or self.timestep_spacing, self.steps_offset
        )


def alpha_sigma_from_alpha_bar(alpha_bar: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """α = sqrt(ᾱ), σ = sqrt(1 − ᾱ)."""
    alpha_bar = alpha_bar.double()
    return alpha_bar.sqrt(), (1.0 - alpha_bar).clamp(min=0.0).sqrt()


def log_snr_from_alpha_bar(alpha_bar: torch.Tensor) -> torch.Tensor:
    """λ = log(ᾱ / (1 − ᾱ))."""
    alpha_bar = alpha_bar.double()
    return torch.log(alpha_bar) - torch.log1p(-alpha_bar)


def sampling_timesteps(num_train: int, num_steps: int, spacing: TimestepSpacing, steps_offset: int = 0) -> torch.Tensor:
    """Integer timesteps for an N-step sampler, noisiest first (Lin et al. 2023, Table 2)."""
    if not 1 <= num_steps <= num_train:
        raise ValueError(f"steps must be between 1 and {num_train}, got {num_steps}")
    if spacing == "leading":
        ratio = num_train // num_steps
        steps = torch.arange(num_steps, dtype=torch.float64) * ratio + steps_offset
        return steps.round().long().flip(0)
    if spacing == "trailing":
        ratio = num_train / num_steps
        steps = torch.round(torch.arange(num_train, 0, -ratio, dtype=torch.float64)) - 1
        return steps.long()
    if spacing == "linspace":
        return torch.linspace(0, num_train - 1, num_steps, dtype=torch.float64).round().long().flip(0)
    raise ValueError(f"unknown timestep spacing {spacing!r}; use leading, trailing or linspace")


def _shape_like(value: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Broadcast a per-sample [B] (or scalar) coefficient against a [B, ...] tensor."""
    value = torch.as_tensor(value, device=like.device)
    return value.reshape(value.shape + (1,) * (like.dim() - value.dim())).to(like.dtype)


def x0_from_eps(*, x_t: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """x0 = (x_t − σ ε) / α."""
    return (x_t - _shape_like(sigma, x_t) * eps) / _shape_like(alpha, x_t)


def eps_from_x0(*, x_t: torch.Tensor, x0: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """ε = (x_t − α x0) / σ."""
    return (x_t - _shape_like(alpha, x_t) * x0) / _shape_like(sigma, x_t)


def v_from_x0_eps(*, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """v = α ε − σ x0."""
    return _shape_like(alpha, x0) * eps - _shape_like(sigma, x0) * x0


def x0_from_v(*, x_t: torch.Tensor, v: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """x0 = α x_t − σ v (using α² + σ² = 1)."""
    return _shape_like(alpha, x_t) * x_t - _shape_like(sigma, x_t) * v


def eps_from_v(*, x_t: torch.Tensor, v: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """ε = σ x_t + α v (using α² + σ² = 1)."""
    return _shape_like(sigma, x_t) * x_t + _shape_like(alpha, x_t) * v


def score_from_eps(*, eps: torch.Tensor, sigma) -> torch.Tensor:
    """∇ log p(x_t) = −ε / σ."""
    return -eps / _shape_like(sigma, eps)


def eps_from_score(*, score: torch.Tensor, sigma) -> torch.Tensor:
    """ε = −σ ∇ log p(x_t)."""
    return -_shape_like(sigma, score) * score


def eps_from_output(
    output: torch.Tensor, *, x_t: torch.Tensor, alpha, sigma, prediction_type: PredictionType
) -> torch.Tensor:
    """ε from a network output of any prediction type."""
    if prediction_type == "epsilon":
        return output
    if prediction_type == "v_prediction":
        return eps_from_v(x_t=x_t, v=output, alpha=alpha, sigma=sigma)
    if prediction_type == "sample":
        return eps_from_x0(x_t=x_t, x0=output, alpha=alpha, sigma=sigma)
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def x0_from_output(
    output: torch.Tensor, *, x_t: torch.Tensor, alpha, sigma, prediction_type: PredictionType
) -> torch.Tensor:
    """x0 from a network output of any prediction type."""
    if prediction_type == "epsilon":
        return x0_from_eps(x_t=x_t, eps=output, alpha=alpha, sigma=sigma)
    if prediction_type == "v_prediction":
        return x0_from_v(x_t=x_t, v=output, alpha=alpha, sigma=sigma)
    if prediction_type == "sample":
        return output
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def output_from_x0_eps(
    *, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma, prediction_type: PredictionType
) -> torch.Tensor:
    """The network target of a prediction type, from the clean image and the noise."""
    if prediction_type == "epsilon":
        return eps
    if prediction_type == "v_prediction":
        return v_from_x0_eps(x0=x0, eps=eps, alpha=alpha, sigma=sigma)
    if prediction_type == "sample":
        return x0
    raise ValueError(f"unknown prediction type {prediction_type!r}")


def add_noise(*, x0: torch.Tensor, eps: torch.Tensor, alpha, sigma) -> torch.Tensor:
    """Forward process x_t = α x0 + σ ε."""
    return _shape_like(alpha, x0) * x0 + _shape_like(sigma, x0) * eps
