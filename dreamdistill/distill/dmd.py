"""Distribution matching distillation (Yin et al. 2024), i.e. 2D VSD with a one-step generator.

A one-step generator G(z; y) = x̂0 of a teacher-initialised UNet at t = T − 1 (pure noise in) is
trained to minimise KL(p_G ‖ p_real). Its gradient at a generated image x, noised to x_t at a random
t, is the difference of two denoisers: the real one (the frozen CFG teacher) and a fake one (a
LoRA on a copy of the teacher, or a full copy) that tracks the generator's own distribution by
denoising score matching on generator samples, with several fake steps per generator step.
In x0 form (DMD eq. 7–8):

    grad = (x̂0_fake(x_t) − x̂0_real(x_t)) / mean_pixels |x − x̂0_real(x_t)|,

which is (σ_t/α_t)(ε̂_real − ε̂_fake) up to the normaliser (x̂0 = (x_t − σ_t ε̂)/α_t), i.e.
(σ_t²/α_t)(s_fake − s_real) with scores s = −ε/σ: descending it moves x towards the real denoiser's x̂0
and away from the fake one's (the VSD direction ε̂_teacher − ε̂_critic). The normaliser is the one in
DMD2's released code (per sample, the mean absolute gap between x and the real x̂0), not DMD's
paper weighting; the real score uses CFG (weight ``cfg``), the fake score none.
An optional regression loss ‖G(z_i) − x0_i‖² to cached teacher rollouts keeps the modes (DMD §3.3); like every
term here it lives in the teacher's model space (latents for a latent teacher: rollouts are never decoded).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import torch

from dreamdistill.config import Range
from dreamdistill.diffusion.schedule import add_noise
from dreamdistill.diffusion.teacher import Teacher
from dreamdistill.distill.fake_score import (
    LORA_TARGETS,
    FakeKind,
    draw_timesteps,
    fake_score,
    prompt_drawer,
    update_fake,
)
from dreamdistill.distill.loop import Run, StepContext
from dreamdistill.distill.student import TrainedStudent, check_one_step_teacher, generate, new_student

if TYPE_CHECKING:
    from dreamdistill.distill import DistillConfig


@dataclass
class DMDConfig:
    """Distribution matching distillation settings."""

    fake_steps: Annotated[int, Range(1, 100)] = 4
    """Fake-score updates per generator update (two time-scale updates)."""
    fake: FakeKind = "lora"
    """Fake score network: a LoRA (peft) on a frozen copy of the teacher UNet, or a fully trained copy."""
    lora_rank: Annotated[int, Range(1, 1024)] = 16
    """Rank of the fake score's LoRA."""
    lora_targets: tuple[str, ...] = LORA_TARGETS
    """UNet module names that get LoRA adapters (attention projections and ResNet convolutions)."""
    fake_learning_rate: Annotated[float | None, Range(0, 1, open_low=True)] = None
    """Learning rate of the fake score (None: loop.learning_rate)."""
    t_range: Annotated[tuple[float, float], Range(0, 1, ordered=True)] = (0.02, 0.98)
    """Fraction of [0, T) from which the distribution-matching timesteps are drawn."""
    regression_weight: Annotated[float, Range(0, 1e6)] = 0.25
    """Weight of the regression loss to cached teacher rollouts (0: off, no rollouts are computed)."""


# ------------------------------------------------------------------------------------------- pure math
def dmd_gradient(*, x: torch.Tensor, x0_real: torch.Tensor, x0_fake: torch.Tensor) -> torch.Tensor:
    """DMD gradient, eq. (x̂0_fake − x̂0_real) / mean|x − x̂0_real| per sample (Yin et al. 2024, eq. 7–8)."""
    normaliser = (x - x0_real).abs().flatten(1).mean(dim=1).clamp(min=1e-6)
    grad = (x0_fake - x0_real) / normaliser.reshape(-1, *([1] * (x.dim() - 1)))
    return torch.nan_to_num(grad)


def gradient_loss(x: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """Surrogate ½‖x − sg(x − grad)‖² (mean over elements), whose gradient in x is grad / numel."""
    return 0.5 * (x.float() - (x - grad).detach().float()).square().mean()


def _dmd_step(teacher: Teacher, prompts: list[str], pairs, timestep: int, config: DistillConfig):
    batch_size, dmd = config.loop.batch_size, config.dmd
    num_train = teacher.schedule.num_train_timesteps
    real = teacher.denoiser(teacher.unet, "cfg")
    shape = teacher.model_shape
    draw_prompts = prompt_drawer(teacher, prompts, batch_size)

    def step(ctx: StepContext) -> dict[str, float]:
        generator, fake = ctx.models["generator"], ctx.models["fake"]
        for _ in range(dmd.fake_steps):  # the fake score follows the generator's current distribution
            fake_loss = update_fake(ctx, teacher, draw_prompts, timestep, batch_size)

        text = draw_prompts(ctx)
        noise = ctx.randn(batch_size, *shape)
        if pairs is not None:  # one generator call for both losses (DDP allows one forward per backward)
            pair_x0, pair_prompts, pair_noise = pairs.batch(ctx.randint(len(pairs), batch_size), ctx.device)
            noise, text = torch.cat([noise, pair_noise]), torch.cat([text, teacher.encode_text(pair_prompts)])
        x_all = generate(teacher, generator, noise, text, timestep)
        x, text = x_all[:batch_size], text[:batch_size]
        t = draw_timesteps(ctx, dmd.t_range, num_train, batch_size)
        alpha, sigma = teacher.schedule.alpha_sigma(t)
        x_t = add_noise(x0=x.detach(), eps=ctx.randn(batch_size, *shape), alpha=alpha, sigma=sigma)
        with torch.no_grad():
            x0_real = real(x_t, t, text, config.cfg).x0
            x0_fake = teacher.denoiser(fake, "none")(x_t, t, text).x0
        loss = dmd_loss = gradient_loss(x, dmd_gradient(x=x.detach(), x0_real=x0_real, x0_fake=x0_fake))
        losses = {"dmd": dmd_loss.item(), "fake": fake_loss.item()}
        if pairs is not None:
            regression = (x_all[batch_size:] - pair_x0).square().mean()
            loss = loss + dmd.regression_weight * regression
            losses["regression"] = regression.item()
        ctx.update("generator", loss)
        return losses

    return step


def distill_dmd(run: Run, teacher: Teacher, config: DistillConfig) -> TrainedStudent:
    """Train the one-step generator and its fake score together; returns the generator."""
    from dreamdistill.distill.data import teacher_rollouts, training_prompts
    from dreamdistill.distill.student import student_schedule

    check_one_step_teacher(teacher)
    prompts = training_prompts(teacher, config.prompts)
    pairs = None
    if config.dmd.regression_weight > 0:
        pairs = teacher_rollouts(run, teacher, prompts, config.cfg, config.data)
    timestep = int(student_schedule(teacher).timesteps(1)[0])
    modules = {"generator": new_student(teacher.unet, config.student),
               "fake": fake_score(teacher, config.dmd.fake, config.dmd.lora_rank, config.dmd.lora_targets)}
    rates = {"fake": config.dmd.fake_learning_rate} if config.dmd.fake_learning_rate else None
    trained = run.phase("dmd", modules, _dmd_step(teacher, prompts, pairs, timestep, config), rates,
                        average="generator")
    return TrainedStudent(trained["generator"], steps=1, cfg=1.0)
