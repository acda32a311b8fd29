"""Score distillation sampling (DreamFusion): grad = w(t) (ε̂_teacher(x_t; y, cfg) − ε)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch

from dreamdistill.config import Range
from dreamdistill.diffusion.schedule import add_noise
from dreamdistill.diffusion.teacher import Encoder
from dreamdistill.errors import DreamDistillError
from dreamdistill.guidance.image_space import denoised_images, encoder_gain, image_space_weight

Weighting = Literal["sigma_sq", "uniform", "sds_snr"]
Space = Literal["latent", "image"]
Optimise = Literal["auto", True, False]
"""auto, or true / false (YAML also reads on / off as true / false)."""


@dataclass
class GuidanceConfig:
    """Settings shared by SDS and VSD."""

    guidance_scale: Annotated[float, Range(0, 1000)] = 30.0
    """Classifier-free guidance of the teacher (DreamFusion used 100 with Imagen; VSD uses ~7.5)."""
    weighting: Weighting = "sigma_sq"
    """w(t): sigma_sq = 1 − ᾱ_t (DreamFusion), uniform = 1, sds_snr = min(σ_t/α_t, 10) (weighs high noise more)."""
    t_range: Annotated[tuple[float, float], Range(0, 1, ordered=True)] = (0.02, 0.98)
    """Timestep range at the start, as fractions of the teacher's T."""
    t_range_end: Annotated[tuple[float, float], Range(0, 1, ordered=True)] = (0.02, 0.50)
    """Timestep range at the end of the run (linear annealing from ``t_range``)."""
    grad_clip: Annotated[float | None, Range(0, 1e6, open_low=True)] = None
    """Clip each sample's gradient to this root-mean-square value per element (None: off)."""
    view_prompts: bool = True
    """Append ", front/side/back/overhead view" to the prompt from each camera."""
    view_contrast: Annotated[float, Range(0, 1000)] = 0.0
    """w_v of the view-contrast term w_v (ε̂(y_view) − ε̂(y_other views)) (0: off; one extra batched pass)."""
    encoder: Encoder = "vae"
    """How a latent teacher encodes the renders: its VAE encoder, or ``tiny``, the small encoder distilled from it
    (:mod:`dreamdistill.diffusion.tiny_encoder`; takes half the teacher's resolution, about 7× cheaper forward and
    backward on a CPU for toy-sd). A pixel teacher ignores it."""
    space: Space = "latent"
    """Where a latent teacher's SDS step is taken: latent (w(t)(ε̂ − ε) pulled back through the encoder) or image
    (the render pulled towards the decoded one-step estimate D(ẑ₀), scaled by the encoder's mean gain; no encoder
    backward; :mod:`dreamdistill.guidance.image_space`). SDS only; a pixel teacher has only one space. On toy-sd it
    keeps hues in 2D, but in 3D from the high-noise start the field filled the frame (docs/results.md): no preset
    uses it yet."""
    optimise: Optimise = "auto"
    """The fast step (:mod:`dreamdistill.lift3d.fast_path`): teacher UNet and VAE encoder compiled (CUDA graphs on
    a GPU), fused Adam, the guidance's random draws on the device, no host sync inside a step (the log is written
    every few steps). auto: on for a latent (Stable-Diffusion-class) teacher on CUDA, off otherwise (a toy-teacher
    step is too short to repay compiling); true / on, false / off force it. On a GPU it draws a different (still
    seeded, resumable) noise stream."""


def timestep_range(config: GuidanceConfig, progress: float) -> tuple[float, float]:
    """The annealed (t_min, t_max) fraction at ``progress`` ∈ [0, 1] of the run."""
    progress = min(max(progress, 0.0), 1.0)
    start, end = config.t_range, config.t_range_end
    return tuple(a + (b - a) * progress for a, b in zip(start, end))


def draw_device(generator: torch.Generator | None) -> torch.device:
    """Where random draws are made: on the generator's device (a CUDA generator keeps them on the GPU, no copy)."""
    return generator.device if generator is not None else torch.device("cpu")


def sample_timesteps(batch: int, t_min: float, t_max: float, num_train: int, generator=None) -> torch.Tensor:
    """Integer timesteps uniform in [t_min·T, t_max·T] (fractions of the train steps), on the generator's device."""
    low, high = int(t_min * num_train), max(int(t_max * num_train), int(t_min * num_train) + 1)
    return torch.randint(low, min(high, num_train - 1) + 1, (batch,), generator=generator,
                         device=draw_device(generator))


def timestep_weight(alpha: torch.Tensor, sigma: torch.Tensor, weighting: Weighting) -> torch.Tensor:
    """w(t): σ² = 1 − ᾱ (DreamFusion), 1 (uniform), or min(σ/α, 10) (sds_snr: weighs high noise more)."""
    if weighting == "sigma_sq":
        return sigma**2
    if weighting == "uniform":
        return torch.ones_like(alpha)
    if weighting == "sds_snr":
        return (sigma / alpha).clamp(max=10.0)
    raise ValueError(f"unknown weighting {weighting!r}")


def distillation_gradient(eps_target: torch.Tensor, eps_reference: torch.Tensor, weight: torch.Tensor,
                          clip: float | None = None) -> torch.Tensor:
    """grad = w(t) (ε̂_teacher − ε_reference); NaN/inf become 0 (the guidance reports them as "nonfinite", see
    :func:`nonfinite_elements`, and the 3D loop skips such a step); optional per-sample RMS clipping."""
    grad = weight.reshape(-1, *([1] * (eps_target.dim() - 1))).to(eps_target) * (eps_target - eps_reference)
    grad = torch.nan_to_num(grad, nan=0.0, posinf=0.0, neginf=0.0)
    if clip is not None:
        rms = grad.pow(2).flatten(1).mean(1).sqrt().clamp(min=1e-12)
        grad = grad * (clip / rms).clamp(max=1.0).reshape(-1, *([1] * (grad.dim() - 1)))
    return grad


def nonfinite_elements(*tensors: torch.Tensor) -> torch.Tensor:
    """How many elements of ``tensors`` are NaN or ±inf (0-dim tensor): the guidance's "nonfinite" entry."""
    return sum((~torch.isfinite(t)).sum() for t in tensors)


def residual_rms(eps_target: torch.Tensor, eps_reference: torch.Tensor) -> torch.Tensor:
    """Root mean square of ε̂_teacher − ε_reference (the unweighted update direction), for logging."""
    return (eps_target.float() - eps_reference.float()).pow(2).mean().sqrt()


def surrogate_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """loss = ½‖x − sg(x − grad)‖² / B, so that d(loss)/dx = grad / B exactly."""
    target = (x - grad).detach()
    return 0.5 * (x.float() - target.float()).pow(2).sum() / x.shape[0]


CONTRAST_VIEWS: dict[str, tuple[str, ...]] = {
    "front": ("back",), "back": ("front",), "side": ("front", "back"), "overhead": ("side",),
}
"""The views a render must not look like, per view label (the negatives of the view-contrast term)."""


def view_contrast_guidance(eps_uncond: torch.Tensor, eps_cond: torch.Tensor, eps_negative: torch.Tensor,
                           guidance_scale: float, contrast_scale: float) -> torch.Tensor:
    """ε_u + w (ε_c − ε_u) + w_v (ε_c − ε_neg): CFG plus a push away from the other views' predictions
    (a simplified, unprojected Perp-Neg; ε_neg is the mean over the negatives of each render)."""
    return eps_uncond + guidance_scale * (eps_cond - eps_uncond) + contrast_scale * (eps_cond - eps_negative)


def contrast_pairs(views: list[str]) -> tuple[list[int], list[str]]:
    """(render index, negative view) for every negative of every render, in order."""
    pairs = [(i, negative) for i, view in enumerate(views) for negative in CONTRAST_VIEWS[view]]
    return [i for i, _ in pairs], [negative for _, negative in pairs]


def view_prompt(prompt: str, view: str) -> str:
    """DreamFusion-style view-dependent prompt: "a red chair" -> "a red chair, front view"."""
    return f"{prompt.rstrip().rstrip(',')}, {view} view"


class SDS:
    """SDS on a frozen teacher; call with rendered images and get the surrogate loss.

    The guidance protocol the 3D loop relies on (SDS and VSD alike): ``__call__(images, views, progress,
    generator, camera)`` -> dict with "loss"; ``after_step(result, generator)`` -> extra stats (VSD trains its
    critic there); ``state_dict()`` / ``load_state_dict(state)`` for checkpoints; ``close()`` undoes any change
    made to the shared teacher.
    """

    def __init__(self, teacher, prompt: str, config: GuidanceConfig):
        self.teacher, self.prompt, self.config = teacher, prompt, config
        if config.space == "image" and teacher.info.format != "latent":
            raise DreamDistillError("guidance.space: image needs a latent (Stable-Diffusion-class) teacher; a pixel "
                                    "teacher's SDS is already in image space: use guidance.space=latent")
        self.image_gain: float | None = None
        """g = tr(JᵀJ)/n of the encoder, estimated at the first image-space step and kept in the checkpoint."""

    def after_step(self, result: dict, generator: torch.Generator | None = None) -> dict[str, float]:
        """Work after the scene's update (nothing for SDS)."""
        return {}

    def state_dict(self) -> dict:
        """State of the guidance itself (for SDS only the image-space gain, once estimated)."""
        return {} if self.image_gain is None else {"image_gain": self.image_gain}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`."""
        self.image_gain = state.get("image_gain", self.image_gain)

    def close(self) -> None:
        """Leave the shared teacher as it was (nothing to undo for SDS)."""

    def prompts_for(self, batch: int, prompts: list[str] | None = None) -> list[str]:
        """The prompt of each of ``batch`` samples: ``prompts`` (one per sample, for amortised training over many
        prompts) or this guidance's own prompt repeated."""
        if prompts is None:
            return [self.prompt] * batch
        if len(prompts) != batch:
            raise ValueError(f"{len(prompts)} prompts for a batch of {batch} renders: give one per render")
        return list(prompts)

    def text_for(self, views: list[str] | None, batch: int, prompts: list[str] | None = None) -> torch.Tensor:
        """Cached prompt embeddings [B, L, D] of each sample's prompt (:meth:`prompts_for`), view-dependent when
        enabled and views are given."""
        prompts = self.prompts_for(batch, prompts)
        if views is None or not self.config.view_prompts:
            return self.teacher.encode_text(prompts)
        return self.teacher.encode_text([view_prompt(p, v) for p, v in zip(prompts, views)])

    def teacher_eps(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                    views: list[str] | None, prompts: list[str] | None = None) -> torch.Tensor:
        """The teacher's guided ε̂ for x_t; with ``view_contrast`` the unconditional, conditional and
        negative-view predictions share one network call (the negatives of each sample use its own prompt,
        :meth:`prompts_for`)."""
        config = self.config
        if not config.view_contrast or views is None or not config.view_prompts:
            return self.teacher.predict_eps(x_t, t, text, config.guidance_scale)
        batch = x_t.shape[0]
        rows, negatives = contrast_pairs(views)
        prompts = self.prompts_for(batch, prompts)
        negative_text = self.teacher.encode_text([view_prompt(prompts[i], v) for i, v in zip(rows, negatives)])
        index = torch.tensor(rows, device=x_t.device)
        eps = self.teacher.predict_eps(torch.cat([x_t, x_t, x_t[index]]), torch.cat([t, t, t[index]]),
                                       torch.cat([self.teacher.uncond_embedding(batch), text, negative_text]), 1.0)
        eps_uncond, eps_cond, eps_each_negative = eps[:batch], eps[batch:2 * batch], eps[2 * batch:]
        counts = torch.bincount(index, minlength=batch).clamp(min=1).to(eps).reshape(-1, 1, 1, 1)
        eps_negative = torch.zeros_like(eps_cond).index_add_(0, index, eps_each_negative) / counts
        return view_contrast_guidance(eps_uncond, eps_cond, eps_negative, config.guidance_scale,
                                      config.view_contrast)

    def noised(self, images: torch.Tensor, progress: float, generator=None):
        """Model-space x, timesteps, noise and x_t for a batch of renders."""
        x = self.teacher.images_to_model(images, self.config.encoder)
        t_min, t_max = timestep_range(self.config, progress)
        t = sample_timesteps(x.shape[0], t_min, t_max, self.teacher.schedule.num_train_timesteps, generator)
        t = t.to(self.teacher.device)
        eps = torch.randn(x.shape, generator=generator, device=draw_device(generator)).to(x)
        alpha, sigma = self.teacher.schedule.alpha_sigma(t)
        return x, t, eps, add_noise(x0=x.detach().float(), eps=eps.float(), alpha=alpha, sigma=sigma), alpha, sigma

    def __call__(self, images: torch.Tensor, views: list[str] | None = None, progress: float = 0.0,
                 generator: torch.Generator | None = None, camera: torch.Tensor | None = None,
                 prompts: list[str] | None = None) -> dict[str, torch.Tensor]:
        """Surrogate loss for renders [B, 3, H, W] in [0, 1]; also returns grad norm and timesteps
        (``camera`` is unused by SDS). ``prompts``: one prompt per render (amortised SDS: each sample's
        gradient w(t)(ε̂_teacher(x_t; y_i, cfg) − ε) uses its own y_i); None: this guidance's prompt for all."""
        if self.config.space == "image":
            return self.image_space_step(images, views, progress, generator, prompts)
        x, t, eps, x_t, alpha, sigma = self.noised(images, progress, generator)
        text = self.text_for(views, x.shape[0], prompts)
        with torch.no_grad():
            eps_teacher = self.teacher_eps(x_t, t, text, views, prompts)
        weight = timestep_weight(alpha, sigma, self.config.weighting).float()
        grad = distillation_gradient(eps_teacher, eps.float(), weight, self.config.grad_clip)
        return {"loss": surrogate_loss(x, grad), "grad_norm": grad.flatten(1).norm(dim=1).mean(), "t": t, "eps": eps,
                "residual_rms": residual_rms(eps_teacher, eps), "nonfinite": nonfinite_elements(eps_teacher)}

    def image_space_step(self, images: torch.Tensor, views: list[str] | None, progress: float,
                         generator: torch.Generator | None, prompts: list[str] | None) -> dict[str, torch.Tensor]:
        """SDS in image space (``guidance.space: image``): grad_x = g w(t)(α/σ)(x − D(ẑ₀)) on the renders x, the
        same draws of t and ε as the latent step, the encoder run forward only."""
        if self.image_gain is None:
            def encode(batch):
                return self.teacher.images_to_model(batch, self.config.encoder)

            self.image_gain = encoder_gain(encode, images, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            x, t, eps, x_t, alpha, sigma = self.noised(images, progress, generator)
            text = self.text_for(views, x.shape[0], prompts)
            eps_teacher = self.teacher_eps(x_t, t, text, views, prompts)
            target = denoised_images(self.teacher.model_to_images, x_t, eps_teacher, alpha, sigma, images.shape[-1])
        weight = image_space_weight(timestep_weight(alpha, sigma, self.config.weighting), alpha, sigma,
                                    self.image_gain)
        grad = distillation_gradient(images.detach().float(), target.to(images.device), weight.to(images.device),
                                     self.config.grad_clip)
        return {"loss": surrogate_loss(images, grad), "grad_norm": grad.flatten(1).norm(dim=1).mean(), "t": t,
                "eps": eps, "residual_rms": residual_rms(eps_teacher, eps),
                "nonfinite": nonfinite_elements(eps_teacher)}
