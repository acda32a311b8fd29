"""Score identity Distillation (Zhou et al. 2024): a one-step generator trained through both score networks.

Like DMD, a teacher-initialised one-step generator G(z; y) = x̂0 at t = T − 1 is paired with a fake denoiser
f_ψ trained by denoising score matching on the generator's own samples (``fake_steps`` updates per generator
update). Unlike DMD, the generator's loss is a function of x̂0 predictions that stays differentiable *through*
the frozen real denoiser f_φ (the CFG teacher) and the fake one (whose weights it does not update): with
x_t = α_t x_g + σ_t ε, the generator loss per sample is (SiD eq. 21, x̂0 form, DESIGN.md)

    L = [(1 − α) ‖f_φ − f_ψ‖² + (f_φ − f_ψ)ᵀ (f_ψ − x_g)] / mean_pixels |x_g − f_φ|
      = (f_φ − f_ψ)ᵀ [(f_φ − x_g) − α (f_φ − f_ψ)] / mean_pixels |x_g − f_φ|,

with the per-sample normaliser (held constant) of the authors' code, which plays the role of the paper's ω(t).
α = 1 drops the first term.

Text-conditional with CFG, as in SiD-LSG (Zhou et al. 2024b, the authors' text-to-image code): the fake
denoiser is guided with the real one's weight (``fake_cfg``, κ1 = κ2 = κ3 = κ4) both in its DSM updates and in
the generator loss, so that a fresh fake *equals* the real denoiser and f_φ − f_ψ starts at zero; α = 1; Adam
with β1 = 0 and one learning rate for both networks. The unguided fake of the first version started with
f_φ − f_ψ = (w − 1)(conditional − unconditional) ≠ 0, and α = 1.2 rewards the generator for (α − 1)‖f_φ − f_ψ‖²:
the loss fell to −580, mean|f_φ − f_ψ| tripled and KID rose from 193 to 450 in 40 steps (toy teacher, batch 8).
KID at step 40 of each change: α = 1.2 with the guided fake 224 (Adam β1 0.9) and 195 (β1 0); α = 1 with the
unguided fake 185; both 130 (benchmarks/results/sid_diagnosis.json).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import torch
from torch import nn

from dreamdistill.config import Range
from dreamdistill.diffusion.schedule import add_noise
from dreamdistill.diffusion.teacher import Teacher
from dreamdistill.distill.fake_score import FakeKind, draw_timesteps, fake_score, prompt_drawer, update_fake
from dreamdistill.distill.loop import Run, StepContext
from dreamdistill.distill.student import TrainedStudent, check_one_step_teacher, generate, trainable_copy, unwrap

if TYPE_CHECKING:
    from dreamdistill.distill import DistillConfig


@dataclass
class SiDConfig:
    """Score identity distillation settings."""

    alpha: Annotated[float, Range(0, 10)] = 1.0
    """α of the generator loss (SiD-LSG's text-to-image runs use 1; the SiD paper's unconditional default 1.2
    measured worse here at a CPU budget, see the module docstring)."""
    fake_steps: Annotated[int, Range(1, 100)] = 1
    """Fake-denoiser updates per generator update (SiD used 1)."""
    fake: FakeKind = "copy"
    """Fake denoiser: a fully trained copy of the teacher UNet (SiD), or LoRA adapters on a frozen copy."""
    lora_rank: Annotated[int, Range(1, 1024)] = 16
    """Rank of the fake denoiser's LoRA (fake = lora)."""
    fake_learning_rate: Annotated[float | None, Range(0, 1, open_low=True)] = None
    """Learning rate of the fake denoiser (None: loop.learning_rate)."""
    t_range: Annotated[tuple[float, float], Range(0, 1, ordered=True)] = (0.02, 0.8)
    """Fraction of [0, T) from which the generator loss's timesteps are drawn (SiD: t_max = 800 of 1000)."""
    fake_cfg: Annotated[float | None, Range(0, 100)] = None
    """Guidance weight of the fake denoiser, in its DSM updates and in the generator loss (SiD-LSG's κ1 = κ2 = κ3;
    None: the real denoiser's ``cfg``, so that a fresh fake equals the real one; 1: conditional only)."""
    adam_beta1: Annotated[float, Range(0, 1, open_high=True)] = 0.0
    """Adam's β1 for both networks (0 as in the SiD code; β2 = 0.999)."""
    fake_warmup_steps: Annotated[int, Range(0, None)] = 0
    """Steps at the start that update only the fake denoiser (the generator waits; counted in loop.steps)."""


def sid_generator_loss(*, x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor,
                       alpha: float) -> torch.Tensor:
    """SiD generator loss, eq. (f_φ − f_ψ)ᵀ[(f_φ − x_g) − α(f_φ − f_ψ)] / sg(mean|x_g − f_φ|), summed over
    elements and averaged over the batch. ``x0_real`` and ``x0_fake`` keep their graphs back to ``x``."""
    with torch.no_grad():
        normaliser = (x - x0_real).abs().flatten(1).mean(dim=1).clamp(min=1e-5)
    gap = x0_real - x0_fake
    per_sample = (gap * ((x0_real - x) - alpha * gap)).flatten(1).sum(dim=1)
    return (per_sample / normaliser).mean()


@contextlib.contextmanager
def frozen(module: nn.Module):
    """Within this context ``module``'s trainable parameters take no gradient (inputs still do)."""
    trainable = [p for p in module.parameters() if p.requires_grad]
    for p in trainable:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in trainable:
            p.requires_grad_(True)


def _sid_step(teacher: Teacher, prompts: list[str], timestep: int, config: DistillConfig):
    batch_size, sid = config.loop.batch_size, config.sid
    num_train = teacher.schedule.num_train_timesteps
    real = teacher.denoiser(teacher.unet, "cfg")
    shape = teacher.model_shape
    draw_prompts = prompt_drawer(teacher, prompts, batch_size)

    fake_cfg = config.cfg if sid.fake_cfg is None else sid.fake_cfg

    def step(ctx: StepContext) -> dict[str, float]:
        generator, fake = ctx.models["generator"], ctx.models["fake"]
        for _ in range(sid.fake_steps):  # f_ψ follows the generator's current distribution (DSM on its samples)
            fake_loss = update_fake(ctx, teacher, draw_prompts, timestep, batch_size, fake_cfg)
        if ctx.step < sid.fake_warmup_steps:
            return {"fake": fake_loss.item()}

        text = draw_prompts(ctx)
        x = generate(teacher, generator, ctx.randn(batch_size, *shape), text, timestep)
        t = draw_timesteps(ctx, sid.t_range, num_train, batch_size)
        alpha, sigma = teacher.schedule.alpha_sigma(t)
        x_t = add_noise(x0=x, eps=ctx.randn(batch_size, *shape), alpha=alpha, sigma=sigma)
        # The generator's loss flows through f_ψ's input, never into ψ. f_ψ is called unwrapped: under DDP a
        # wrapped forward that gets no gradient would leave its gradient reduction waiting forever.
        with frozen(fake):
            x0_real = real(x_t, t, text, config.cfg).x0
            x0_fake = teacher.denoiser(unwrap(fake), "cfg")(x_t, t, text, fake_cfg).x0
        loss = sid_generator_loss(x=x, x0_real=x0_real, x0_fake=x0_fake, alpha=sid.alpha)
        ctx.update("generator", loss)
        gap = (x0_real - x0_fake).detach().abs().mean()
        return {"sid": loss.item(), "fake": fake_loss.item(), "gap": gap.item()}

    return step


def distill_sid(run: Run, teacher: Teacher, config: DistillConfig) -> TrainedStudent:
    """Train the one-step generator and its fake denoiser together; returns the generator."""
    from dreamdistill.distill.data import training_prompts
    from dreamdistill.distill.student import student_schedule

    check_one_step_teacher(teacher)
    prompts = training_prompts(teacher, config.prompts)
    timestep = int(student_schedule(teacher).timesteps(1)[0])
    fake = fake_score(teacher, config.sid.fake, config.sid.lora_rank)
    modules = {"generator": trainable_copy(teacher.unet), "fake": fake}
    rates = {"fake": config.sid.fake_learning_rate} if config.sid.fake_learning_rate else None
    betas = {key: (config.sid.adam_beta1, 0.999) for key in modules}
    trained = run.phase("sid", modules, _sid_step(teacher, prompts, timestep, config), rates, betas,
                        average="generator")
    return TrainedStudent(trained["generator"], steps=1, cfg=1.0)
