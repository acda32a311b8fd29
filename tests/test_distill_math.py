"""Distillation math: the PD target identity, timestep grids, loss weights, the DMD gradient, the w-embedding,
and the shared loop's exact resume. Fast: no training runs beyond a tiny linear model."""

import pytest
import torch

from dreamdistill.diffusion.ddim import ddim_transition
from dreamdistill.diffusion.schedule import NoiseSchedule, eps_from_x0, v_from_x0_eps
from dreamdistill.distill.dmd import dmd_gradient, gradient_loss
from dreamdistill.distill.progressive import (
    pd_rounds,
    pd_target,
    pd_timesteps,
    pd_weight,
    teacher_two_steps,
    weighted_x0_loss,
)
from dreamdistill.errors import DreamDistillError


@pytest.fixture(scope="module")
def teacher(tiny_pixel_teacher_dir):
    from dreamdistill.diffusion.teacher import Teacher

    return Teacher.from_pretrained(tiny_pixel_teacher_dir, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def schedule():
    from tiny_models import tiny_scheduler

    return NoiseSchedule.from_scheduler(tiny_scheduler())


def test_pd_target_makes_one_student_step_land_on_two_teacher_steps(schedule):
    """DDIM_{s→t}(x_s; x̃) = DDIM_{u→t}(DDIM_{s→u}(x_s; x̂0_a); x̂0_b) in float64, on every grid pair incl. the last."""
    generator = torch.Generator().manual_seed(0)
    s, u, t = pd_timesteps(schedule, 8)
    x_s = torch.randn(len(s), 3, 8, 8, generator=generator, dtype=torch.float64)
    predictions = {}

    def teacher_x0(x, tau):  # an arbitrary teacher: a fixed random x̂0 per call
        key = len(predictions)
        predictions[key] = torch.randn(x.shape, generator=generator, dtype=torch.float64) + 0.1 * x
        return predictions[key]

    x_t = teacher_two_steps(teacher_x0, x_s, s, u, t, schedule)
    alpha_s, sigma_s = schedule.alpha_sigma(s)
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    target = pd_target(x_s=x_s, x_t=x_t, alpha_s=alpha_s, sigma_s=sigma_s, alpha_t=alpha_t, sigma_t=sigma_t)
    student_step = ddim_transition(x_s=x_s, x0=target, alpha_s=alpha_s, sigma_s=sigma_s, alpha_t=alpha_t,
                                   sigma_t=sigma_t)
    assert target.dtype == torch.float64 and t[-1] == -1
    torch.testing.assert_close(student_step, x_t, atol=1e-5, rtol=0)


def test_pd_target_with_the_tiny_teacher_network(teacher):
    """The same identity with a real (CFG) teacher UNet providing both x̂0 predictions."""
    from dreamdistill.distill.student import student_schedule

    schedule = student_schedule(teacher)
    s, u, t = pd_timesteps(schedule, 2)
    text = teacher.encode_text(["a red chair, front view", "a blue mug, side view"])
    x_s = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    def teacher_x0(x, tau):
        return teacher.denoiser(teacher.unet, "cfg")(x.float(), tau, text, 3.0).x0.double()

    x_t = teacher_two_steps(teacher_x0, x_s, s, u, t, schedule)
    a_s, s_s = schedule.alpha_sigma(s)
    a_t, s_t = schedule.alpha_sigma(t)
    target = pd_target(x_s=x_s, x_t=x_t, alpha_s=a_s, sigma_s=s_s, alpha_t=a_t, sigma_t=s_t)
    landed = ddim_transition(x_s=x_s, x0=target, alpha_s=a_s, sigma_s=s_s, alpha_t=a_t, sigma_t=s_t)
    torch.testing.assert_close(landed, x_t, atol=1e-5, rtol=0)


@pytest.mark.parametrize("steps", [1, 2, 4, 8, 32])
def test_pd_grid_is_the_samplers_grid(schedule, steps):
    """The K-step student trains on exactly the steps Teacher.sample(steps=K) walks; u interleaves the 2K grid."""
    s, u, t = pd_timesteps(schedule, steps)
    torch.testing.assert_close(s, schedule.timesteps(steps))
    torch.testing.assert_close(t[:-1], s[1:])
    torch.testing.assert_close(u, schedule.timesteps(2 * steps)[1::2])
    assert t[-1] == -1 and s[0] == schedule.num_train_timesteps - 1  # trailing: the first step is pure noise


def test_pd_grid_midpoints_without_interleaving():
    from tiny_models import tiny_scheduler

    leading = NoiseSchedule.from_scheduler(tiny_scheduler(timestep_spacing="leading", steps_offset=1))
    s, u, t = pd_timesteps(leading, 3)
    assert ((u < s) & (u > t)).all()


def test_pd_rounds_and_bad_step_counts():
    assert pd_rounds(64, 4) == [(64, 32), (32, 16), (16, 8), (8, 4)]
    assert pd_rounds(2, 1) == [(2, 1)]
    for teacher_steps, student_steps in [(48, 4), (4, 4), (6, 4), (4, 0)]:
        with pytest.raises(DreamDistillError) as error:
            pd_rounds(teacher_steps, student_steps)
        assert "\n" not in str(error.value)


def test_loss_weights_truncated_snr_and_v_loss(schedule):
    """x: max(SNR, 1); v: 1 + SNR, which makes the weighted x-loss equal the v-space loss exactly."""
    t = torch.tensor([999, 700, 300, 20])
    snr = schedule.log_snr(t).exp()
    torch.testing.assert_close(pd_weight(schedule.log_snr(t), "x"), snr.clamp(min=1))
    generator = torch.Generator().manual_seed(0)
    x_s, x0, target = (torch.randn(4, 3, 4, 4, generator=generator, dtype=torch.float64) for _ in range(3))
    alpha, sigma = schedule.alpha_sigma(t)

    def v(x0_hat):
        return v_from_x0_eps(x0=x0_hat, eps=eps_from_x0(x_t=x_s, x0=x0_hat, alpha=alpha, sigma=sigma), alpha=alpha,
                             sigma=sigma)

    v_loss = (v(x0) - v(target)).square().flatten(1).mean(1).mean()
    torch.testing.assert_close(weighted_x0_loss(x0, target, pd_weight(schedule.log_snr(t), "v")).double(), v_loss,
                               rtol=1e-5, atol=0)


def test_dmd_gradient_direction_and_normaliser():
    """Descending the DMD gradient moves x towards the real denoiser's x̂0 and away from the fake one's."""
    x = torch.zeros(2, 3, 4, 4, requires_grad=True)
    x0_real = torch.full((2, 3, 4, 4), 0.5)
    x0_real[1] *= 2  # sample 1 is twice as far from the real x̂0: same normalised gradient
    x0_fake = torch.zeros(2, 3, 4, 4)  # the fake score believes the generator
    grad = dmd_gradient(x=x.detach(), x0_real=x0_real, x0_fake=x0_fake)
    torch.testing.assert_close(grad, -torch.ones_like(grad))
    gradient_loss(x, grad).backward()
    torch.testing.assert_close(x.grad, grad / grad.numel())
    stepped = x.detach() - 0.1 * grad
    assert ((stepped - x0_real).abs() < (x.detach() - x0_real).abs()).all()


def test_guidance_embedding_features():
    from dreamdistill.diffusion.teacher import guidance_embedding

    features = guidance_embedding(torch.tensor([1.0, 4.0, 4.0]), 9)
    assert features.shape == (3, 9) and torch.isfinite(features).all()
    torch.testing.assert_close(features[1], features[2])
    assert not torch.allclose(features[0], features[1]) and (features[:, -1] == 0).all()


def test_guided_student_starts_as_the_teacher(teacher):
    """The zero-initialised w-projection makes the stage-1 student equal the conditional teacher for every w."""
    from dreamdistill.distill.guided import guided_unet

    student = guided_unet(teacher.unet, 16).eval()
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([900, 200])
    text = teacher.encode_text(["a red chair, front view"] * 2)
    with torch.no_grad():
        plain = teacher.denoiser(teacher.unet, "none")(x, t, text).x0
        for w in (1.0, 5.0):
            torch.testing.assert_close(teacher.denoiser(student, "embedded")(x, t, text, w).x0, plain)
        torch.nn.init.normal_(student.time_embedding.cond_proj.weight)
        a = teacher.denoiser(student, "embedded")(x, t, text, 1.0).x0
        b = teacher.denoiser(student, "embedded")(x, t, text, 5.0).x0
    assert not torch.allclose(a, b)


def test_cfg_on_outputs_equals_cfg_on_eps(teacher):
    """The denoiser's CFG on raw v outputs equals the teacher's CFG on ε (converted to x̂0)."""
    from dreamdistill.diffusion.schedule import x0_from_eps

    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([600, 100])
    text = teacher.encode_text(["a red chair, front view", "a blue mug, back view"])
    with torch.no_grad():
        eps = teacher.predict_eps(x, t, text, guidance_scale=3.0)
        alpha, sigma = teacher.schedule.alpha_sigma(t)
        expected = x0_from_eps(x_t=x.double(), eps=eps.double(), alpha=alpha, sigma=sigma).float()
        torch.testing.assert_close(teacher.denoiser(teacher.unet, "cfg")(x, t, text, 3.0).x0, expected,
                                   atol=1e-4, rtol=1e-4)


# ------------------------------------------------------------------------------------------- the loop
def _train_linear(work_dir, steps, fail_at=None):
    from dreamdistill.distill.loop import LoopConfig, Run

    config = LoopConfig(steps=steps, batch_size=4, learning_rate=1e-2, warmup_steps=2, checkpoint_every=2,
                        log_every=1, device="cpu")
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)

    def step(ctx):
        if ctx.step == fail_at:
            raise KeyboardInterrupt
        x = ctx.randn(4, 3)
        loss = (ctx.models["model"](x) - x.sum(dim=1, keepdim=True)).square().mean()
        ctx.update("model", loss)
        return {"loss": loss.item()}

    return Run(config, work_dir).phase("fit", {"model": model}, step)["model"]


def test_interrupted_phase_resumes_exactly(tmp_path):
    """Kill at step 3, rerun: it resumes from the step-2 checkpoint and ends on the uninterrupted weights."""
    reference = _train_linear(tmp_path / "reference", 5)
    with pytest.raises(KeyboardInterrupt):
        _train_linear(tmp_path / "run", 5, fail_at=3)
    assert torch.load(tmp_path / "run" / "fit.pt", weights_only=False)["step"] == 2
    resumed = _train_linear(tmp_path / "run", 5)
    torch.testing.assert_close(resumed.weight, reference.weight, rtol=0, atol=0)
    finished = torch.load(tmp_path / "run" / "fit.pt", weights_only=False)
    assert finished["step"] == 5 and "optimizers" not in finished
    again = _train_linear(tmp_path / "run", 5)  # a finished phase is loaded, not retrained
    torch.testing.assert_close(again.weight, reference.weight, rtol=0, atol=0)
    assert (tmp_path / "run" / "log.jsonl").read_text().count('"phase": "fit"') >= 5


def test_time_limit_ends_the_phase_as_finished(tmp_path, monkeypatch):
    """loop.max_minutes: the phase stops once its clock passes the limit, saves as finished and records the step."""
    import dreamdistill.distill.loop as loop

    clock = iter(range(0, 10_000, 30))  # every call of time.time() advances half a minute
    monkeypatch.setattr(loop.time, "time", lambda: float(next(clock)))
    config = loop.LoopConfig(steps=50, batch_size=4, warmup_steps=0, checkpoint_every=10, log_every=1,
                             max_minutes=1.2, device="cpu")
    model = torch.nn.Linear(3, 1)

    def step(ctx):
        loss = ctx.models["model"](ctx.randn(4, 3)).square().mean()
        ctx.update("model", loss)
        return {"loss": loss.item()}

    run = loop.Run(config, tmp_path)
    run.phase("fit", {"model": model}, step)
    saved = torch.load(tmp_path / "fit.pt", weights_only=False)
    assert saved["finished"] and 0 < saved["step"] < 50 and run.steps_trained == {"fit": saved["step"]}
    assert '"stopped_at"' in (tmp_path / "log.jsonl").read_text()
    rerun = loop.Run(config, tmp_path)  # a rerun skips the phase and still knows its step count
    rerun.phase("fit", {"model": torch.nn.Linear(3, 1)}, step)
    assert rerun.steps_trained == {"fit": saved["step"]}


def _average_of_steps(work_dir, steps, halflife, fail_at=None, seen=None):
    """A phase whose step sets the weight to step + 1 (no optimiser step): its EMA has a closed form."""
    from dreamdistill.distill.loop import LoopConfig, Run

    config = LoopConfig(steps=steps, batch_size=1, warmup_steps=0, checkpoint_every=2, log_every=1, device="cpu",
                        ema_halflife=halflife)
    model = torch.nn.Linear(1, 1, bias=False)
    torch.nn.init.zeros_(model.weight)

    def step(ctx):
        if ctx.step == fail_at:
            raise KeyboardInterrupt
        if seen is not None:
            seen.append(None if ctx.average is None else float(ctx.average.weight))
        ctx.models["model"].weight.data.fill_(ctx.step + 1.0)
        return {}

    return Run(config, work_dir).phase("fit", {"model": model}, step, average="model")["model"]


def test_phase_returns_the_students_moving_average(tmp_path):
    """loop.ema_halflife: the returned student is θ̄_n = β θ̄_(n−1) + (1 − β) θ_n from θ̄_0 = θ_0 with
    β = ½^(1/halflife) (a float64 golden), the step sees the average before it, the finished checkpoint holds the
    average, an interrupted phase resumes it exactly, and halflife 0 returns the last weights."""
    from dreamdistill.distill.loop import ema_decay

    halflife, steps = 3.0, 7
    beta = 0.5 ** (1 / halflife)
    assert ema_decay(halflife) == pytest.approx(beta) and ema_decay(halflife) ** halflife == pytest.approx(0.5)
    golden, expected_seen = 0.0, []
    for k in range(steps):
        expected_seen.append(golden)
        golden = beta * golden + (1 - beta) * (k + 1)
    seen = []
    averaged = _average_of_steps(tmp_path / "a", steps, halflife, seen=seen)
    assert float(averaged.weight) == pytest.approx(golden, rel=1e-6) and golden < steps - 1
    assert seen == pytest.approx(expected_seen, rel=1e-6)
    saved = torch.load(tmp_path / "a" / "fit.pt", weights_only=False)
    assert float(saved["modules"]["model"]["weight"]) == pytest.approx(golden, rel=1e-6)
    with pytest.raises(KeyboardInterrupt):
        _average_of_steps(tmp_path / "b", steps, halflife, fail_at=5)
    resumed = _average_of_steps(tmp_path / "b", steps, halflife)
    assert float(resumed.weight) == pytest.approx(golden, rel=1e-6)
    assert float(_average_of_steps(tmp_path / "c", steps, 0.0).weight) == steps
