"""The fake denoiser of the one-step distillers (DMD, SiD): its network and its denoising-score-matching update.

It starts as the teacher and tracks the one-step generator's current distribution: each update draws fresh
generator samples (no gradient to the generator), noises them at t ~ U[0, T) and takes one DSM step in the
teacher's prediction type.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from dreamdistill.diffusion.dsm import denoising_loss
from dreamdistill.diffusion.schedule import add_noise
from dreamdistill.diffusion.teacher import Teacher
from dreamdistill.distill.loop import StepContext
from dreamdistill.distill.student import LORA_TARGETS, generate, trainable_copy

FakeKind = Literal["lora", "copy"]


def fake_score(teacher: Teacher, kind: FakeKind, lora_rank: int = 16,
               lora_targets: tuple[str, ...] = LORA_TARGETS) -> nn.Module:
    """The fake denoiser, initialised as the teacher: a full trainable copy, or LoRA adapters on a frozen one."""
    if kind == "copy":
        return trainable_copy(teacher.unet)
    from peft import LoraConfig

    fake = copy.deepcopy(teacher.unet).float().requires_grad_(False)
    fake.add_adapter(LoraConfig(r=lora_rank, lora_alpha=lora_rank, target_modules=list(lora_targets),
                                init_lora_weights=True))
    return fake.train()


def update_fake(ctx: StepContext, teacher: Teacher, draw_text: Callable[[StepContext], torch.Tensor],
                timestep: int, batch_size: int, guidance: float = 1.0) -> torch.Tensor:
    """One DSM step of ``ctx.models["fake"]`` on fresh samples of ``ctx.models["generator"]``; returns the loss.

    ``guidance`` ≠ 1 trains the fake's classifier-free-guided output (unconditional + w (conditional −
    unconditional), SiD-LSG's κ1) instead of its conditional one."""
    shape = teacher.model_shape
    text = draw_text(ctx)
    with torch.no_grad():
        x = generate(teacher, ctx.models["generator"], ctx.randn(batch_size, *shape), text, timestep)
    t = ctx.randint(teacher.schedule.num_train_timesteps, batch_size).to(ctx.device)
    eps = ctx.randn(batch_size, *shape)
    alpha, sigma = teacher.schedule.alpha_sigma(t)
    x_t = add_noise(x0=x, eps=eps, alpha=alpha, sigma=sigma)
    output = teacher.denoiser(ctx.models["fake"], "cfg").raw(x_t, t, text, guidance)
    loss = denoising_loss(output, x0=x, eps=eps, alpha=alpha, sigma=sigma, prediction_type=teacher.prediction_type)
    ctx.update("fake", loss)
    return loss


def prompt_drawer(teacher: Teacher, prompts: list[str], batch_size: int) -> Callable[[StepContext], torch.Tensor]:
    """A function drawing ``batch_size`` training prompts (with replacement) from a step's stream, encoded."""
    def draw(ctx: StepContext) -> torch.Tensor:
        return teacher.encode_text([prompts[i] for i in ctx.randint(len(prompts), batch_size).tolist()])

    return draw


def draw_timesteps(ctx: StepContext, t_range: tuple[float, float], num_train: int, batch_size: int) -> torch.Tensor:
    """Integer timesteps uniform in [low·T, high·T) (at least one value) from a step's stream, on its device."""
    low = int(t_range[0] * num_train)
    high = max(int(t_range[1] * num_train), low + 1)
    return (low + ctx.randint(high - low, batch_size)).to(ctx.device)
