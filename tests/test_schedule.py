"""Schedule identities: x0 ↔ ε ↔ v ↔ score round trips, timesteps equal diffusers'."""

import pytest
import torch

from dreamdistill.diffusion import schedule as S


@pytest.fixture
def setup():
    from tiny_models import tiny_scheduler

    sched = S.NoiseSchedule.from_scheduler(tiny_scheduler())
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(6, 3, 4, 4, generator=g, dtype=torch.float64), torch.randn(6, 3, 4, 4, generator=g,
                                                                                     dtype=torch.float64)
    t = torch.tensor([0, 10, 250, 500, 900, 990])
    alpha, sigma = sched.alpha_sigma(t)
    return sched, x0, eps, alpha, sigma


def test_alpha_sigma_unit_circle_and_log_snr(setup):
    sched, _, _, alpha, sigma = setup
    torch.testing.assert_close(alpha**2 + sigma**2, torch.ones_like(alpha))
    t = torch.tensor([0, 10, 250, 500, 900, 990])
    torch.testing.assert_close(sched.log_snr(t), torch.log(alpha**2 / sigma**2))
    assert torch.all(sched.log_snr(t)[:-1] > sched.log_snr(t)[1:]), "log SNR must decrease with t"


def test_round_trips(setup):
    _, x0, eps, alpha, sigma = setup
    x_t = S.add_noise(x0=x0, eps=eps, alpha=alpha, sigma=sigma)
    torch.testing.assert_close(S.x0_from_eps(x_t=x_t, eps=eps, alpha=alpha, sigma=sigma), x0)
    torch.testing.assert_close(S.eps_from_x0(x_t=x_t, x0=x0, alpha=alpha, sigma=sigma), eps)
    v = S.v_from_x0_eps(x0=x0, eps=eps, alpha=alpha, sigma=sigma)
    torch.testing.assert_close(S.x0_from_v(x_t=x_t, v=v, alpha=alpha, sigma=sigma), x0)
    torch.testing.assert_close(S.eps_from_v(x_t=x_t, v=v, alpha=alpha, sigma=sigma), eps)
    score = S.score_from_eps(eps=eps, sigma=sigma)
    torch.testing.assert_close(S.eps_from_score(score=score, sigma=sigma), eps)
    for kind, output in (("epsilon", eps), ("v_prediction", v), ("sample", x0)):
        torch.testing.assert_close(S.output_from_x0_eps(x0=x0, eps=eps, alpha=alpha, sigma=sigma, prediction_type=kind),
                                   output)
        torch.testing.assert_close(S.eps_from_output(output, x_t=x_t, alpha=alpha, sigma=sigma, prediction_type=kind),
                                   eps)
        torch.testing.assert_close(S.x0_from_output(output, x_t=x_t, alpha=alpha, sigma=sigma, prediction_type=kind),
                                   x0)


def test_score_is_gradient_of_gaussian_log_density():
    """For x0 fixed, p(x_t) = N(α x0, σ²): ∇ log p = −(x_t − α x0)/σ² = −ε/σ."""
    alpha, sigma = torch.tensor(0.6, dtype=torch.float64), torch.tensor(0.8, dtype=torch.float64)
    x0 = torch.randn(5, dtype=torch.float64)
    x_t = torch.randn(5, dtype=torch.float64, requires_grad=True)
    log_p = torch.distributions.Normal(alpha * x0, sigma).log_prob(x_t).sum()
    (grad,) = torch.autograd.grad(log_p, x_t)
    eps = S.eps_from_x0(x_t=x_t.detach(), x0=x0, alpha=alpha, sigma=sigma)
    torch.testing.assert_close(S.score_from_eps(eps=eps, sigma=sigma), grad)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("steps", [1, 4, 10, 64, 333])
@pytest.mark.parametrize("offset", [0, 1])
def test_timesteps_equal_diffusers(spacing, steps, offset):
    from tiny_models import tiny_scheduler

    scheduler = tiny_scheduler(timestep_spacing=spacing, steps_offset=offset)
    scheduler.set_timesteps(steps)
    ours = S.NoiseSchedule.from_scheduler(scheduler).timesteps(steps)
    assert ours.tolist() == scheduler.timesteps.tolist()


def test_final_alpha_and_bad_steps():
    from tiny_models import tiny_scheduler

    sched = S.NoiseSchedule.from_scheduler(tiny_scheduler(set_alpha_to_one=False))
    assert float(sched.alpha_bar(torch.tensor(-1))) == pytest.approx(float(sched.alphas_cumprod[0]))
    with pytest.raises(ValueError, match="steps must be between"):
        sched.timesteps(0)
