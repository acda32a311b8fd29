"""SDS taken in image space for a latent teacher (``guidance.space: image``).

Latent SDS pulls its residual back to the render through the encoder: with ẑ₀ = (z_t − σ ε̂)/α the teacher's
one-step estimate, w(t)(ε̂ − ε) = w(t)(α/σ)(z − ẑ₀), and the render's gradient is Jᵀ of that, J the encoder's
Jacobian. On toy-sd that pull-back does not keep hues (2D SDS of a red chair comes out green and cyan, while the
teacher samples it red; docs/results.md). In image space the render x is pulled straight towards the decoded
estimate D(ẑ₀) (as HiFA's image-space loss does):

    grad_x = g · w(t) (α/σ) (x − D(ẑ₀)),    g = tr(JᵀJ) / n,

where JᵀJ is replaced by its mean eigenvalue g (estimated once, by Hutchinson's trace estimator), so the step is
as large as the latent one on average and the regularisers' weights keep their meaning. The encoder runs without
a backward pass; the decoder runs forward only.
"""

from __future__ import annotations

import torch

from dreamdistill.diffusion.schedule import x0_from_eps
from dreamdistill.diffusion.teacher import resize


def encoder_gain(encode, images: torch.Tensor, probes: int = 4, generator: torch.Generator | None = None) -> float:
    """g = tr(JᵀJ) / n for the encoder ``encode`` (images [B, 3, H, W] → model space) at ``images``, n the number of
    image elements: Hutchinson's estimate E‖Jᵀu‖² = tr(JJᵀ) = tr(JᵀJ) over ``probes`` draws u ~ N(0, I)."""
    images = images.detach().requires_grad_(True)
    with torch.enable_grad():
        z = encode(images)
        total = torch.zeros((), dtype=torch.float64)
        for _ in range(probes):
            u = torch.randn(z.shape, generator=generator, device=generator.device if generator else z.device)
            (pulled,) = torch.autograd.grad(z, images, u.to(z), retain_graph=True)
            total += pulled.double().square().sum().cpu()
    return float(total / probes / images.numel())


def denoised_images(decode, x_t: torch.Tensor, eps: torch.Tensor, alpha, sigma, size: int) -> torch.Tensor:
    """D(ẑ₀), ẑ₀ = (x_t − σ ε̂)/α: the teacher's one-step estimate decoded to [0, 1] images, resized to ``size``."""
    x0 = x0_from_eps(x_t=x_t.float(), eps=eps.float(), alpha=alpha.float(), sigma=sigma.float())
    return resize(decode(x0).float(), size)


def image_space_weight(weight: torch.Tensor, alpha: torch.Tensor, sigma: torch.Tensor, gain: float) -> torch.Tensor:
    """Per-sample factor g · w(t) · α/σ of grad_x = g w(t)(α/σ)(x − D(ẑ₀)) (float32, [B])."""
    return (gain * weight * alpha / sigma).float()
