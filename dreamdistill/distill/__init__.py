"""Distill the 2D teacher into a fast sampler: KD, progressive (PD), guided, DMD and SiD distillation.

``dreamdistill distill {kd,pd,guided,dmd,sid} --teacher NAME_OR_PATH --out DIR`` (or :func:`distill`)
trains a student and saves it as a teacher folder, so ``Teacher.from_pretrained(DIR)`` loads it and
``dreamdistill sample PROMPT --model DIR`` samples from it with its own steps: a pixel-format folder for a
pixel teacher; for a latent (Stable-Diffusion) teacher a diffusers pipeline folder that
``StableDiffusionPipeline.from_pretrained(DIR)`` samples the same, or with ``student.lora_rank`` > 0 a LoRA
folder for ``pipe.load_lora_weights(DIR)``. Students of a latent teacher work in its latent space; its VAE and
text encoder stay frozen and shared.

    kd.py           one-step student regressed onto cached teacher DDIM rollouts
    progressive.py  PD: closed-form two-step target, rounds halving the steps
    guided.py       w-conditioned student matching the CFG teacher, then PD on it
    dmd.py          one-step generator + fake score (distribution matching / 2D VSD)
    sid.py          one-step generator + fake denoiser, loss through both denoisers (score identity)
    loop.py         the shared accelerate loop: phases, checkpoint/resume, progress bars
    data.py         prompts, toy-world renders, cached teacher rollouts
    student.py      the student network (full copy or LoRA), calling it, and saving students
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from dreamdistill.config import InputFile, OutputPath, Range
from dreamdistill.config import validate as validate_declared
from dreamdistill.distill.data import DataConfig
from dreamdistill.distill.dmd import DMDConfig
from dreamdistill.distill.guided import GuidedConfig
from dreamdistill.distill.loop import LoopConfig, Run
from dreamdistill.distill.progressive import PDConfig, pd_rounds
from dreamdistill.distill.sid import SiDConfig
from dreamdistill.distill.student import StudentConfig
from dreamdistill.errors import DreamDistillError
from dreamdistill.paths import configs_dir

Method = Literal["kd", "pd", "guided", "dmd", "sid"]
METHODS: tuple[str, ...] = ("kd", "pd", "guided", "dmd", "sid")
LORA_METHODS: tuple[str, ...] = ("pd", "guided", "dmd")
"""Methods whose student may be a LoRA adapter (``student.lora_rank`` > 0)."""


@dataclass
class DistillConfig:
    """A distillation run (presets: configs/distill-{kd,pd,guided,dmd}.yaml)."""

    method: Method = "pd"
    """kd: one-step regression on teacher rollouts; pd: progressive distillation; guided: w-conditioned
    student then PD; dmd: one-step distribution matching; sid: one-step score identity distillation."""
    teacher: str = "toy"
    """Teacher to distill: toy (embedded), toy-sd, a pixel-format or Stable-Diffusion folder (a student works too),
    or a cached hub id."""
    out: Annotated[str, OutputPath()] = "students/pd"
    """Student folder to write (a teacher-format folder: pixel, diffusers pipeline, or LoRA)."""
    work_dir: Annotated[str | None, OutputPath()] = None
    """Checkpoints, cached data and the log (None: OUT-work next to the student)."""
    cfg: Annotated[float | None, Range(0, 100)] = None
    """Classifier-free guidance weight of the teacher being distilled (None: the teacher's default_cfg, else 4)."""
    prompts: Annotated[str | None, InputFile()] = None
    """Text file of training prompts, one per line (None: every caption of the toy teacher's vocabulary)."""
    data: DataConfig = field(default_factory=DataConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loop: LoopConfig = field(default_factory=LoopConfig)
    pd: PDConfig = field(default_factory=PDConfig)
    guided: GuidedConfig = field(default_factory=GuidedConfig)
    dmd: DMDConfig = field(default_factory=DMDConfig)
    sid: SiDConfig = field(default_factory=SiDConfig)


RESUME_INSENSITIVE = ("out", "work_dir", "loop.checkpoint_every", "loop.log_every", "loop.device", "loop.threads")
"""Settings that may change between a run and its resumption."""


def preset_path(method: str) -> Path:
    """The shipped preset configs/distill-METHOD.yaml."""
    return configs_dir() / f"distill-{method}.yaml"


def work_dir_of(config: DistillConfig) -> Path:
    return Path(config.work_dir) if config.work_dir else Path(f"{str(config.out).rstrip('/')}-work")


def validate(config: DistillConfig) -> None:
    """One-line errors for settings that cannot work, before anything is loaded."""
    validate_declared(config)
    if config.method in ("pd", "guided"):
        pd_rounds(config.pd.teacher_steps, config.pd.student_steps)
    for name in ("dmd", "sid"):
        low, high = getattr(config, name).t_range
        if config.method == name and low == high:
            raise DreamDistillError(f"{name}.t_range={[low, high]} is empty: give [low, high] with low < high")
    if config.student.lora_rank and config.method not in LORA_METHODS:
        raise DreamDistillError(f"student.lora_rank={config.student.lora_rank}: a LoRA student is available for "
                                f"{', '.join(LORA_METHODS)}, not {config.method}; set student.lora_rank=0")


def _comparable(config: DistillConfig) -> dict:
    from dreamdistill.config import to_dict

    data = to_dict(config)
    for key in RESUME_INSENSITIVE:
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node[part]
        node.pop(last, None)
    return data


def check_resumable(work_dir: Path, config: DistillConfig) -> None:
    """Refuse to resume a work folder trained with other settings (reads only; :func:`record_settings` writes)."""
    import yaml

    from dreamdistill.config import from_dict

    path = work_dir / "distill.yaml"
    if path.is_file():
        try:
            previous = from_dict(DistillConfig, yaml.safe_load(path.read_text()) or {})
        except (DreamDistillError, yaml.YAMLError, AttributeError):
            previous = None
        old, new = (_comparable(previous) if previous else {}), _comparable(config)
        if old != new:
            changed = _first_difference(old, new)
            raise DreamDistillError(f"work folder {work_dir} holds a run with other settings ({changed}); "
                                    "rerun with the same settings to resume, or pass another --work-dir")


def record_settings(work_dir: Path, config: DistillConfig) -> None:
    """Create the work folder and write WORK_DIR/distill.yaml (once every check has passed)."""
    import yaml

    from dreamdistill.fileio import write_text_atomic

    path = work_dir / "distill.yaml"
    if not path.is_file():
        write_text_atomic(path, yaml.safe_dump(_plain(config), sort_keys=False))


def _plain(config: DistillConfig) -> dict:
    from dreamdistill.config import to_dict

    return to_dict(config)


def _first_difference(old: dict, new: dict, prefix: str = "") -> str:
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            if a != b:
                return _first_difference(a, b, f"{prefix}{key}.")
        elif a != b:
            return f"{prefix}{key}: {a!r} → {b!r}"
    return "unknown"


def distill(config: DistillConfig, teacher=None) -> Path:
    """Train the student ``config.method`` describes and save it to ``config.out``; returns that folder.

    ``teacher`` optionally passes an already loaded :class:`Teacher` (it must be float32).
    """
    import torch

    from dreamdistill.diffusion.teacher import Teacher, resolve_teacher_path
    from dreamdistill.distill.student import check_output_folder, check_pipeline_steps, save_student

    validate(config)
    teacher_path = teacher.info.path if teacher is not None else resolve_teacher_path(config.teacher)
    check_output_folder(Path(config.out), teacher_path)
    work_dir = work_dir_of(config)
    run = Run(config.loop, work_dir)
    if run.is_main:
        check_resumable(work_dir, config)
    if teacher is None:
        teacher = Teacher.from_pretrained(config.teacher, device=run.device, dtype=torch.float32)
    if teacher.dtype != torch.float32:
        raise DreamDistillError(f"the teacher is loaded in {teacher.dtype}; distillation needs it in float32 "
                                "(Teacher.from_pretrained(..., dtype=torch.float32)); loop.mixed_precision gives speed")
    check_pipeline_steps(teacher, config.pd.student_steps if config.method in ("pd", "guided") else 1)
    if teacher.info.format == "latent" and config.method == "guided" and config.guided.embedding_dim < 4:
        raise DreamDistillError(f"guided.embedding_dim={config.guided.embedding_dim}: a latent teacher's guided "
                                "student embeds w as diffusers does, which needs at least 4 features")
    if teacher.info.guidance_embedding:
        raise DreamDistillError(f"{teacher.info.path} is a guidance-distilled student; distill the original teacher "
                                "instead (guided distillation already ends with progressive distillation)")
    if run.is_main:  # only now, so that a refused command leaves no work folder behind
        record_settings(work_dir, config)
    run.wait()
    cfg = config.cfg if config.cfg is not None else float(teacher.info.defaults.get("default_cfg", 4.0))
    config = dataclasses.replace(config, cfg=cfg)

    if config.method == "kd":
        from dreamdistill.distill.kd import distill_kd as method
    elif config.method == "pd":
        from dreamdistill.distill.progressive import distill_pd as method
    elif config.method == "guided":
        from dreamdistill.distill.guided import distill_guided as method
    elif config.method == "dmd":
        from dreamdistill.distill.dmd import distill_dmd as method
    elif config.method == "sid":
        from dreamdistill.distill.sid import distill_sid as method
    else:
        raise DreamDistillError(f"unknown method {config.method!r}; use one of {', '.join(METHODS)}")
    student = method(run, teacher, config)
    out = Path(config.out)
    if run.is_main:
        from dreamdistill.config import to_dict

        save_student(teacher, student.unet, out, steps=student.steps, cfg=student.cfg, method=config.method,
                     guidance_embedding=student.guidance_embedding,
                     extra={"recipe": to_dict(config), "steps_trained": run.steps_trained})
        print(f"student written to {out} ({config.method}, {student.steps} step{'s' * (student.steps > 1)}); "
              f"sample it with: dreamdistill sample \"PROMPT\" --model {out}", flush=True)
    run.wait()
    return out
