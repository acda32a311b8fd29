"""Wiring of every training step against an independent oracle (golden values on tiny models).

The oracle here never calls the code under test for the thing being checked: it reads ᾱ_t from the
diffusers scheduler itself, calls the UNet directly, applies CFG and the v/ε/x0 conversions by hand in
float64, and steps DDIM with the textbook formula. Each test says what breaking it would look like; every
one was checked to fail with the code broken by hand (weight, target, timestep, sign, swapped arguments).
"""

from dataclasses import dataclass, field

import pytest
import torch

from dreamdistill.diffusion.teacher import Teacher
from dreamdistill.distill.loop import StepContext
from dreamdistill.guidance.sds import SDS, GuidanceConfig
from dreamdistill.guidance.vsd import ADAPTER_NAME, VSD, CriticConfig


# --------------------------------------------------------------------------------------------- oracle
def alpha_bar(teacher, t: torch.Tensor) -> torch.Tensor:
    """ᾱ_t [B, 1, 1, 1] float64 straight from the diffusers scheduler (final ᾱ for t < 0: 1 with set_alpha_to_one,
    else ᾱ_0, as DDIMScheduler.final_alpha_cumprod)."""
    table = torch.as_tensor(teacher.scheduler.alphas_cumprod, dtype=torch.float64)
    final = torch.ones(()) if teacher.scheduler.config.set_alpha_to_one else table[0]
    values = torch.where(t < 0, final.double(), table[t.clamp(min=0)].double())
    return values.reshape(-1, 1, 1, 1)


def raw(unet, x, t, text) -> torch.Tensor:
    with torch.no_grad():
        return unet(x.float(), t, encoder_hidden_states=text).sample.double()


def oracle_x0_eps(teacher, unet, x_t, t, text, w: float | torch.Tensor = 1.0):
    """(x̂0, ε̂) of a v- or ε-prediction UNet (the teacher's scheduler says which) with CFG w on the raw output,
    float64."""
    ab = alpha_bar(teacher, t)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    v = raw(unet, x_t, t, text)
    if not (isinstance(w, float) and w == 1.0):
        v_uncond = raw(unet, x_t, t, teacher.uncond_embedding(x_t.shape[0]))
        w = torch.as_tensor(w, dtype=torch.float64).reshape(-1, 1, 1, 1)
        v = v_uncond + w * (v - v_uncond)
    x_t = x_t.double()
    if teacher.scheduler.config.prediction_type == "epsilon":
        return (x_t - s * v) / a, v
    return a * x_t - s * v, s * x_t + a * v


@pytest.fixture()
def pixel(tiny_pixel_teacher_dir):
    return Teacher.from_pretrained(tiny_pixel_teacher_dir, device="cpu")


@pytest.fixture(params=["pixel", "latent"])
def model(request, tiny_pixel_teacher_dir, tiny_sd_toy_teacher_dir):
    """Each distillation step's wiring is checked on both teacher formats: the tiny pixel teacher (v-prediction,
    3×16² pixels) and the tiny SD teacher (ε-prediction, scaled-linear ᾱ with final ᾱ_0, 4×8² VAE latents)."""
    folder = tiny_pixel_teacher_dir if request.param == "pixel" else tiny_sd_toy_teacher_dir
    return Teacher.from_pretrained(folder, device="cpu", dtype=torch.float32)


@pytest.fixture(scope="module")
def eps_teacher_dir(tmp_path_factory):
    from tiny_models import write_tiny_pixel_teacher

    return write_tiny_pixel_teacher(tmp_path_factory.mktemp("eps-teacher"), prediction_type="epsilon")


# ------------------------------------------------------------------------------------------- SDS / VSD
@pytest.mark.parametrize("weighting", ["sigma_sq", "uniform", "sds_snr"])
def test_sds_image_gradient_matches_the_oracle(pixel, weighting):
    """d loss / d image = 2 w(t) (ε̂_cfg(α x + σ ε) − ε) / B with x = 2 image − 1. Breaks if the weight,
    the CFG, the noising (α, σ swapped) or the sign is wrong."""
    scale = 7.0
    sds = SDS(pixel, "a red chair", GuidanceConfig(guidance_scale=scale, weighting=weighting,
                                                  t_range=(0.1, 0.9), t_range_end=(0.1, 0.9)))
    images = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(3)).requires_grad_(True)
    out = sds(images, progress=0.0, generator=torch.Generator().manual_seed(11))
    out["loss"].backward()
    t, eps = out["t"], out["eps"].double()
    ab = alpha_bar(pixel, t)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    w = {"sigma_sq": 1 - ab, "uniform": torch.ones_like(ab), "sds_snr": (s / a).clamp(max=10.0)}[weighting]
    text = pixel.encode_text(["a red chair"] * 3)
    x = 2 * images.detach().double() - 1

    def expected_for(x_t):
        _, eps_hat = oracle_x0_eps(pixel, pixel.unet, x_t, t, text, scale)
        return (2 * w * (eps_hat - eps) / 3).float()

    expected = expected_for(a * x + s * eps)
    torch.testing.assert_close(images.grad, expected, atol=2e-5, rtol=1e-3)
    assert not torch.allclose(images.grad, expected_for(s * x + a * eps), atol=1e-3), "oracle cannot see a swap"
    assert (w > 0).all()


def test_timesteps_follow_the_annealing_schedule(pixel):
    """t is drawn from t_range at progress 0, t_range_end at progress 1 and in between linearly."""
    sds = SDS(pixel, "a red chair", GuidanceConfig(guidance_scale=1.0, t_range=(0.5, 0.9), t_range_end=(0.02, 0.1)))
    images = torch.rand(48, 3, 16, 16)
    for progress, (low, high) in ((0.0, (500, 900)), (1.0, (20, 100)), (0.5, (260, 500))):
        with torch.no_grad():
            t = sds(images, progress=progress, generator=torch.Generator().manual_seed(0))["t"]
        assert low <= int(t.min()) and int(t.max()) <= high, (progress, t.min(), t.max())
        assert int(t.max()) - int(t.min()) > (high - low) // 3, "t does not spread over the range"


def test_vsd_gradient_is_teacher_minus_critic(pixel):
    """VSD's d loss / d image = 2 w (ε̂_teacher,cfg − ε̂_critic) / B: a fresh critic (LoRA B = 0, camera MLP 0) is
    the conditional teacher, so the oracle is 2 w (ε̂_cfg − ε̂_cond) / B: the sampled ε must not appear."""
    scale = 5.0
    vsd = VSD(pixel, "a blue mug", GuidanceConfig(guidance_scale=scale, t_range=(0.2, 0.8), t_range_end=(0.2, 0.8)),
              CriticConfig())
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(5)).requires_grad_(True)
    out = vsd(images, progress=0.0, generator=torch.Generator().manual_seed(2), camera=torch.randn(2, 6))
    out["loss"].backward()
    t = out["t"]
    ab = alpha_bar(pixel, t)
    x_t = ab.sqrt() * (2 * images.detach().double() - 1) + (1 - ab).sqrt() * out["eps"].double()
    text = pixel.encode_text(["a blue mug"] * 2)
    _, eps_cfg = oracle_x0_eps(pixel, pixel.unet, x_t, t, text, scale)
    _, eps_cond = oracle_x0_eps(pixel, pixel.unet, x_t, t, text, 1.0)
    torch.testing.assert_close(images.grad, (2 * (1 - ab) * (eps_cfg - eps_cond) / 2).float(), atol=2e-5, rtol=1e-3)
    vsd.close()


@pytest.mark.parametrize("prediction", ["v_prediction", "epsilon"])
def test_critic_dsm_target_is_in_the_teachers_prediction_type(pixel, eps_teacher_dir, prediction):
    """Critic loss = mean (f(α x0 + σ ε) − target)² with target v = α ε − σ x0 (v teacher) or ε (ε teacher)."""
    teacher = pixel if prediction == "v_prediction" else Teacher.from_pretrained(eps_teacher_dir, device="cpu")
    vsd = VSD(teacher, "a red chair", GuidanceConfig(), CriticConfig(condition_dropout=0.0))
    g = torch.Generator().manual_seed(4)
    x0, eps = torch.randn(2, 3, 16, 16, generator=g), torch.randn(2, 3, 16, 16, generator=g)
    t = torch.tensor([150, 700])
    text = teacher.encode_text(["a red chair"] * 2)
    with torch.no_grad():
        loss = vsd.critic.denoising_loss(x0, text, torch.zeros(2, 6), t=t, eps=eps)
    ab = alpha_bar(teacher, t)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    x_t = a * x0.double() + s * eps.double()
    target = a * eps.double() - s * x0.double() if prediction == "v_prediction" else eps.double()
    expected = (raw(teacher.unet, x_t, t, text) - target).square().mean()  # fresh critic = teacher
    torch.testing.assert_close(loss.double(), expected, atol=1e-5, rtol=1e-4)
    vsd.close()


def test_critic_sees_the_camera(pixel):
    """The camera reaches the critic from VSD's call and from its training, and changes its prediction."""
    vsd = VSD(pixel, "a red chair", GuidanceConfig(), CriticConfig(condition_dropout=0.0))
    torch.nn.init.normal_(vsd.critic.camera_embedding.net[-1].weight, std=0.5)
    seen = []
    network = vsd.critic.network
    vsd.critic.network = lambda x_t, t, text, camera: seen.append(camera.clone()) or network(x_t, t, text, camera)
    camera = torch.randn(2, 6, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        vsd(torch.rand(2, 3, 16, 16), camera=camera, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(seen[-1], camera)
    vsd.train_critic(torch.randn(2, 3, 16, 16), pixel.encode_text(["a red chair"] * 2), camera)
    torch.testing.assert_close(seen[-1], camera)
    x, t, text = torch.randn(2, 3, 16, 16), torch.tensor([300, 600]), pixel.encode_text(["a red chair"] * 2)
    with torch.no_grad():
        a = vsd.critic.predict_eps(x, t, text, camera, guidance_scale=1.0)
        b = vsd.critic.predict_eps(x, t, text, -camera, guidance_scale=1.0)
    assert not torch.allclose(a, b)
    vsd.close()


def test_critic_training_moves_every_lora_tensor_and_lowers_its_loss(pixel):
    """N critic steps on fixed renders: every LoRA tensor changes, the DSM loss on a fixed (t, ε) set falls, and
    the adapter (not only the camera MLP) changes the prediction. Fails when the adapter switch cuts the LoRA
    weights out of the graph (peft's disable_adapters sets requires_grad=False)."""
    torch.manual_seed(0)  # the LoRA A matrices are drawn from the global stream: the same start in any test order
    vsd = VSD(pixel, "a red chair", GuidanceConfig(),
              CriticConfig(condition_dropout=0.0, learning_rate=1e-2, steps_per_scene_step=60))
    lora = {n: p.detach().clone() for n, p in pixel.unet.named_parameters() if ADAPTER_NAME in n}
    assert len(lora) > 0
    g = torch.Generator().manual_seed(0)
    renders = pixel.images_to_model(torch.rand(2, 3, 16, 16, generator=g).round())  # fixed two-colour "renders"
    text, camera = pixel.encode_text(["a red chair"] * 2), torch.randn(2, 6, generator=g)
    t_eval = torch.randint(50, 950, (16,), generator=g)
    eps_eval = torch.randn(16, 3, 16, 16, generator=g)

    def eval_loss():
        with torch.no_grad():
            return float(vsd.critic.denoising_loss(renders.repeat(8, 1, 1, 1), text.repeat(8, 1, 1),
                                                   camera.repeat(8, 1), t=t_eval, eps=eps_eval))

    before = eval_loss()
    vsd.train_critic(renders, text, camera, torch.Generator().manual_seed(1))
    after = eval_loss()
    changed = [n for n, p in pixel.unet.named_parameters() if ADAPTER_NAME in n and not torch.equal(p, lora[n])]
    assert len(changed) == len(lora), f"{len(lora) - len(changed)} of {len(lora)} LoRA tensors did not change"
    assert after < before - 0.02, (before, after)
    switch = vsd.critic._switch
    vsd.critic._switch = lambda on: None  # the adapter stays off: what the camera MLP alone achieves
    without_lora = eval_loss()
    vsd.critic._switch = switch
    assert without_lora > after + 0.01, (without_lora, after)
    x, t = torch.randn(2, 3, 16, 16), torch.tensor([200, 800])
    with torch.no_grad():
        with vsd.critic.active(None):
            adapted = pixel.model_output(x, t, text)
        plain = pixel.model_output(x, t, text)
    assert (adapted - plain).abs().max() > 1e-3
    vsd.close()


def test_critic_checkpoint_restores_it_and_close_leaves_the_teacher_as_it_was(pixel):
    """state_dict holds the trained LoRA; a second VSD on the same (closed) teacher loads it and predicts the
    same; after close the teacher has no adapter and predicts as before."""
    x, t, text = torch.randn(2, 3, 16, 16), torch.tensor([250, 750]), pixel.encode_text(["a red chair"] * 2)
    with torch.no_grad():
        teacher_before = pixel.model_output(x, t, text)
    config = CriticConfig(condition_dropout=0.0, learning_rate=1e-2, steps_per_scene_step=3)
    vsd = VSD(pixel, "a red chair", GuidanceConfig(), config)
    camera = torch.randn(2, 6)
    vsd.train_critic(torch.randn(2, 3, 16, 16), text, camera)
    state = vsd.state_dict()
    assert any(v.abs().sum() > 0 for k, v in state["critic"]["lora"].items() if "lora_B" in k)
    with torch.no_grad():
        trained = vsd.critic.predict_eps(x, t, text, camera)
    vsd.close()
    assert not any(ADAPTER_NAME in n for n, _ in pixel.unet.named_parameters())
    with torch.no_grad():
        torch.testing.assert_close(pixel.model_output(x, t, text), teacher_before)
    again = VSD(pixel, "a red chair", GuidanceConfig(), config)
    again.load_state_dict(state)
    with torch.no_grad():
        torch.testing.assert_close(again.critic.predict_eps(x, t, text, camera), trained)
    again.close()


# ------------------------------------------------------------------------------------------ distillation
@dataclass
class RecordingContext(StepContext):
    """A step context that records its random draws and the losses handed to ``update`` (no optimiser step)."""

    draws: list = field(default_factory=list)
    losses: dict = field(default_factory=dict)

    def randn(self, *shape):
        value = super().randn(*shape)
        self.draws.append(value)
        return value

    def randint(self, high, size):
        value = super().randint(high, size)
        self.draws.append(value)
        return value

    def update(self, name, loss):
        self.losses[name] = loss


def context(models, seed=0):
    return RecordingContext(step=0, generator=torch.Generator().manual_seed(seed), models=models,
                            device=torch.device("cpu"), accelerator=None)


class OneStepRun:
    """Stands in for ``distill.loop.Run``: each phase runs its step function once on a recording context."""

    def __init__(self):
        self.contexts = {}

    def phase(self, name, modules, step_fn, learning_rates=None, betas=None, average=None):
        self.contexts[name] = ctx = context(modules)
        step_fn(ctx)
        return modules


def trailing_grid(teacher, steps):
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(teacher.scheduler.config, timestep_spacing="trailing")
    scheduler.set_timesteps(steps)
    return scheduler.timesteps.long()


@pytest.mark.parametrize("lora", [0, 2])
def test_pd_round_target_weight_and_student_timestep(model, monkeypatch, lora):
    """One PD step: the target is two CFG-teacher DDIM steps s → u → t (s > u > t) turned into the x̂0 whose
    one step s → t lands there; the weight is 1 + SNR at s; the student is queried at s. A LoRA student
    (student.lora_rank) starts as the teacher and its loss reaches its adapter only."""
    from dreamdistill.distill import progressive
    from dreamdistill.distill.data import PairSet
    from dreamdistill.distill.student import StudentConfig, new_student, student_schedule

    recorded = {}
    monkeypatch.setattr(progressive, "weighted_x0_loss",
                        lambda x0, target, weight: recorded.update(x0=x0, target=target, weight=weight)
                        or (x0 - target).square().mean())
    scale, prompts = 3.0, ["a red chair, front view", "a blue mug, side view", "a red mug, back view"]
    data = PairSet(torch.randn(3, *model.model_shape, generator=torch.Generator().manual_seed(9)), prompts)
    step = progressive._round_step(model, student_schedule(model), model.denoiser(model.unet, "cfg"), "none", data,
                                   lambda ctx, batch: scale, 2, progressive.PDConfig(parameterisation="v"), 3)
    student = new_student(model.unet, StudentConfig(lora_rank=lora))
    ctx = context({"student": student}, seed=1)
    step(ctx)
    index, which, eps = ctx.draws
    coarse, fine = trailing_grid(model, 2), trailing_grid(model, 4)
    s = coarse[which]
    t = torch.cat([coarse[1:], torch.tensor([-1])])[which]
    u = fine[2 * which + 1]
    assert bool(((s > u) & (u > t)).all())
    text = model.encode_text([prompts[i] for i in index.tolist()])
    ab_s, ab_u, ab_t = (alpha_bar(model, tau) for tau in (s, u, t))
    x_s = ab_s.sqrt() * data.x0[index].double() + (1 - ab_s).sqrt() * eps.double()

    def ddim(x, ab_from, ab_to, x0):
        return ab_to.sqrt() * x0 + (1 - ab_to).sqrt() * (x - ab_from.sqrt() * x0) / (1 - ab_from).sqrt()

    x_u = ddim(x_s, ab_s, ab_u, oracle_x0_eps(model, model.unet, x_s, s, text, scale)[0])
    x_t = ddim(x_u, ab_u, ab_t, oracle_x0_eps(model, model.unet, x_u, u, text, scale)[0])
    a_s, s_s, a_t, s_t = ab_s.sqrt(), (1 - ab_s).sqrt(), ab_t.sqrt(), (1 - ab_t).sqrt()
    target = (s_s * x_t - s_t * x_s) / (a_t * s_s - a_s * s_t)
    torch.testing.assert_close(recorded["target"].double(), target, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(recorded["weight"].double().flatten(), (1 + ab_s / (1 - ab_s)).flatten())
    student_x0 = oracle_x0_eps(model, model.unet, x_s, s, text)[0]  # guidance "none": the conditional student
    torch.testing.assert_close(recorded["x0"].detach().double(), student_x0, atol=1e-4, rtol=1e-4)
    assert_gradient_reaches_only_the_student(student, ctx.losses["student"], lora)


def assert_gradient_reaches_only_the_student(student, loss, lora, trainable_extra=()):
    """After backward: a full student has a gradient in every weight; a LoRA student in every adapter tensor (and
    ``trainable_extra``) and in no teacher weight, which stay frozen."""
    loss.backward()
    grads = {name: p.grad for name, p in student.named_parameters()}
    if not lora:
        assert all(g is not None for g in grads.values())
        return
    adapter = {n for n in grads if "lora_" in n or n.startswith(trainable_extra)}
    assert adapter and all("lora_" in n or n.startswith(trainable_extra) for n, g in grads.items() if g is not None)
    assert all(grads[n] is not None for n in adapter)
    assert any(grads[n].abs().sum() > 0 for n in adapter if "lora_B" in n)  # B = 0 at the start: A has none yet


@pytest.mark.parametrize("lora", [0, 2])
def test_guided_stage1_regresses_onto_the_cfg_teacher(model, lora):
    """Stage-1 loss = mean_b (1 + SNR_t) mean (x̂0_student(w) − x̂0_cfg(w))²; a fresh student is the conditional
    teacher, so the loss is the CFG gap (zero if the target were the conditional teacher). A LoRA student trains
    its adapter and the w-projection only."""
    from dreamdistill.distill.guided import guided_stage1_loss, guided_unet
    from dreamdistill.distill.student import StudentConfig, new_student

    g = torch.Generator().manual_seed(6)
    x0, eps = torch.randn(2, *model.model_shape, generator=g), torch.randn(2, *model.model_shape, generator=g)
    t, w = torch.tensor([300, 650]), torch.tensor([2.0, 6.0])
    text = model.encode_text(["a red chair, front view", "a blue mug, back view"])
    student = guided_unet(model.unet, 16)
    if lora:
        student = new_student(student, StudentConfig(lora_rank=lora))
    loss = guided_stage1_loss(model, student, x0, text, t, eps, w, "v")
    ab = alpha_bar(model, t)
    x_t = ab.sqrt() * x0.double() + (1 - ab).sqrt() * eps.double()
    gap = oracle_x0_eps(model, model.unet, x_t, t, text)[0] - oracle_x0_eps(model, model.unet, x_t, t, text, w)[0]
    expected = ((1 + ab / (1 - ab)).flatten() * gap.square().flatten(1).mean(1)).mean()
    torch.testing.assert_close(loss.double(), expected, atol=1e-6, rtol=1e-4)
    assert expected > 1e-6
    assert_gradient_reaches_only_the_student(student, loss, lora, ("time_embedding.cond_proj",))
    projection = student.time_embedding.cond_proj.weight.grad
    assert projection is not None and projection.abs().sum() > 0  # the w-input learns from the first step


def _distill_config(method, **dmd):
    from dreamdistill.distill import DistillConfig
    from dreamdistill.distill.dmd import DMDConfig
    from dreamdistill.distill.loop import LoopConfig

    return DistillConfig(method=method, cfg=4.0, loop=LoopConfig(batch_size=2), dmd=DMDConfig(**dmd))


def test_kd_student_is_queried_at_the_first_sampling_timestep(model, monkeypatch):
    """KD's one-step student maps noise at t = T − 1 (the trailing grid's first step), not t = 0."""
    from dreamdistill.distill import data, kd
    from dreamdistill.distill.data import PairSet

    shape = model.model_shape
    pairs = PairSet(torch.randn(2, *shape), ["a red chair", "a blue mug"], torch.randn(2, *shape))
    monkeypatch.setattr(data, "teacher_rollouts", lambda *args, **kwargs: pairs)
    seen = []
    monkeypatch.setattr(kd, "trainable_copy", lambda unet: _recording_copy(unet, seen))
    kd.distill_kd(OneStepRun(), model, _distill_config("kd"))
    assert seen and all(int(t) == model.schedule.num_train_timesteps - 1 for t in seen[0])
    assert int(trailing_grid(model, 1)[0]) == model.schedule.num_train_timesteps - 1


def _recording_copy(unet, seen):
    from dreamdistill.distill.student import trainable_copy

    copy = trainable_copy(unet)
    copy.register_forward_pre_hook(lambda module, args: seen.append(args[1].flatten().tolist()))
    return copy


@pytest.mark.parametrize("lora", [0, 2])
def test_dmd_real_score_uses_cfg_and_real_fake_are_not_swapped(model, monkeypatch, lora):
    """The generator's gradient is built from x̂0_real = CFG teacher (weight cfg) and x̂0_fake = fake score, at the
    noised generator sample: both checked against the oracle (a fresh fake score is the conditional teacher). The
    generator loss reaches the generator (only its adapter when it is a LoRA student), never the fake score."""
    from dreamdistill.distill import dmd

    recorded = {}
    original = dmd.dmd_gradient
    monkeypatch.setattr(dmd, "dmd_gradient", lambda **kw: recorded.update(kw) or original(**kw))
    run = OneStepRun()
    config = _distill_config("dmd", fake_steps=1, regression_weight=0.0, t_range=(0.3, 0.7))
    config.student.lora_rank = lora
    dmd.distill_dmd(run, model, config)
    ctx = run.contexts["dmd"]
    prompt_index, noise, t_offset, eps = ctx.draws[-4:]
    from dreamdistill.distill.data import training_prompts

    prompts = training_prompts(model, None)
    text = model.encode_text([prompts[i] for i in prompt_index.tolist()])
    T = model.schedule.num_train_timesteps
    x = oracle_x0_eps(model, model.unet, noise, torch.full((2,), T - 1), text)[0]  # fresh generator = teacher
    t = int(0.3 * T) + t_offset
    ab = alpha_bar(model, t)
    x_t = ab.sqrt() * x + (1 - ab).sqrt() * eps.double()
    torch.testing.assert_close(recorded["x"].double(), x, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(recorded["x0_real"].double(), oracle_x0_eps(model, model.unet, x_t, t, text, 4.0)[0],
                               atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(recorded["x0_fake"].double(), oracle_x0_eps(model, model.unet, x_t, t, text)[0],
                               atol=1e-4, rtol=1e-4)
    ctx.models["fake"].zero_grad(set_to_none=True)
    assert_gradient_reaches_only_the_student(ctx.models["generator"], ctx.losses["generator"], lora)
    assert all(p.grad is None for p in ctx.models["fake"].parameters())


def test_dmd_regression_targets_the_cached_rollouts_in_model_space(model, monkeypatch):
    """With dmd.regression_weight = λ the generator loss is ½ mean(grad²) + λ mean (G(z_i) − x0_i)², where (z_i, x0_i)
    are cached rollout pairs in model space (latents for the SD teacher) and G the generator at t = T − 1."""
    from dreamdistill.distill import data, dmd
    from dreamdistill.distill.data import PairSet

    g = torch.Generator().manual_seed(4)
    pairs = PairSet(torch.randn(3, *model.model_shape, generator=g), ["a red chair", "a blue mug", "a red mug"],
                    torch.randn(3, *model.model_shape, generator=g))
    monkeypatch.setattr(data, "teacher_rollouts", lambda *args, **kwargs: pairs)
    recorded = {}
    original = dmd.dmd_gradient
    monkeypatch.setattr(dmd, "dmd_gradient", lambda **kw: recorded.setdefault("grad", original(**kw)))
    run = OneStepRun()
    dmd.distill_dmd(run, model, _distill_config("dmd", fake_steps=1, regression_weight=0.5, t_range=(0.3, 0.7)))
    ctx = run.contexts["dmd"]
    pair_index = ctx.draws[-3]
    T = model.schedule.num_train_timesteps
    text = model.encode_text([pairs.prompts[i] for i in pair_index.tolist()])
    generated = oracle_x0_eps(model, model.unet, pairs.noise[pair_index], torch.full((2,), T - 1), text)[0]
    regression = (generated - pairs.x0[pair_index].double()).square().mean()
    expected = 0.5 * recorded["grad"].double().square().mean() + 0.5 * regression
    torch.testing.assert_close(ctx.losses["generator"].double(), expected, atol=1e-5, rtol=1e-4)
    assert regression > 1e-3


def test_one_step_students_refuse_an_eps_teacher_with_tiny_final_alpha(eps_teacher_dir):
    """x̂0 = (x − σ ε̂)/α at t = T − 1 amplifies ε errors by 1/α_T: refused with one clear line."""
    from dreamdistill.distill.student import check_one_step_teacher
    from dreamdistill.errors import DreamDistillError

    teacher = Teacher.from_pretrained(eps_teacher_dir, device="cpu")
    with pytest.raises(DreamDistillError, match="ε-prediction"):
        check_one_step_teacher(teacher)


def test_sid_generator_gradient_matches_the_closed_form():
    """With linear denoisers f(x_t) = A x_t + b (float64), d L / d x_g of the SiD loss has a closed form:
    with r = f_φ − f_ψ, q = (f_φ − x_g) − α r and n = sg(mean|x_g − f_φ|):
    n · dL/dx_g = α_t (A − C)ᵀ q + (α_t Aᵀ − I − α α_t (A − C)ᵀ) r  (through both denoisers' inputs)."""
    from dreamdistill.distill.sid import sid_generator_loss

    g = torch.Generator().manual_seed(0)
    d, alpha, a_t, s_t = 6, 1.2, 0.8, 0.6
    A, C = torch.randn(d, d, generator=g, dtype=torch.float64), torch.randn(d, d, generator=g, dtype=torch.float64)
    b, c = torch.randn(d, generator=g, dtype=torch.float64), torch.randn(d, generator=g, dtype=torch.float64)
    x_g = torch.randn(1, d, generator=g, dtype=torch.float64, requires_grad=True)
    eps = torch.randn(1, d, generator=g, dtype=torch.float64)
    x_t = a_t * x_g + s_t * eps
    real, fake = x_t @ A.T + b, x_t @ C.T + c
    sid_generator_loss(x=x_g, x0_real=real, x0_fake=fake, alpha=alpha).backward()
    with torch.no_grad():
        r = (real - fake)[0]
        q = (real - x_g)[0] - alpha * r
        n = (x_g - real).abs().mean()
        eye = torch.eye(d, dtype=torch.float64)
        expected = (a_t * (A - C).T @ q + (a_t * A.T - eye - alpha * a_t * (A - C).T) @ r) / n
    torch.testing.assert_close(x_g.grad[0], expected)


@pytest.mark.parametrize("fake_cfg", [None, 1.0])
def test_sid_step_wiring_real_cfg_fake_trains_and_is_not_updated_by_the_generator(model, monkeypatch, fake_cfg):
    """One SiD step: the real x̂0 is the CFG teacher's and the fake x̂0 the fake denoiser's at the noised generator
    sample (not swapped), the fake guided with sid.fake_cfg (None: the real's weight); the fake denoiser gets a DSM
    loss of its own; the generator loss reaches the generator through the denoisers' inputs but leaves the fake
    denoiser's gradients empty."""
    from dreamdistill.distill import sid
    from dreamdistill.distill.data import training_prompts

    recorded = {}
    original = sid.sid_generator_loss
    monkeypatch.setattr(sid, "sid_generator_loss", lambda **kw: recorded.update(kw) or original(**kw))
    config = _distill_config("sid")
    config.sid.t_range = (0.3, 0.7)
    config.sid.fake_cfg = fake_cfg
    run = OneStepRun()
    sid.distill_sid(run, model, config)
    ctx = run.contexts["sid"]
    assert set(ctx.losses) == {"fake", "generator"}
    prompt_index, noise, t_offset, eps = ctx.draws[-4:]
    prompts = training_prompts(model, None)
    text = model.encode_text([prompts[i] for i in prompt_index.tolist()])
    T = model.schedule.num_train_timesteps
    x = oracle_x0_eps(model, model.unet, noise, torch.full((2,), T - 1), text)[0]
    t = int(0.3 * T) + t_offset
    ab = alpha_bar(model, t)
    x_t = ab.sqrt() * x + (1 - ab).sqrt() * eps.double()
    torch.testing.assert_close(recorded["x0_real"].detach().double(),
                               oracle_x0_eps(model, model.unet, x_t, t, text, 4.0)[0], atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(recorded["x0_fake"].detach().double(),
                               oracle_x0_eps(model, model.unet, x_t, t, text, fake_cfg or 4.0)[0], atol=1e-4,
                               rtol=1e-4)
    assert recorded["x0_real"].requires_grad and recorded["x0_fake"].requires_grad  # through the denoisers
    fake, generator = ctx.models["fake"], ctx.models["generator"]
    ctx.losses["generator"].backward()
    assert all(p.grad is None for p in fake.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in generator.parameters())


def _double_x0(teacher, unet, x_t, t, text, w):
    """x̂0 of a float64 v- or ε-prediction UNet with CFG w on the raw output, differentiable in x_t (oracle)."""
    ab = alpha_bar(teacher, t)
    a, s = ab.sqrt(), (1 - ab).sqrt()
    v = unet(x_t, t, encoder_hidden_states=text.double()).sample
    if w != 1.0:
        v_uncond = unet(x_t, t, encoder_hidden_states=teacher.uncond_embedding(x_t.shape[0]).double()).sample
        v = v_uncond + w * (v - v_uncond)
    if teacher.scheduler.config.prediction_type == "epsilon":
        return (x_t - s * v) / a
    return a * x_t - s * v


def _dsm_target(teacher, x0, eps, ab):
    """The denoising-score-matching target in the teacher's prediction type: v = α ε − σ x0, or ε."""
    if teacher.scheduler.config.prediction_type == "epsilon":
        return eps
    return ab.sqrt() * eps - (1 - ab).sqrt() * x0


@pytest.mark.parametrize(("alpha", "fake_cfg"), [(1.2, None), (1.0, 1.0)])
def test_sid_generator_loss_gradient_and_fake_dsm_match_a_float64_oracle(model, monkeypatch, alpha, fake_cfg):
    """Golden values of one whole SiD step on a tiny teacher, rebuilt in float64 from the UNets themselves (the
    diffusers ᾱ table, CFG and the v → x̂0 conversion by hand), with a perturbed fake denoiser so that f_φ ≠ f_ψ:
    - the generator loss mean_b Σ (f_φ − f_ψ)ᵀ[(f_φ − x_g) − α(f_φ − f_ψ)] / sg(mean|x_g − f_φ|) at x_t of the
      generator sample, f_φ the teacher with CFG w = 4 and f_ψ the fake with CFG fake_cfg (None: 4),
    - its gradient in x_g, through x_g and both denoisers' inputs (the normaliser held constant),
    - the fake's DSM loss: its guided v-output against v = α ε − σ x on fresh generator samples at t ~ U[0, T).
    Breaking the sign, α, the stop-gradient on the normaliser, the fake's guidance or its DSM target fails it."""
    import copy

    from dreamdistill.distill import sid
    from dreamdistill.distill.data import training_prompts
    from dreamdistill.distill.fake_score import fake_score

    def perturbed_fake(teacher, kind, rank=16):
        fake = fake_score(teacher, kind, rank)
        g = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for p in fake.parameters():
                p.add_(0.05 * p.abs().mean() * torch.randn(p.shape, generator=g))
        return fake

    recorded = {}
    original = sid.sid_generator_loss
    monkeypatch.setattr(sid, "sid_generator_loss", lambda **kw: recorded.update(kw) or original(**kw))
    monkeypatch.setattr(sid, "fake_score", perturbed_fake)
    config = _distill_config("sid")
    config.sid.t_range, config.sid.alpha, config.sid.fake_cfg = (0.3, 0.7), alpha, fake_cfg
    run = OneStepRun()
    sid.distill_sid(run, model, config)
    ctx = run.contexts["sid"]
    w_fake = fake_cfg or 4.0
    teacher64 = copy.deepcopy(model.unet).double()
    fake64 = copy.deepcopy(ctx.models["fake"]).double().requires_grad_(False)
    prompts = training_prompts(model, None)
    T = model.schedule.num_train_timesteps
    top = torch.full((2,), T - 1)

    # the fake's DSM step (the first four draws): guided output vs the v target on a fresh generator sample
    index, noise, t, eps = ctx.draws[:4]
    text = model.encode_text([prompts[i] for i in index.tolist()])
    with torch.no_grad():
        x = _double_x0(model, teacher64, noise.double(), top, text, 1.0)  # a fresh generator is the teacher
        ab = alpha_bar(model, t)
        x_t = ab.sqrt() * x + (1 - ab).sqrt() * eps.double()
        v = fake64(x_t, t, encoder_hidden_states=text.double()).sample
        v_uncond = fake64(x_t, t, encoder_hidden_states=model.uncond_embedding(2).double()).sample
        v = v_uncond + w_fake * (v - v_uncond)
        expected_dsm = (v - _dsm_target(model, x, eps.double(), ab)).square().mean()
    torch.testing.assert_close(ctx.losses["fake"].double(), expected_dsm, atol=1e-6, rtol=1e-4)

    # the generator loss and its gradient in x_g (the last four draws)
    index, noise, t_offset, eps = ctx.draws[-4:]
    text = model.encode_text([prompts[i] for i in index.tolist()])
    with torch.no_grad():
        x0 = _double_x0(model, teacher64, noise.double(), top, text, 1.0)
    x_g = x0.clone().requires_grad_(True)
    t = int(0.3 * T) + t_offset
    ab = alpha_bar(model, t)
    x_t = ab.sqrt() * x_g + (1 - ab).sqrt() * eps.double()
    real = _double_x0(model, teacher64, x_t, t, text, 4.0)
    fake = _double_x0(model, fake64, x_t, t, text, w_fake)
    n = (x_g - real).abs().flatten(1).mean(dim=1).detach()
    r = real - fake
    expected = ((r * ((real - x_g) - alpha * r)).flatten(1).sum(dim=1) / n).mean()
    (expected_grad,) = torch.autograd.grad(expected, x_g)
    loss = ctx.losses["generator"]
    (grad,) = torch.autograd.grad(loss, recorded["x"])
    assert r.abs().mean() > 1e-3  # the perturbed fake differs from the teacher: the terms in r are exercised
    torch.testing.assert_close(recorded["x"].detach().double(), x0, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(loss.double(), expected.detach(), atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(grad.double(), expected_grad, atol=1e-4 * expected_grad.abs().max(), rtol=1e-3)


def test_sid_fake_warmup_steps_update_only_the_fake(pixel):
    """During sid.fake_warmup_steps the step trains the fake denoiser alone (no generator loss is handed over)."""
    from dreamdistill.distill import sid

    config = _distill_config("sid")
    config.sid.fake_warmup_steps = 1
    run = OneStepRun()
    sid.distill_sid(run, pixel, config)
    assert set(run.contexts["sid"].losses) == {"fake"}


@dataclass
class TrainingContext(RecordingContext):
    """A recording context whose ``update`` takes a real optimiser step."""

    def update(self, name, loss):
        optimizer = self.optimizers[name]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        self.losses[name] = loss


class TrainingRun(OneStepRun):
    """Like OneStepRun, but each phase takes ``steps`` real Adam steps."""

    def __init__(self, steps):
        super().__init__()
        self.steps = steps

    def phase(self, name, modules, step_fn, learning_rates=None, betas=None, average=None):
        optimizers = {k: torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-3)
                      for k, m in modules.items()}
        for step in range(self.steps):
            self.contexts[name] = ctx = TrainingContext(step=step, generator=torch.Generator().manual_seed(step),
                                                        models=modules, device=torch.device("cpu"),
                                                        accelerator=None, optimizers=optimizers)
            step_fn(ctx)
        return modules


def test_sid_fake_denoiser_and_generator_train(pixel):
    """A few SiD steps on a tiny teacher change the fake denoiser's weights (it trains on generator samples) and
    the generator's."""
    from dreamdistill.distill import sid

    before = {k: v.clone() for k, v in pixel.unet.state_dict().items()}
    run = TrainingRun(3)
    config = _distill_config("sid")
    config.sid.fake_steps = 2
    trained = sid.distill_sid(run, pixel, config)
    fake_changed = 0
    for name, value in run.contexts["sid"].models["fake"].state_dict().items():
        fake_changed += not torch.equal(value, before[name])
    generator_changed = sum(not torch.equal(v, before[k]) for k, v in trained.unet.state_dict().items())
    assert fake_changed > 10 and generator_changed > 10, (fake_changed, generator_changed)
