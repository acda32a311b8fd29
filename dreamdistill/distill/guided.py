"""Guided distillation (Meng et al. 2023): a student that takes the guidance weight w as an input, then PD on it.

Stage 1: a student UNet conditioned on w matches the classifier-free-guided teacher,
x̂0_student(x_t; y, w) ≈ x̂0_u + w (x̂0_c − x̂0_u), over w ~ U(w_range) and all timesteps, with one
network call instead of two. w enters like the timestep: a sinusoidal embedding of 1000·w
(``teacher.guidance_embedding``; for a latent teacher diffusers' own embedding of w − 1, so that
``StableDiffusionPipeline(guidance_scale=w)`` feeds the saved student the same input) added through diffusers'
``time_cond_proj_dim`` projection, which is zero-initialised, so the student starts exactly as the teacher's
conditional model.
Stage 2: progressive distillation (``progressive.py``, the ``pd`` settings) with the stage-1
student as the first teacher and w-conditioned students, w drawn per sample from the same range.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated

import torch
from torch import nn

from dreamdistill.config import Range
from dreamdistill.diffusion.teacher import Teacher
from dreamdistill.distill.data import PairSet
from dreamdistill.distill.loop import Run, StepContext
from dreamdistill.distill.progressive import pd_weight, progressive_rounds, weighted_x0_loss
from dreamdistill.distill.student import TrainedStudent, new_student, save_student, unwrap
from dreamdistill.errors import DreamDistillError

if TYPE_CHECKING:
    from dreamdistill.distill import DistillConfig


@dataclass
class GuidedConfig:
    """Guided distillation settings (stage 2 uses the ``pd`` section)."""

    w_range: Annotated[tuple[float, float], Range(0, 100, ordered=True)] = (1.0, 8.0)
    """Guidance weights the student learns, drawn uniformly (1: the conditional model)."""
    embedding_dim: Annotated[int, Range(2, 4096, multiple_of=2)] = 256
    """Size of the sinusoidal w-embedding fed to ``time_cond_proj_dim``."""
    stage1_steps: Annotated[int | None, Range(1, 10**8)] = None
    """Optimiser steps of stage 1 (None: loop.steps)."""


def sample_guidance(ctx: StepContext, batch: int, w_range: tuple[float, float]) -> torch.Tensor:
    """w ~ U(w_min, w_max) per sample [B]."""
    low, high = w_range
    return low + (high - low) * ctx.rand(batch)


def guided_unet(unet: nn.Module, embedding_dim: int) -> nn.Module:
    """The teacher's UNet plus a zero-initialised w-projection (``time_cond_proj_dim``): equal to it at w-any."""
    from diffusers import UNet2DConditionModel

    base = unwrap(unet)
    student = UNet2DConditionModel.from_config({**base.config, "time_cond_proj_dim": embedding_dim})
    missing, unexpected = student.load_state_dict(base.state_dict(), strict=False)
    if unexpected or set(missing) != {"time_embedding.cond_proj.weight"}:
        raise DreamDistillError(f"cannot add a guidance input to this UNet (missing {missing}, unexpected "
                                f"{unexpected}); guided distillation needs a UNet without time_cond_proj_dim")
    torch.nn.init.zeros_(student.time_embedding.cond_proj.weight)
    return student.float().requires_grad_(True).train()


def guided_stage1_loss(teacher: Teacher, student: nn.Module, x0: torch.Tensor, text: torch.Tensor,
                       t: torch.Tensor, eps: torch.Tensor, w: torch.Tensor, parameterisation) -> torch.Tensor:
    """Stage-1 loss, eq. E w(λ_t) ‖x̂0_θ(x_t; y, w) − [x̂0_u + w (x̂0_c − x̂0_u)](x_t)‖², x_t = α_t x0 + σ_t ε."""
    from dreamdistill.diffusion.schedule import add_noise

    alpha, sigma = teacher.schedule.alpha_sigma(t)
    x_t = add_noise(x0=x0, eps=eps, alpha=alpha, sigma=sigma)
    with torch.no_grad():
        target = teacher.denoiser(teacher.unet, "cfg")(x_t, t, text, w).x0
    prediction = teacher.denoiser(student, "embedded")(x_t, t, text, w).x0
    return weighted_x0_loss(prediction, target, pd_weight(teacher.schedule.log_snr(t), parameterisation))


def _stage1_step(teacher: Teacher, data: PairSet, config: DistillConfig):
    batch_size, num_train = config.loop.batch_size, teacher.schedule.num_train_timesteps

    def step(ctx: StepContext) -> dict[str, float]:
        x0, prompts, _ = data.batch(ctx.randint(len(data), batch_size), ctx.device)
        t = ctx.randint(num_train, batch_size).to(ctx.device)
        w = sample_guidance(ctx, batch_size, config.guided.w_range)
        loss = guided_stage1_loss(teacher, ctx.models["student"], x0, teacher.encode_text(prompts), t,
                                  ctx.randn(*x0.shape), w, config.pd.parameterisation)
        ctx.update("student", loss)
        return {"loss": loss.item()}

    return step


def distill_guided(run: Run, teacher: Teacher, config: DistillConfig) -> TrainedStudent:
    """Stage 1 (saved to WORK_DIR/guided-stage1 as a teacher folder), then PD on it down to pd.student_steps.

    With ``student.lora_rank`` > 0 both stages train one LoRA adapter on the teacher's weights, plus the
    w-projection (which a LoRA file cannot hold: a latent teacher's LoRA student keeps it beside the adapter)."""
    from dreamdistill.distill.data import clean_images, training_prompts
    from dreamdistill.distill.student import student_schedule

    data = clean_images(run, teacher, training_prompts(teacher, config.prompts), config.cfg, config.data)
    student = guided_unet(teacher.unet, config.guided.embedding_dim)
    if config.student.lora_rank:  # the teacher's weights frozen: a LoRA and the w-projection train
        student = new_student(student, config.student)
    stage1_run = run
    if config.guided.stage1_steps is not None:
        stage1_run = _with_steps(run, config.guided.stage1_steps)
    stage1 = stage1_run.phase("guided-stage1", {"student": student}, _stage1_step(teacher, data, config))["student"]
    if run.is_main:
        save_student(teacher, stage1, run.work_dir / "guided-stage1", steps=config.pd.teacher_steps, cfg=config.cfg,
                     method="guided-stage1", guidance_embedding=True)
    run.wait()
    w_range = config.guided.w_range
    unet = progressive_rounds(run, teacher, student_schedule(teacher), (stage1, "embedded"), "embedded", data,
                              lambda ctx, batch: sample_guidance(ctx, batch, w_range), config.pd,
                              prefix="guided-pd", copy_student=lambda unet: new_student(unet, config.student))
    return TrainedStudent(unet, config.pd.student_steps, cfg=config.cfg, guidance_embedding=True)


def _with_steps(run: Run, steps: int) -> Run:
    """The same run with another number of steps per phase."""
    from copy import copy
    from dataclasses import replace

    other = copy(run)
    other.config = replace(run.config, steps=steps)
    return other
