"""SDS in image space (guidance.space: image): the render's gradient g·w(t)(α/σ)(x − D(ẑ₀)) against an oracle built
from the diffusers parts, the encoder-gain estimator on a map with a known gain, and the refusals."""

import pytest
import torch
import torch.nn.functional as F
from test_wiring import alpha_bar, oracle_x0_eps

from dreamdistill.diffusion.teacher import Teacher
from dreamdistill.errors import DreamDistillError
from dreamdistill.guidance.image_space import encoder_gain
from dreamdistill.guidance.sds import SDS, GuidanceConfig
from dreamdistill.guidance.vsd import VSD, CriticConfig


@pytest.fixture(scope="module")
def latent(tiny_sd_teacher_dir):
    return Teacher.from_pretrained(tiny_sd_teacher_dir, device="cpu", dtype=torch.float32)


def test_image_space_gradient_matches_the_oracle(latent):
    """d loss / d render = g w(t)(α/σ)(x − D(ẑ₀)) / B, ẑ₀ = (z_t − σ ε̂_cfg)/α, z_t = α E(x) + σ ε, with E and D the
    VAE's encoder (mean × scaling factor) and decoder called directly. Breaks if the sign, α/σ, the gain, the
    CFG or ẑ₀ is wrong, or if the step goes back through the encoder."""
    scale = 6.0
    sds = SDS(latent, "a red chair", GuidanceConfig(guidance_scale=scale, space="image", t_range=(0.2, 0.8),
                                                   t_range_end=(0.2, 0.8)))
    images = torch.rand(2, 3, 12, 12, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    out = sds(images, progress=0.0, generator=torch.Generator().manual_seed(9))
    out["loss"].backward()
    t, eps = out["t"], out["eps"].double()
    ab = alpha_bar(latent, t)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    vae, factor = latent.codec.vae, latent.codec.vae.config.scaling_factor
    with torch.no_grad():
        size = latent.image_size
        pixels = F.interpolate(images.detach(), size=(size, size), mode="bilinear", align_corners=False) * 2 - 1
        z = vae.encode(pixels).latent_dist.mean.double() * factor
        text = latent.encode_text(["a red chair"] * 2)
        x0, _ = oracle_x0_eps(latent, latent.unet, a * z + s * eps, t, text, scale)
        decoded = ((vae.decode((x0 / factor).float()).sample + 1) / 2).clamp(0, 1)
        target = F.interpolate(decoded, size=(12, 12), mode="bilinear", align_corners=False, antialias=True)
    gain = sds.image_gain

    def vae_encode(batch):
        resized = F.interpolate(batch, size=(size, size), mode="bilinear", align_corners=False)
        return vae.encode(resized * 2 - 1).latent_dist.mean * factor

    assert gain == pytest.approx(encoder_gain(vae_encode, images, generator=torch.Generator().manual_seed(0)))
    w = 1 - ab  # sigma_sq
    expected = (gain * w * a / s * (images.detach().double() - target.double()) / 2).float()
    torch.testing.assert_close(images.grad, expected, atol=1e-5, rtol=1e-3)
    assert sds.state_dict() == {"image_gain": gain}


def test_the_gain_is_measured_once_and_restored_from_a_checkpoint(latent):
    """The gain is estimated at the first step only (a fixed stream, not the step's) and comes back from the
    checkpoint, so a resumed run takes the same steps."""
    config = GuidanceConfig(space="image")
    first = SDS(latent, "a blue mug", config)
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    first(images, generator=torch.Generator().manual_seed(2))
    gain = first.image_gain
    first(torch.rand(2, 3, 16, 16), generator=torch.Generator().manual_seed(3))
    assert first.image_gain == gain
    resumed = SDS(latent, "a blue mug", config)
    resumed.load_state_dict(first.state_dict())
    assert resumed.image_gain == gain


def test_encoder_gain_recovers_a_known_mean_eigenvalue():
    """For E(x) = 3·x on every other pixel in each direction, JᵀJ is 9 on a quarter of the elements and 0 elsewhere:
    tr(JᵀJ)/n = 9/4. Hutchinson's estimate with 4 probes of 768 elements is within a few per cent."""
    def encode(images):
        return 3 * images[..., ::2, ::2]

    images = torch.rand(1, 3, 32, 32)
    gain = encoder_gain(encode, images, probes=4, generator=torch.Generator().manual_seed(0))
    assert gain == pytest.approx(9 / 4, rel=0.08)


def test_image_space_is_refused_for_a_pixel_teacher_and_for_vsd(tiny_pixel_teacher_dir, latent):
    pixel = Teacher.from_pretrained(tiny_pixel_teacher_dir, device="cpu")
    with pytest.raises(DreamDistillError, match="latent"):
        SDS(pixel, "a red chair", GuidanceConfig(space="image"))
    with pytest.raises(DreamDistillError, match="SDS"):
        VSD(latent, "a red chair", GuidanceConfig(space="image"), CriticConfig())
