"""Progressive distillation (Salimans & Ho 2022): halve the DDIM steps round by round, N → N/2 → … → K.

Notation (DESIGN.md): x_t = α_t x0 + σ_t ε; ``s`` is the *noisier* time a student step starts from,
``t`` the time it lands on, and ``u`` the teacher's intermediate time (s > u > t; t = −1 is the
sampler's final ᾱ). In a round the K-step student learns to do in one DDIM step s → t what the
2K-step teacher does in two, s → u → t. The student's x̂0 target is the closed form

    x̃ = (σ_s x̃_t − σ_t x_s) / (α_t σ_s − α_s σ_t),

the unique x̂0 for which DDIM_{s→t}(x_s; x̂0) = (σ_t/σ_s) x_s + α_s (α_t/α_s − σ_t/σ_s) x̂0 lands on the
teacher's two-step result x̃_t. Each student starts from its teacher's weights and becomes the next
round's teacher. Its grid is ``schedule.timesteps(K)`` (trailing spacing), the grid that
``Teacher.sample(steps=K)`` walks, so a saved student samples correctly with ``--steps K``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Literal

import torch

from dreamdistill.config import Range
from dreamdistill.diffusion.ddim import ddim_transition
from dreamdistill.diffusion.denoiser import Denoiser, GuidanceMode
from dreamdistill.diffusion.schedule import NoiseSchedule, _shape_like, add_noise
from dreamdistill.diffusion.teacher import Teacher
from dreamdistill.distill.data import PairSet
from dreamdistill.distill.loop import Run, StepContext
from dreamdistill.distill.student import TrainedStudent, trainable_copy
from dreamdistill.errors import DreamDistillError

if TYPE_CHECKING:
    from dreamdistill.distill import DistillConfig

X0Function = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(x_t [B, ...], t [B] integer timesteps) -> x̂0 [B, ...]."""


@dataclass
class PDConfig:
    """Progressive distillation settings (also stage 2 of guided distillation)."""

    teacher_steps: Annotated[int, Range(2, 1000)] = 64
    """DDIM steps N of the first teacher; every round halves them."""
    student_steps: Annotated[int, Range(1, 1000)] = 4
    """Steps K of the final student; teacher_steps / student_steps must be a power of two (≥ 2)."""
    parameterisation: Literal["x", "v"] = "v"
    """Loss space. x: ‖x̂0 − x̃‖² weighted by max(SNR_s, 1) (truncated SNR); v: ‖v̂ − ṽ‖², which is the
    x-space loss weighted by 1 + SNR_s (Salimans & Ho 2022, §4). The network keeps the teacher's
    output type either way, so the student folder loads like the teacher."""


# ------------------------------------------------------------------------------------------- pure math
def pd_target(*, x_s: torch.Tensor, x_t: torch.Tensor, alpha_s, sigma_s, alpha_t, sigma_t) -> torch.Tensor:
    """PD target, eq. x̃ = (σ_s x̃_t − σ_t x_s)/(α_t σ_s − α_s σ_t): the x̂0 whose DDIM step s→t lands on x̃_t."""
    numerator = _shape_like(sigma_s, x_s) * x_t - _shape_like(sigma_t, x_s) * x_s
    return numerator / _shape_like(alpha_t * sigma_s - alpha_s * sigma_t, x_s)


def pd_weight(log_snr: torch.Tensor, parameterisation: Literal["x", "v"]) -> torch.Tensor:
    """x-space loss weight w(λ): max(SNR, 1) (truncated SNR) for x, 1 + SNR (= the v-loss) for v; SNR = e^λ."""
    snr = log_snr.double().exp()
    if parameterisation == "x":
        return snr.clamp(min=1.0)
    if parameterisation == "v":
        return 1.0 + snr
    raise ValueError(f"unknown parameterisation {parameterisation!r}; use x or v")


def weighted_x0_loss(x0: torch.Tensor, target: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Distillation loss E_b[w(λ_b) · mean_pixels (x̂0 − x̃)²]."""
    per_sample = (x0.float() - target.float()).square().flatten(1).mean(dim=1)
    return (weight.to(per_sample) * per_sample).mean()


def teacher_two_steps(x0_fn: X0Function, x_s: torch.Tensor, s: torch.Tensor, u: torch.Tensor, t: torch.Tensor,
                      schedule: NoiseSchedule) -> torch.Tensor:
    """x̃_t = DDIM_{u→t}(x_u; x̂0(x_u, u)) with x_u = DDIM_{s→u}(x_s; x̂0(x_s, s)): two teacher steps."""
    alpha_s, sigma_s = schedule.alpha_sigma(s)
    alpha_u, sigma_u = schedule.alpha_sigma(u)
    alpha_t, sigma_t = schedule.alpha_sigma(t)
    x_u = ddim_transition(x_s=x_s, x0=x0_fn(x_s, s), alpha_s=alpha_s, sigma_s=sigma_s, alpha_t=alpha_u,
                          sigma_t=sigma_u)
    return ddim_transition(x_s=x_u, x0=x0_fn(x_u, u), alpha_s=alpha_u, sigma_s=sigma_u, alpha_t=alpha_t,
                           sigma_t=sigma_t)


def pd_timesteps(schedule: NoiseSchedule, student_steps: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(s, u, t) [K] for the K-step student: its own sampler's steps s → t and the teacher's midpoints u.

    s is ``schedule.timesteps(K)`` and t the next entry (−1 after the last). u is the 2K-step grid's
    entry between them when that grid interleaves the K-step one (trailing spacing), else the integer midpoint.
    """
    s = schedule.timesteps(student_steps)
    t = torch.cat([s[1:], torch.tensor([-1])])
    fine = schedule.timesteps(2 * student_steps)
    u = fine[1::2] if torch.equal(fine[0::2], s) else torch.div(s + t.clamp(min=0), 2, rounding_mode="floor")
    if not bool(((u < s) & (u > t)).all()):
        raise DreamDistillError(f"{student_steps}-step student: no teacher timestep between some student steps; "
                                "use fewer student steps")
    return s, u, t


def pd_rounds(teacher_steps: int, student_steps: int) -> list[tuple[int, int]]:
    """[(2K, K), …]: the rounds from ``teacher_steps`` down to ``student_steps``, halving each time."""
    if student_steps < 1 or teacher_steps <= student_steps or teacher_steps % student_steps:
        raise DreamDistillError(f"pd.teacher_steps ({teacher_steps}) must be a multiple of pd.student_steps "
                                f"({student_steps}), larger than it, by a power of two")
    ratio = teacher_steps // student_steps
    if ratio & (ratio - 1):
        raise DreamDistillError(f"pd.teacher_steps / pd.student_steps = {ratio} must be a power of two "
                                "(each round halves the steps)")
    rounds, steps = [], teacher_steps
    while steps > student_steps:
        rounds.append((steps, steps // 2))
        steps //= 2
    return rounds


# ------------------------------------------------------------------------------------------- training
GuidanceSampler = Callable[[StepContext, int], "float | torch.Tensor"]
"""(step context, batch size) -> the guidance weight(s) w of the step's samples."""


def _round_step(teacher: Teacher, schedule: NoiseSchedule, current: Denoiser, student_guidance: GuidanceMode,
                data: PairSet, sample_w: GuidanceSampler, student_steps: int, config: PDConfig, batch_size: int):
    """The optimiser step of one round: teacher two steps s→u→t, student one step s→t."""
    s_grid, u_grid, t_grid = pd_timesteps(schedule, student_steps)

    def step(ctx: StepContext) -> dict[str, float]:
        x0, prompts, _ = data.batch(ctx.randint(len(data), batch_size), ctx.device)
        text = teacher.encode_text(prompts)
        which = ctx.randint(student_steps, batch_size)
        s, u, t = (grid[which].to(ctx.device) for grid in (s_grid, u_grid, t_grid))
        w = sample_w(ctx, batch_size)
        alpha_s, sigma_s = schedule.alpha_sigma(s)
        alpha_t, sigma_t = schedule.alpha_sigma(t)
        x_s = add_noise(x0=x0, eps=ctx.randn(*x0.shape), alpha=alpha_s, sigma=sigma_s)
        with torch.no_grad():
            def teacher_x0(x, tau):
                return current(x, tau, text, w).x0

            x_t = teacher_two_steps(teacher_x0, x_s, s, u, t, schedule)
            target = pd_target(x_s=x_s, x_t=x_t, alpha_s=alpha_s, sigma_s=sigma_s, alpha_t=alpha_t, sigma_t=sigma_t)
        x0_student = teacher.denoiser(ctx.models["student"], student_guidance)(x_s, s, text, w).x0
        loss = weighted_x0_loss(x0_student, target, pd_weight(schedule.log_snr(s), config.parameterisation))
        ctx.update("student", loss)
        return {"loss": loss.item()}

    return step


def progressive_rounds(run: Run, teacher: Teacher, schedule: NoiseSchedule, first: tuple[torch.nn.Module, GuidanceMode],
                       student_guidance: GuidanceMode, data: PairSet, sample_w: GuidanceSampler, config: PDConfig,
                       prefix: str = "pd",
                       copy_student: Callable[[torch.nn.Module], torch.nn.Module] = trainable_copy) -> torch.nn.Module:
    """Run every round from ``config.teacher_steps`` to ``config.student_steps``; returns the last student's UNet.

    ``first`` is the round-1 teacher as (UNet, guidance mode): the CFG teacher, or a guidance-embedded stage-1
    student; each student starts as ``copy_student`` of its teacher's UNet (a full trainable copy, or the same
    LoRA student training on, see ``student.new_student``) and is called with ``student_guidance``.
    """
    unet, guidance = first
    for teacher_steps, student_steps in pd_rounds(config.teacher_steps, config.student_steps):
        step = _round_step(teacher, schedule, teacher.denoiser(unet, guidance), student_guidance, data, sample_w,
                           student_steps, config, run.config.batch_size)
        phase = f"{prefix}-{teacher_steps}to{student_steps}"
        unet = run.phase(phase, {"student": copy_student(unet)}, step, average="student")["student"]
        guidance = student_guidance
    return unet


def distill_pd(run: Run, teacher: Teacher, config: DistillConfig) -> TrainedStudent:
    """Progressive distillation of the CFG teacher (weight ``cfg``) into a K-step student with guidance baked in."""
    from dreamdistill.distill.data import clean_images, training_prompts
    from dreamdistill.distill.student import new_student, student_schedule

    cfg = config.cfg
    data = clean_images(run, teacher, training_prompts(teacher, config.prompts), cfg, config.data)
    unet = progressive_rounds(run, teacher, student_schedule(teacher), (teacher.unet, "cfg"), "none", data,
                              lambda ctx, batch: cfg, config.pd,
                              copy_student=lambda unet: new_student(unet, config.student))
    return TrainedStudent(unet, config.pd.student_steps, cfg=1.0)
