"""The shipped toy-sd (assets/toy-sd) through the latent path with learned weights: plain diffusers samples a
recognisable red chair and agrees with our sampler, the latent scale is the VAE's own, the gradient through the VAE
encoder is right, and SDS near t = 0 leaves a real render alone but pushes hard on noise.

Quality figures (accuracy over 24 prompts, KID, VAE PSNR) are measured by benchmarks/teacher_quality.py, not here.
"""

from __future__ import annotations

import pytest
import torch

from dreamdistill.diffusion.teacher import Teacher, resolve_teacher_path


@pytest.fixture(scope="module")
def folder():
    return resolve_teacher_path("toy-sd")


@pytest.fixture(scope="module")
def teacher(folder):
    return Teacher.from_pretrained(folder, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def renders():
    """Real 128-px toy-world renders (a stream no training set uses) and their captions."""
    from dreamdistill.toyworld import render_dataset

    batch = render_dataset(8, seed=31337, resolution=128)
    return batch.float_images(), batch.captions


@pytest.fixture(scope="module")
def red_chairs(folder, teacher):
    """4 samples of "a red chair, front view" drawn by plain diffusers (16 DDIM steps, the folder's own cfg)."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(folder, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    return pipe(["a red chair, front view"] * 4, num_inference_steps=16,
                guidance_scale=teacher.info.defaults["default_cfg"], output_type="pt",
                generator=torch.Generator().manual_seed(0)).images.float()


def test_plain_diffusers_agrees_with_our_sampler(teacher, red_chairs):
    """No dreamdistill code in the pipeline: our sampler gives the same images under the same seed and steps."""
    cfg = teacher.info.defaults["default_cfg"]
    ours = teacher.sample(["a red chair, front view"] * 4, steps=16, guidance_scale=cfg, seed=0)
    torch.testing.assert_close(ours, red_chairs, atol=2e-3, rtol=0)


def test_plain_diffusers_samples_a_recognisable_red_chair(red_chairs):
    """The toy evaluator reads a red chair in most of the 4 samples."""
    from dreamdistill.toyworld.evaluator import Evaluator
    from dreamdistill.toyworld.world import CATEGORIES, COLOURS

    predicted = Evaluator.load().classify(red_chairs)
    chairs = (predicted["category"] == CATEGORIES.index("chair")).sum().item()
    red = (predicted["colour"] == COLOURS.index("red")).sum().item()
    assert chairs >= 3 and red >= 3, (chairs, red)


def test_latent_scale_is_the_vaes_own_and_whitens_real_latents(teacher, renders):
    """The codec reads scaling_factor from the VAE config (measured on the data, not SD's 0.18215); scaled latents
    of real renders have a standard deviation near 1."""
    images, _ = renders
    vae = teacher.codec.vae
    assert teacher.codec.scale == vae.config.scaling_factor and abs(teacher.codec.scale - 0.18215) > 1e-3
    with torch.no_grad():
        latents = teacher.images_to_model(images)
    assert latents.shape == (8, 4, 16, 16)
    assert 0.6 < float(latents.std()) < 1.5


def test_gradient_through_the_vae_encoder_matches_finite_differences(folder, renders):
    """d/dh ⟨u, E(x + h v)⟩ at h = 0 by central differences (float64) equals ⟨∇_x ⟨u, E(x)⟩, v⟩ by autograd."""
    teacher = Teacher.from_pretrained(folder, device="cpu", dtype=torch.float64)
    images = renders[0][:1].double()
    generator = torch.Generator().manual_seed(0)
    direction = torch.randn(images.shape, generator=generator, dtype=torch.float64)
    probe = torch.randn((1, 4, 16, 16), generator=generator, dtype=torch.float64)
    x = images.clone().requires_grad_(True)
    (teacher.images_to_model(x) * probe).sum().backward()
    analytic = float((x.grad * direction).sum())
    h = 1e-4
    with torch.no_grad():
        plus = float((teacher.images_to_model(images + h * direction) * probe).sum())
        minus = float((teacher.images_to_model(images - h * direction) * probe).sum())
    numeric = (plus - minus) / (2 * h)
    assert abs(analytic) > 1e-3
    assert analytic == pytest.approx(numeric, rel=1e-4)


def test_sds_near_t0_is_small_on_a_real_render_and_large_on_noise(teacher, renders):
    """At t = 20-21 (ᾱ ≈ 0.98) the teacher's ε̂ on a real render's latent is close to the noise drawn, so the SDS
    gradient is small; on an image of uniform noise (far from the data) it is several times larger."""
    from dreamdistill.guidance.sds import SDS, GuidanceConfig

    images, captions = renders
    config = GuidanceConfig(guidance_scale=1.0, t_range=(0.02, 0.02), t_range_end=(0.02, 0.02), view_prompts=False)
    noise_images = torch.rand(images.shape, generator=torch.Generator().manual_seed(1))
    norms = {}
    for name, batch in (("real", images), ("noise", noise_images)):
        sds = SDS(teacher, captions[0], config)
        with torch.no_grad():
            result = sds(batch, prompts=list(captions), generator=torch.Generator().manual_seed(2))
        assert torch.all((result["t"] >= 20) & (result["t"] <= 21))
        norms[name] = float(result["residual_rms"])
    assert norms["noise"] > 3 * norms["real"], norms
