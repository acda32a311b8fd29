"""Students: the one-step generator call, trainable copies of the teacher's UNet, and how a student is saved.

Every method predicts x̂0 through the one denoiser convention (``teacher.denoiser(unet, guidance)``,
see ``diffusion/denoiser.py``) and steps with DDIM (``diffusion/ddim.py``), in the teacher's model space
(pixels, or latents of a Stable-Diffusion teacher, whose VAE and text encoder stay frozen and shared).
Students always sample on the *trailing* grid of the teacher's noise schedule (so a one-step
student starts at t = T − 1, pure noise); their saved scheduler says so, which makes
``dreamdistill sample --model STUDENT --steps K`` walk exactly the timesteps the student was trained on.

A student is a full trainable copy of its teacher's UNet, or (``student.lora_rank`` > 0) the frozen teacher UNet
plus a trainable LoRA adapter. It is saved as a pixel-format folder for a pixel teacher (a LoRA merged in), and for
a latent teacher as a diffusers pipeline folder (``StableDiffusionPipeline.from_pretrained``) or, with a LoRA, as a
LoRA folder (``pipe.load_lora_weights``); see ``diffusion/teacher.py`` for the layouts.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import torch
from torch import nn

from dreamdistill.config import Range
from dreamdistill.diffusion.schedule import NoiseSchedule
from dreamdistill.diffusion.teacher import (
    GUIDANCE_PROJECTION_NAME,
    LATENT_NOTES_NAME,
    TEACHER_CONFIG_NAME,
    Teacher,
    teacher_reference,
)
from dreamdistill.errors import DreamDistillError

LORA_TARGETS: tuple[str, ...] = ("to_q", "to_k", "to_v", "to_out.0", "conv1", "conv2")
"""UNet module names that get LoRA adapters by default (attention projections and ResNet convolutions)."""
GUIDANCE_PROJECTION = "time_embedding.cond_proj"
"""A guided student's w-projection (diffusers' ``time_cond_proj_dim``): trained even when the rest is a LoRA."""


@dataclass
class StudentConfig:
    """What the student network is."""

    lora_rank: Annotated[int, Range(0, 1024)] = 0
    """0: a full copy of the teacher's UNet, every weight trained. r > 0 (pd, guided, dmd): the frozen teacher UNet
    plus a LoRA adapter of rank r (scale 1: lora_alpha = r), the only weights trained besides a guided student's
    w-projection; a latent teacher's student is then saved as a LoRA folder (``pipe.load_lora_weights``), a pixel
    teacher's with the adapter merged into its UNet."""
    lora_targets: tuple[str, ...] = LORA_TARGETS
    """UNet module names that get the student's LoRA adapters (attention projections and ResNet convolutions)."""


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


MIN_ONE_STEP_ALPHA = 0.05
"""A one-step ε-prediction student needs α_T ≥ this: x̂0 = (x − σ ε̂)/α multiplies ε errors by σ/α. Stable
Diffusion's scaled-linear schedule has α_999 = 0.068 (σ/α ≈ 15), which DMD2 distils in one step; a cosine schedule
capped at β = 0.999 has α_999 < 0.01 and is refused."""


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


def has_adapter(unet: nn.Module) -> bool:
    """Whether ``unet`` carries a (student) LoRA adapter."""
    return bool(getattr(unwrap(unet), "peft_config", None))


def student_trainable(name: str) -> bool:
    """Whether a LoRA student trains the parameter ``name``: its adapter and a guided student's w-projection."""
    return "lora_" in name or name.startswith(GUIDANCE_PROJECTION + ".")


def new_student(unet: nn.Module, config: StudentConfig) -> nn.Module:
    """A trainable float32 student initialised as ``unet``: a full copy (``lora_rank`` 0), else a copy with a fresh
    LoRA adapter (B = 0, so it starts equal to ``unet``), or, when ``unet`` is already a LoRA student (the previous
    PD round), a copy that keeps training its adapter."""
    if config.lora_rank == 0:
        return trainable_copy(unet)
    student = copy.deepcopy(unwrap(unet)).float()
    if not has_adapter(student):
        from peft import LoraConfig

        student.requires_grad_(False)
        student.add_adapter(LoraConfig(r=config.lora_rank, lora_alpha=config.lora_rank,
                                       target_modules=list(config.lora_targets), init_lora_weights=True))
    for name, parameter in student.named_parameters():
        parameter.requires_grad_(student_trainable(name))
    return student.train()


def merged_copy(unet: nn.Module) -> nn.Module:
    """A copy of a LoRA student with its adapter merged into a plain UNet (``unet`` itself when it has none)."""
    unet = unwrap(unet)
    if not has_adapter(unet):
        return unet
    merged = copy.deepcopy(unet)
    merged.fuse_lora()
    merged.unload_lora()
    return merged


def student_scheduler(teacher: Teacher):
    """The teacher's DDIM scheduler with trailing timestep spacing (what students train and sample on)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(teacher.scheduler.config, timestep_spacing="trailing")


def student_schedule(teacher: Teacher) -> NoiseSchedule:
    """The noise schedule students use: the teacher's ᾱ_t with trailing spacing."""
    return NoiseSchedule.from_scheduler(student_scheduler(teacher))


def pipeline_scheduler(teacher: Teacher):
    """The scheduler a latent student's folder carries: :func:`student_scheduler` with diffusers' x̂0 clipping and
    thresholding off (our DDIM never clips), so ``DDIMScheduler.set_timesteps(K)`` and ``step`` walk the trailing
    grid exactly as ``Teacher.sample`` does (for the K that :func:`check_pipeline_steps` accepts)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(student_scheduler(teacher).config, clip_sample=False, thresholding=False)


def check_pipeline_steps(teacher: Teacher, steps: int) -> None:
    """Refuse a ``steps``-step student of a latent teacher that diffusers' DDIMScheduler would walk differently:
    its ``step`` goes from t to t − T // K, while our sampler (and the student's training) goes to the next timestep
    of the trailing grid; the two agree when K divides T."""
    if teacher.info.format != "latent":
        return
    schedule = student_schedule(teacher)
    total = schedule.num_train_timesteps
    s = schedule.timesteps(steps)
    ours = torch.cat([s[1:], torch.tensor([-1])])
    theirs = (s - total // steps).clamp(min=-1)
    if not torch.equal(ours, theirs):
        divisors = ", ".join(str(k) for k in range(1, 65) if total % k == 0)
        raise DreamDistillError(
            f"a {steps}-step student of this {total}-timestep teacher would not sample the same in diffusers "
            f"(DDIMScheduler steps t → t − {total // steps}, off the trailing grid {s.tolist()} it trains on); "
            f"use a step count that divides {total} ({divisors})")


def is_student_folder(folder: Path) -> bool:
    """Whether ``folder`` holds a student that ``dreamdistill distill`` wrote (pixel, pipeline or LoRA)."""
    if (folder / TEACHER_CONFIG_NAME).is_file():
        return True
    try:
        notes = json.loads((folder / LATENT_NOTES_NAME).read_text())
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(notes, dict) and "method" in notes


def check_output_folder(out: Path, teacher_path: Path | None = None) -> None:
    """Refuse an --out that would overwrite the teacher or a folder that is not a student."""
    out = Path(out)
    if teacher_path is not None and out.resolve() == Path(teacher_path).resolve():
        raise DreamDistillError(f"--out {out} is the teacher's own folder; pass a new folder for the student")
    if out.exists():
        if not out.is_dir():
            raise DreamDistillError(f"--out {out} is a file; pass a folder for the student")
        if any(out.iterdir()) and not is_student_folder(out):
            raise DreamDistillError(f"--out {out} exists and is not a student folder; pass a new or empty folder")


def save_student(teacher: Teacher, unet: nn.Module, out: str | os.PathLike, *, steps: int, cfg: float, method: str,
                 guidance_embedding: bool = False, extra: dict | None = None) -> Path:
    """Write a student (loadable by ``Teacher.from_pretrained``), replacing ``out``: a pixel-format folder for a pixel
    teacher (a LoRA merged in); for a latent teacher a diffusers pipeline folder, or a LoRA folder when ``unet``
    carries a LoRA adapter. UNet weights are written as trained (float32; ``ship_student`` makes fp16 copies).

    The folder is written next to ``out`` and renamed into place, so an interrupted save never
    leaves a half-written student.
    """
    out = Path(out)
    check_output_folder(out, teacher.info.path)
    config = {"default_steps": int(steps), "default_cfg": float(cfg), "distilled_from": str(teacher.info.path),
              "method": method, **(extra or {})}
    temporary = out.with_name(f".{out.name}.tmp{os.getpid()}")
    old = out.with_name(f".{out.name}.old{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    if teacher.info.format == "latent" and has_adapter(unet):
        _save_lora_student(teacher, unwrap(unet), temporary, config, guidance_embedding)
    else:
        clone = copy.copy(teacher)
        clone.scheduler = pipeline_scheduler(teacher) if teacher.info.format == "latent" else student_scheduler(teacher)
        clone.info = dataclasses.replace(teacher.info, guidance_embedding=guidance_embedding)
        form = {"form": "pipeline"} if teacher.info.format == "latent" else {}
        clone.save_pretrained(temporary, unet=merged_copy(unet), extra={**config, **form})
    if out.exists():
        os.replace(out, old)
    os.replace(temporary, out)
    shutil.rmtree(old, ignore_errors=True)
    return out


def _save_lora_student(teacher: Teacher, unet: nn.Module, folder: Path, config: dict, guidance_embedding: bool):
    """A latent teacher's LoRA student: the adapter in diffusers' LoRA format, a guided student's w-projection,
    the student's scheduler and dreamdistill.json naming the base teacher."""
    from diffusers import StableDiffusionPipeline
    from peft.utils import get_peft_model_state_dict
    from safetensors.torch import save_file

    from dreamdistill.fileio import write_json_atomic

    folder.mkdir(parents=True)
    layers = {k: v.detach().float().contiguous() for k, v in get_peft_model_state_dict(unet).items()}
    StableDiffusionPipeline.save_lora_weights(folder, unet_lora_layers=layers)
    base = teacher_reference(teacher.info.path)
    usage = (f"pipe = StableDiffusionPipeline.from_pretrained({base!r}); pipe.load_lora_weights(THIS_FOLDER); "
             "pipe.scheduler = DDIMScheduler.from_pretrained(THIS_FOLDER, subfolder='scheduler'); "
             f"pipe(prompt, num_inference_steps={config['default_steps']}, guidance_scale={config['default_cfg']})")
    notes = {"base_model": base, "vocabulary": teacher.info.vocabulary, "form": "lora"}
    if guidance_embedding:
        weight = unet.time_embedding.cond_proj.weight.detach().float().contiguous()
        save_file({f"{GUIDANCE_PROJECTION}.weight": weight}, folder / GUIDANCE_PROJECTION_NAME)
        notes.update(guidance_embedding=True, time_cond_proj_dim=int(weight.shape[1]))
        usage = ("load_lora_weights cannot add the w-projection: first replace pipe.unet by the base UNet rebuilt "
                 f"with time_cond_proj_dim={int(weight.shape[1])} and {GUIDANCE_PROJECTION_NAME} loaded into it; "
                 "then " + usage)
    pipeline_scheduler(teacher).save_pretrained(folder / "scheduler")
    write_json_atomic(folder / LATENT_NOTES_NAME, {**notes, **config, "diffusers_usage": usage})


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
    """Copy the student in ``folder`` to ``out`` for shipping: UNet weights (a LoRA student's adapter and
    w-projection) in ``dtype`` (fp16), no optimiser state, its folder JSON completed with ``trained_steps``
    (optimiser steps over all phases) and ``training_minutes`` (per phase, from ``work_dir``, default FOLDER-work),
    and the work folder's log as ``training_log.jsonl``. A pipeline folder keeps the teacher's VAE, text encoder and
    tokenizer files as they are. ``out`` loads with ``Teacher.from_pretrained`` like ``folder`` (weights are cast to
    the device's dtype)."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file, save_file

    from dreamdistill.diffusion.teacher import LORA_WEIGHTS_NAME
    from dreamdistill.fileio import write_json_atomic
    from dreamdistill.paths import repo_relative

    folder, out = Path(folder), Path(out)
    notes_name = TEACHER_CONFIG_NAME if (folder / TEACHER_CONFIG_NAME).is_file() else LATENT_NOTES_NAME
    config = json.loads((folder / notes_name).read_text())
    steps = config.get("steps_trained") or {}
    config["trained_steps"] = int(sum(steps.values()))
    work_dir = Path(work_dir) if work_dir else folder.with_name(f"{folder.name}-work")
    config["training_minutes"] = training_minutes(work_dir)
    if config.get("distilled_from"):  # a shipped folder names its teacher relative to the checkout, not this machine
        config["distilled_from"] = repo_relative(config["distilled_from"])
    if config.get("base_model") and Path(config["base_model"]).is_absolute():  # (a short name stays)
        config["base_model"] = repo_relative(config["base_model"])
    temporary = out.with_name(f".{out.name}.tmp{os.getpid()}")
    shutil.rmtree(temporary, ignore_errors=True)
    weights = (LORA_WEIGHTS_NAME, GUIDANCE_PROJECTION_NAME)
    shutil.copytree(folder, temporary, ignore=shutil.ignore_patterns("unet", notes_name, TRAINING_LOG_NAME, *weights))
    if (folder / "unet").is_dir():
        UNet2DConditionModel.from_pretrained(folder / "unet").to(dtype).save_pretrained(temporary / "unet")
    for name in weights:
        if (folder / name).is_file():
            tensors = {k: v.to(dtype) for k, v in load_file(folder / name).items()}
            save_file(tensors, temporary / name, metadata={"format": "pt"})
    if (work_dir / "log.jsonl").is_file():  # the loss curves (a few kB), so a clone can see how training went
        shutil.copyfile(work_dir / "log.jsonl", temporary / TRAINING_LOG_NAME)
    write_json_atomic(temporary / notes_name, config)
    if out.exists():
        shutil.rmtree(out)
    os.replace(temporary, out)
    return out
