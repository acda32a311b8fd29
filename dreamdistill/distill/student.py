"""Students: the one-step generator call, trainable copies of the teacher's UNet, and how a student is saved.

Every method predicts x̂0 through the one denoiser convention (``teacher.denoiser(unet, guidance)``,
see ``diffusion/denoiser.py``) and steps with DDIM (``diffusion/ddim.py``).
Students always sample on the *trailing* grid of the teacher's noise schedule (so a one-step
student starts at t = T − 1, pure noise); their saved scheduler says so, which makes
``dreamdistill sample --model STUDENT --steps K`` walk exactly the timesteps the student was trained on.
"""

from __future__ import annotations

import copy
import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from dreamdistill.diffusion.schedule import NoiseSchedule
from dreamdistill.diffusion.teacher import TEACHER_CONFIG_NAME, Teacher
from dreamdistill.errors import DreamDistillError


@dataclass
class TrainedStudent:
    """What a method hands back to be saved: the UNet and how to sample it."""

    unet: nn.Module
    steps: int
    """The student's number of DDIM steps (its folder's default_steps)."""
    cfg: float
    """Guidance weight to sample with (1.0: guidance baked in, one conditional pass per step)."""
    guidance_embedding: bool = False
    """The UNet takes w via ``timestep_cond`` (guided distillation)."""


def unwrap(module: nn.Module) -> nn.Module:
    """The bare module inside a DistributedDataParallel-style wrapper."""
    return getattr(module, "module", module)


MIN_ONE_STEP_ALPHA = 0.1
"""A one-step ε-prediction student needs α_T ≥ this: x̂0 = (x − σ ε̂)/α multiplies ε errors by σ/α."""


def check_one_step_teacher(teacher: Teacher) -> None:
    """Refuse a one-step student (KD, DMD) of an ε-prediction teacher whose α at the first timestep is tiny."""
    schedule = student_schedule(teacher)
    first = schedule.timesteps(1)
    alpha, sigma = (float(v) for v in schedule.alpha_sigma(first))
    if schedule.prediction_type == "epsilon" and alpha < MIN_ONE_STEP_ALPHA:
        raise DreamDistillError(
            f"a one-step student of this ε-prediction teacher would read x̂0 = (x − σ ε̂)/α at t = {int(first[0])}, "
            f"where α = {alpha:.2g}: ε errors grow {sigma / alpha:.0f}×; distill a v-prediction teacher, or use "
            "`distill pd` / `distill guided` (several steps)")


def generate(teacher: Teacher, generator: nn.Module, noise: torch.Tensor, text: torch.Tensor,
             timestep: int) -> torch.Tensor:
    """One-step generation G(z; y) = x̂0 of the generator UNet at the first sampling timestep."""
    t = torch.full((noise.shape[0],), timestep, device=noise.device, dtype=torch.long)
    return teacher.denoiser(generator, "none")(noise, t, text).x0


def trainable_copy(unet: nn.Module) -> nn.Module:
    """A float32 copy of a UNet with every parameter trainable (a student initialised from its teacher)."""
    return copy.deepcopy(unwrap(unet)).float().requires_grad_(True).train()


def student_scheduler(teacher: Teacher):
    """The teacher's DDIM scheduler with trailing timestep spacing (what students train and sample on)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(teacher.scheduler.config, timestep_spacing="trailing")


def student_schedule(teacher: Teacher) -> NoiseSchedule:
    """The noise schedule students use: the teacher's ᾱ_t with trailing spacing."""
    return NoiseSchedule.from_scheduler(student_scheduler(teacher))


def check_output_folder(out: Path, teacher_path: Path | None = None) -> None:
    """Refuse an --out that would overwrite the teacher or a folder that is not a student."""
    out = Path(out)
    if teacher_path is not None and out.resolve() == Path(teacher_path).resolve():
        raise DreamDistillError(f"--out {out} is the teacher's own folder; pass a new folder for the student")
    if out.exists():
        if not out.is_dir():
            raise DreamDistillError(f"--out {out} is a file; pass a folder for the student")
        if any(out.iterdir()) and not (out / TEACHER_CONFIG_NAME).is_file():
            raise DreamDistillError(f"--out {out} exists and is not a student folder; pass a new or empty folder")


def save_student(teacher: Teacher, unet: nn.Module, out: str | os.PathLike, *, steps: int, cfg: float, method: str,
                 guidance_embedding: bool = False, extra: dict | None = None) -> Path:
    """Write a student as a pixel-format teacher folder (loadable by ``Teacher.from_pretrained``), replacing ``out``.

    The folder is written next to ``out`` and renamed into place, so an interrupted save never
    leaves a half-written student.
    """
    out = Path(out)
    check_output_folder(out, teacher.info.path)
    clone = copy.copy(teacher)
    clone.scheduler = student_scheduler(teacher)
    clone.info = dataclasses.replace(teacher.info, guidance_embedding=guidance_embedding)
    config = {"default_steps": int(steps), "default_cfg": float(cfg), "distilled_from": str(teacher.info.path),
              "method": method, **(extra or {})}
    temporary = out.with_name(f".{out.name}.tmp{os.getpid()}")
    old = out.with_name(f".{out.name}.old{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    clone.save_pretrained(temporary, unet=unwrap(unet), extra=config)
    if out.exists():
        os.replace(out, old)
    os.replace(temporary, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


TRAINING_LOG_NAME = "training_log.jsonl"
"""A shipped student's copy of its work folder's log.jsonl (one line per logged step: phase, step, losses)."""


def training_minutes(work_dir: Path) -> dict[str, float]:
    """Wall-clock minutes of each phase's training loop, from WORK_DIR/log.jsonl (resumed runs add up; teacher
    rollouts and other data preparation are not included)."""
    import json

    minutes: dict[str, float] = {}
    last: dict[str, float] = {}
    log = Path(work_dir) / "log.jsonl"
    lines = log.read_text().splitlines() if log.is_file() else []
    for line in lines:
        record = json.loads(line)
        phase, elapsed = record.get("phase"), record.get("elapsed_s")
        if phase is None or elapsed is None:
            continue
        if elapsed < last.get(phase, 0.0):  # a resumption restarts the clock: close the earlier segment
            minutes[phase] = minutes.get(phase, 0.0) + last[phase] / 60
        last[phase] = float(elapsed)
    for phase, elapsed in last.items():
        minutes[phase] = round(minutes.get(phase, 0.0) + elapsed / 60, 2)
    return minutes


def ship_student(folder: str | os.PathLike, out: str | os.PathLike, *, work_dir: str | os.PathLike | None = None,
                 dtype: torch.dtype = torch.float16) -> Path:
    """Copy the student in ``folder`` to ``out`` for shipping: UNet weights in ``dtype`` (fp16), no optimiser state,
    its folder JSON completed with ``trained_steps`` (optimiser steps over all phases) and ``training_minutes``
    (per phase, from ``work_dir``, default FOLDER-work), and the work folder's log as ``training_log.jsonl``.
    ``out`` loads with ``Teacher.from_pretrained`` like ``folder`` (weights are cast to the device's dtype)."""
    import json

    from diffusers import UNet2DConditionModel

    from dreamdistill.fileio import write_json_atomic
    from dreamdistill.paths import repo_relative

    folder, out = Path(folder), Path(out)
    config = json.loads((folder / TEACHER_CONFIG_NAME).read_text())
    steps = config.get("steps_trained") or {}
    config["trained_steps"] = int(sum(steps.values()))
    work_dir = Path(work_dir) if work_dir else folder.with_name(f"{folder.name}-work")
    config["training_minutes"] = training_minutes(work_dir)
    if config.get("distilled_from"):  # a shipped folder names its teacher relative to the checkout, not this machine
        config["distilled_from"] = repo_relative(config["distilled_from"])
    unet = UNet2DConditionModel.from_pretrained(folder / "unet").to(dtype)
    temporary = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    unet.save_pretrained(temporary / "unet")
    shutil.copytree(folder / "scheduler", temporary / "scheduler")
    if (work_dir / "log.jsonl").is_file():  # the loss curves (a few kB), so a clone can see how training went
        shutil.copyfile(work_dir / "log.jsonl", temporary / TRAINING_LOG_NAME)
    write_json_atomic(temporary / TEACHER_CONFIG_NAME, config)
    if out.exists():
        shutil.rmtree(out)
    os.replace(temporary, out)
    return out
