"""DDIM against diffusers' DDIMScheduler.step as an oracle (clip_sample off, η = 0), and CFG algebra."""

import pytest
import torch

from dreamdistill.diffusion.ddim import ddim_sample, ddim_step, ddim_transition
from dreamdistill.diffusion.denoiser import classifier_free_guidance
from dreamdistill.diffusion.schedule import NoiseSchedule, add_noise, eps_from_output


def toy_model(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A smooth deterministic stand-in for a network (any prediction type)."""
    scale = (t.double() / 1000.0).reshape(-1, 1, 1, 1).to(x.dtype)
    return 0.5 * torch.tanh(x) * (1 - scale) + 0.3 * torch.sin(3 * x + scale)


def make_scheduler(prediction_type, schedule, spacing, offset=0):
    from diffusers import DDIMScheduler

    extra = {"beta_start": 0.00085, "beta_end": 0.012} if schedule == "scaled_linear" else {}
    return DDIMScheduler(num_train_timesteps=1000, beta_schedule=schedule, prediction_type=prediction_type,
                         clip_sample=False, set_alpha_to_one=schedule != "scaled_linear", steps_offset=offset,
                         timestep_spacing=spacing, **extra)


def diffusers_loop(scheduler, x, steps):
    scheduler.set_timesteps(steps)
    for t in scheduler.timesteps:
        x = scheduler.step(toy_model(x, t.expand(x.shape[0])), t, x, eta=0.0).prev_sample
    return x


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("schedule", ["scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("spacing,steps", [("leading", 10), ("leading", 50), ("trailing", 20), ("trailing", 8)])
def test_sampler_matches_diffusers(prediction_type, schedule, spacing, steps):
    if spacing == "trailing" and 1000 % steps:
        pytest.skip("diffusers steps to t − T//N, not to the next listed timestep, when N does not divide T")
    scheduler = make_scheduler(prediction_type, schedule, spacing, offset=1 if spacing == "leading" else 0)
    # float64 on both sides: in float32, diffusers' own rounding differs from float64 math by ~1e-4 here.
    noise = torch.randn(3, 2, 5, 5, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    expected = diffusers_loop(scheduler, noise.clone(), steps)
    schedule_ = NoiseSchedule.from_scheduler(scheduler)

    def eps_fn(x, t):
        alpha, sigma = schedule_.alpha_sigma(t)
        return eps_from_output(toy_model(x, t), x_t=x, alpha=alpha, sigma=sigma, prediction_type=prediction_type)

    ours = ddim_sample(eps_fn, noise.clone(), schedule_, schedule_.timesteps(steps))
    scale = expected.abs().max().clamp(min=1.0)
    torch.testing.assert_close(ours / scale, expected / scale, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("spacing,steps", [("linspace", 7), ("trailing", 64), ("leading", 3)])
def test_single_steps_match_diffusers(prediction_type, spacing, steps):
    """Each transition equals DDIMScheduler.step for diffusers' own previous timestep t − T//N."""
    scheduler = make_scheduler(prediction_type, "scaled_linear", spacing)
    scheduler.set_timesteps(steps)
    schedule = NoiseSchedule.from_scheduler(scheduler)
    x = torch.randn(2, 3, 4, 4, generator=torch.Generator().manual_seed(2))
    for t in scheduler.timesteps[:5]:
        expected = scheduler.step(toy_model(x, t.expand(2)), t, x, eta=0.0).prev_sample
        previous = t - 1000 // steps

        def eps_fn(x_, s_):
            alpha, sigma = schedule.alpha_sigma(s_)
            return eps_from_output(toy_model(x_, s_), x_t=x_, alpha=alpha, sigma=sigma, prediction_type=prediction_type)

        ours, _ = ddim_step(eps_fn, x, t, previous, schedule)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)


def test_transition_is_exact_on_the_noising_path():
    """With the true x0, DDIM_{s→t}(α_s x0 + σ_s ε) = α_t x0 + σ_t ε."""
    x0, eps = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    a_s, s_s, a_t, s_t = (torch.tensor(v, dtype=torch.float64) for v in (0.3, 0.1**0.5 * 3, 0.9, 0.19**0.5))
    s_s = (1 - a_s**2).sqrt()
    x_s = add_noise(x0=x0, eps=eps, alpha=a_s, sigma=s_s)
    x_t = ddim_transition(x_s=x_s, x0=x0, alpha_s=a_s, sigma_s=s_s, alpha_t=a_t, sigma_t=s_t)
    torch.testing.assert_close(x_t, a_t * x0 + s_t * eps)


def test_classifier_free_guidance_algebra():
    u, c = torch.randn(2, 3), torch.randn(2, 3)
    torch.testing.assert_close(classifier_free_guidance(u, c, 0.0), u)
    torch.testing.assert_close(classifier_free_guidance(u, c, 1.0), c)
    torch.testing.assert_close(classifier_free_guidance(u, c, 7.5), u + 7.5 * (c - u))
    # Per-sample scales broadcast over the batch.
    scales = torch.tensor([1.0, 3.0])
    torch.testing.assert_close(classifier_free_guidance(u, c, scales)[1], u[1] + 3 * (c[1] - u[1]))
    # Guidance is linear: guiding ε or guiding v then converting gives the same ε.
    x_t = torch.randn(2, 3)
    alpha, sigma = torch.tensor([0.8, 0.6]), torch.tensor([0.6, 0.8])
    v_u, v_c = torch.randn(2, 3), torch.randn(2, 3)
    via_v = eps_from_output(classifier_free_guidance(v_u, v_c, 4.0), x_t=x_t, alpha=alpha, sigma=sigma,
                            prediction_type="v_prediction")
    e_u = eps_from_output(v_u, x_t=x_t, alpha=alpha, sigma=sigma, prediction_type="v_prediction")
    e_c = eps_from_output(v_c, x_t=x_t, alpha=alpha, sigma=sigma, prediction_type="v_prediction")
    torch.testing.assert_close(via_v, classifier_free_guidance(e_u, e_c, 4.0))
