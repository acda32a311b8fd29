"""Knowledge distillation (Luhman & Luhman 2021): regress a one-step student onto cached teacher ODE solutions.

The teacher's deterministic DDIM sampler (``data.rollout_steps`` steps, CFG weight ``cfg``) maps
noise z to an image, Solver_{1→0}(z); a student initialised from the teacher learns that map in one
network call, G(z; y) = x̂0(z, T − 1; y), from ``data.size`` cached (z, y, Solver(z)) triples.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch

from dreamdistill.diffusion.teacher import Teacher
from dreamdistill.distill.data import PairSet
from dreamdistill.distill.loop import Run, StepContext
from dreamdistill.distill.student import TrainedStudent, check_one_step_teacher, generate, trainable_copy

if TYPE_CHECKING:
    from dreamdistill.distill import DistillConfig


def kd_loss(student_x0: torch.Tensor, teacher_x0: torch.Tensor) -> torch.Tensor:
    """KD loss, eq. ‖G(x_1) − Solver_{1→0}(x_1)‖² (mean over pixels and batch)."""
    return (student_x0.float() - teacher_x0.float()).square().mean()


def _kd_step(teacher: Teacher, pairs: PairSet, timestep: int, batch_size: int):
    def step(ctx: StepContext) -> dict[str, float]:
        x0, prompts, noise = pairs.batch(ctx.randint(len(pairs), batch_size), ctx.device)
        loss = kd_loss(generate(teacher, ctx.models["student"], noise, teacher.encode_text(prompts), timestep), x0)
        ctx.update("student", loss)
        return {"loss": loss.item()}

    return step


def distill_kd(run: Run, teacher: Teacher, config: DistillConfig) -> TrainedStudent:
    """Cache teacher rollouts, then regress the one-step student onto them."""
    from dreamdistill.distill.data import teacher_rollouts, training_prompts
    from dreamdistill.distill.student import student_schedule

    check_one_step_teacher(teacher)
    pairs = teacher_rollouts(run, teacher, training_prompts(teacher, config.prompts), config.cfg, config.data)
    timestep = int(student_schedule(teacher).timesteps(1)[0])
    student = run.phase("kd", {"student": trainable_copy(teacher.unet)},
                        _kd_step(teacher, pairs, timestep, config.loop.batch_size), average="student")["student"]
    return TrainedStudent(student, steps=1, cfg=1.0)
