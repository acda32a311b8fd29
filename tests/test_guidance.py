"""SDS and VSD on tiny random teachers: exact surrogate gradients, a frozen teacher, VSD → SDS."""

import pytest
import torch

from dreamdistill.diffusion.teacher import Teacher
from dreamdistill.guidance.sds import SDS, GuidanceConfig, surrogate_loss, timestep_range, view_prompt
from dreamdistill.guidance.vsd import VSD, CriticConfig


@pytest.fixture()
def pixel(tiny_pixel_teacher_dir):
    return Teacher.from_pretrained(tiny_pixel_teacher_dir, device="cpu")


def test_surrogate_loss_gradient_is_exactly_grad():
    x = torch.randn(3, 4, 5, 5, requires_grad=True)
    grad = torch.randn(3, 4, 5, 5)
    surrogate_loss(x, grad).backward()
    torch.testing.assert_close(x.grad, grad / 3)


def test_sds_gradient_reaches_images_and_is_finite(pixel):
    sds = SDS(pixel, "a red chair", GuidanceConfig(guidance_scale=10.0))
    images = torch.rand(2, 3, 24, 24, requires_grad=True)
    out = sds(images, views=["front", "back"], progress=0.3, generator=torch.Generator().manual_seed(0))
    out["loss"].backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert "a red chair, front view" in pixel.text_encoder._cache


def test_timestep_annealing_and_view_prompt():
    config = GuidanceConfig(t_range=(0.02, 0.98), t_range_end=(0.02, 0.5))
    assert timestep_range(config, 0.0) == pytest.approx((0.02, 0.98))
    assert timestep_range(config, 1.0) == pytest.approx((0.02, 0.5))
    assert timestep_range(config, 0.5) == pytest.approx((0.02, 0.74))
    assert view_prompt("a red chair", "side") == "a red chair, side view"


def test_gradient_clipping_and_nan_safety(pixel):
    from dreamdistill.guidance.sds import distillation_gradient

    eps_t = torch.tensor([[float("nan"), 10.0], [1.0, 1.0]])
    grad = distillation_gradient(eps_t, torch.zeros(2, 2), torch.ones(2), clip=1.0)
    assert torch.isfinite(grad).all()
    assert grad.pow(2).mean(1).sqrt().max() <= 1.0 + 1e-6


def test_critic_training_leaves_the_teacher_unchanged(pixel):
    vsd = VSD(pixel, "a red chair", GuidanceConfig(), CriticConfig(steps_per_scene_step=3, learning_rate=1e-2))
    x = torch.randn(2, 3, 16, 16)
    t = torch.tensor([200, 800])
    text = pixel.encode_text(["a red chair"] * 2)
    before = pixel.predict_eps(x, t, text, 3.0)
    camera = torch.randn(2, 6)
    critic_before = vsd.critic.predict_eps(x, t, text, camera)
    torch.testing.assert_close(critic_before, pixel.predict_eps(x, t, text, 1.0))  # LoRA B and camera MLP start at 0
    vsd.train_critic(pixel.images_to_model(torch.rand(2, 3, 16, 16)), text, camera,
                     torch.Generator().manual_seed(0))
    torch.testing.assert_close(pixel.predict_eps(x, t, text, 3.0), before)
    assert not torch.allclose(vsd.critic.predict_eps(x, t, text, camera), critic_before), "critic did not train"
    assert all(not p.requires_grad for n, p in pixel.unet.named_parameters() if "vsd_critic" not in n)


def test_zero_critic_recovers_sds(pixel):
    """With s_ζ ≡ 0 (ε̂_critic = 0) VSD's gradient is SDS's plus w(t)·ε, a zero-mean term."""
    config = GuidanceConfig(guidance_scale=5.0, weighting="uniform")
    sds = SDS(pixel, "a blue mug", config)
    vsd = VSD(pixel, "a blue mug", config, CriticConfig())
    vsd.critic.predict_eps = lambda x_t, *args, **kwargs: torch.zeros_like(x_t)
    images = torch.rand(2, 3, 16, 16)
    grads = {}
    for name, method in (("sds", sds), ("vsd", vsd)):
        x = images.clone().requires_grad_(True)
        method(x, progress=0.0, generator=torch.Generator().manual_seed(7))["loss"].backward()
        grads[name] = x.grad
    # Same t and ε were drawn: the difference is exactly the sampled noise term w·ε (through d x / d image).
    generator = torch.Generator().manual_seed(7)
    x = pixel.images_to_model(images)
    torch.randint(0, 1000, (2,), generator=generator)
    eps = torch.randn(x.shape, generator=generator)
    expected = (eps / 2) * 2  # d(2·img − 1)/d img = 2, loss divides by B = 2
    torch.testing.assert_close(grads["vsd"] - grads["sds"], expected, atol=1e-5, rtol=1e-4)


def test_view_contrast_matches_separate_passes(pixel):
    """The batched view-contrast ε̂ equals CFG + w_v (ε_c − mean ε_negatives) from separate teacher calls;
    w_v = 0 is plain CFG."""
    from dreamdistill.guidance.sds import CONTRAST_VIEWS

    views = ["front", "side", "overhead"]
    x_t, t = torch.randn(3, 3, 24, 24, generator=torch.Generator().manual_seed(1)), torch.tensor([900, 500, 100])
    sds = SDS(pixel, "a red chair", GuidanceConfig(guidance_scale=6.0, view_contrast=2.0))
    text = sds.text_for(views, 3)
    with torch.no_grad():
        batched = sds.teacher_eps(x_t, t, text, views)
        expected = []
        for i, view in enumerate(views):
            xi, ti = x_t[i:i + 1], t[i:i + 1]
            cond = pixel.predict_eps(xi, ti, text[i:i + 1], 1.0)
            uncond = pixel.predict_eps(xi, ti, pixel.uncond_embedding(1), 1.0)
            negative = torch.stack([pixel.predict_eps(xi, ti, pixel.encode_text([view_prompt("a red chair", v)]), 1.0)
                                    for v in CONTRAST_VIEWS[view]]).mean(0)
            expected.append(uncond + 6.0 * (cond - uncond) + 2.0 * (cond - negative))
        torch.testing.assert_close(batched, torch.cat(expected), atol=1e-4, rtol=1e-4)
        plain = SDS(pixel, "a red chair", GuidanceConfig(guidance_scale=6.0)).teacher_eps(x_t, t, text, views)
        torch.testing.assert_close(plain, pixel.predict_eps(x_t, t, text, 6.0))
        assert not torch.allclose(plain, batched)


@pytest.mark.parametrize("critic_scale", [1.0, 2.5])
def test_one_call_gives_the_separate_teacher_and_critic_predictions(pixel, critic_scale):
    """VSD's mixed-batch call (the fast path: teacher rows with the LoRA term and the camera offset multiplied by 0)
    gives the separate calls' guided ε̂_teacher and ε̂_critic, for a critic whose LoRA and camera MLP are not zero;
    afterwards the UNet is the plain teacher again."""
    vsd = VSD(pixel, "a red chair", GuidanceConfig(guidance_scale=7.5), CriticConfig(guidance_scale=critic_scale),
              fast=True)
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for p in vsd.critic.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=generator) * 0.05)
    x_t, t = torch.randn(2, 3, 16, 16, generator=generator), torch.tensor([300, 700])
    text, camera = pixel.encode_text(["a red chair, front view", "a red chair, back view"]), torch.randn(2, 6)
    assert vsd.one_call_applies(["front", "back"])
    with torch.no_grad():
        teacher, critic = vsd.teacher_and_critic_eps(x_t, t, text, camera)
        torch.testing.assert_close(teacher, vsd.teacher_eps(x_t, t, text, None), atol=1e-5, rtol=1e-4)
        separate_critic = vsd.critic.predict_eps(x_t, t, text, camera)
        torch.testing.assert_close(critic, separate_critic, atol=1e-5, rtol=1e-4)
        assert (critic - teacher).abs().max() > 1e-2  # the critic is not the teacher here
        torch.testing.assert_close(pixel.predict_eps(x_t, t, text, 7.5), teacher, atol=1e-5, rtol=1e-4)
    vsd.close()
