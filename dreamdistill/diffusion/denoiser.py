"""The one denoiser convention (k-diffusion's style): a network call in, x̂0 / ε̂ / v with or without CFG out.

Every model that predicts noise here — the teacher, a distilled student, the VSD critic — is called
through :class:`Denoiser`. Classifier-free guidance is applied once, to the raw network output:
out_u + w (out_c − out_u). The conversions to ε, x0 and v are affine in the output with the same x_t,
so this equals guiding ε (or x0, or v), and it never divides a float32 ε by a tiny α_t near t = T.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch

from dreamdistill.diffusion.schedule import (
    NoiseSchedule,
    PredictionType,
    _shape_like,
    eps_from_output,
    v_from_x0_eps,
    x0_from_output,
)

GuidanceMode = Literal["cfg", "embedded", "none"]
"""cfg: unconditional + conditional rows in one call, combined with weight w; embedded: w is a network input
(``guidance_weight=`` reaches the network call; one evaluation); none: the conditional call only (w ignored)."""

NetworkCall = Callable[..., torch.Tensor]
"""(x_t [B, C, H, W], t [B] integer timesteps, text [B, L, D], **conditions) -> raw output [B, C, H, W] float32,
in the schedule's prediction type. Per-row tensor conditions (e.g. ``camera``) travel with their rows."""


def classifier_free_guidance(uncond: torch.Tensor, cond: torch.Tensor, scale) -> torch.Tensor:
    """out_u + w (out_c − out_u); w = 1 is the conditional model, w = 0 the unconditional one (any prediction)."""
    return uncond + _shape_like(scale, cond) * (cond - uncond)


@dataclass
class Prediction:
    """A network output with what is needed to read it as ε̂, x̂0 or v̂ (float32)."""

    output: torch.Tensor
    x_t: torch.Tensor
    alpha: torch.Tensor
    sigma: torch.Tensor
    prediction_type: PredictionType

    @property
    def eps(self) -> torch.Tensor:
        return eps_from_output(self.output, x_t=self.x_t, alpha=self.alpha, sigma=self.sigma,
                               prediction_type=self.prediction_type).float()

    @property
    def x0(self) -> torch.Tensor:
        return x0_from_output(self.output, x_t=self.x_t, alpha=self.alpha, sigma=self.sigma,
                              prediction_type=self.prediction_type).float()

    @property
    def v(self) -> torch.Tensor:
        return v_from_x0_eps(x0=self.x0, eps=self.eps, alpha=self.alpha, sigma=self.sigma).float()


@dataclass
class Denoiser:
    """A network call, its noise schedule, the empty-prompt embedding and how the guidance weight reaches it."""

    network: NetworkCall
    schedule: NoiseSchedule
    uncond_text: Callable[[int], torch.Tensor]
    """Empty-prompt embeddings for B rows: [B, L, D]."""
    guidance: GuidanceMode = "cfg"

    def raw(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, w: float | torch.Tensor = 1.0,
            uncond_conditions: dict | None = None, **conditions) -> torch.Tensor:
        """The (guided) raw network output [B, C, H, W] float32.

        ``uncond_conditions`` replaces conditions in the unconditional rows (e.g. a zero camera); by default
        both halves get the same ``conditions``.
        """
        batch = x_t.shape[0]
        t = torch.as_tensor(t, device=x_t.device).expand(batch)
        if self.guidance == "embedded":
            weights = torch.as_tensor(w, dtype=torch.float32, device=x_t.device).expand(batch)
            return self.network(x_t, t, text, guidance_weight=weights, **conditions).float()
        unguided = not torch.is_tensor(w) and w == 1.0
        if self.guidance == "none" or unguided:
            return self.network(x_t, t, text, **conditions).float()
        if self.guidance != "cfg":
            raise ValueError(f"unknown guidance mode {self.guidance!r}")
        uncond_conditions = {**conditions, **(uncond_conditions or {})}
        doubled = {k: torch.cat([uncond_conditions[k], v]) if torch.is_tensor(v) else v for k, v in conditions.items()}
        out = self.network(torch.cat([x_t, x_t]), torch.cat([t, t]), torch.cat([self.uncond_text(batch), text]),
                           **doubled).float()
        out_uncond, out_cond = out.chunk(2)
        return classifier_free_guidance(out_uncond, out_cond, torch.as_tensor(w, device=x_t.device,
                                                                              dtype=out.dtype))

    def __call__(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, w: float | torch.Tensor = 1.0,
                 uncond_conditions: dict | None = None, **conditions) -> Prediction:
        """The prediction at (x_t, t; y, w): read ``.eps``, ``.x0`` or ``.v`` off the result."""
        t = torch.as_tensor(t, device=x_t.device).expand(x_t.shape[0])
        alpha, sigma = self.schedule.alpha_sigma(t)
        out = self.raw(x_t, t, text, w, uncond_conditions, **conditions)
        return Prediction(out, x_t.float(), alpha, sigma, self.schedule.prediction_type)
