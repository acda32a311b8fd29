"""Amortised training's folder and loop (``dreamdistill train-instant``), and the generator folder it ships.

``dreamdistill train-instant --out OUT`` -> :func:`train`; OUT holds

    config.yaml        the full InstantConfig (rerunning the same command resumes from checkpoint.pt)
    checkpoint.pt      generator, background, Adam state, step, seconds (atomic, every ``checkpoint_every``)
    generator/         the shippable generator: weights.pt (fp16, no optimiser state) + instant.json (recipe,
                       trained_steps, minutes, held-out pairs), rewritten with every checkpoint
    validation/        sheets of orbit renders (held-out and training prompts) every ``validate_every`` steps
    log.jsonl          one line per step: loss, grad norm, t, opacity, regularisers, the drawn prompts

Every step draws its randomness from a generator seeded by (seed, step), so a resumed run replays the same
streams as an uninterrupted one.

Several processes (``torchrun`` or ``accelerate launch --multi_gpu -m dreamdistill.cli train-instant``; on a CPU-only
machine they join over gloo) train one generator together: each renders its share of every step's
``prompts_per_step`` prompts and the gradients are summed (:mod:`.trainer`), so they train what one process trains;
rank 0 alone writes the folder and shows the progress bar, and a run resumes under any number of processes.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dreamdistill.config import from_dict, load_config, read_yaml, save_yaml, to_dict
from dreamdistill.errors import DreamDistillError, Interrupted
from dreamdistill.fileio import (
    append_jsonl,
    save_image_atomic,
    torch_load_checked,
    torch_save_atomic,
    truncate_jsonl,
    write_json_atomic,
)
from dreamdistill.instant.config import InstantConfig, check_instant_config
from dreamdistill.instant.generator import ConditioningConfig, InstantField
from dreamdistill.instant.prompts import HELD_OUT_PAIRS, held_out_prompts, training_prompts
from dreamdistill.instant.trainer import InstantTrainer, check_shares, join_processes
from dreamdistill.interrupt import StopRequest
from dreamdistill.lift3d.evaluate import ORBIT_ELEVATION
from dreamdistill.lift3d.scene import render_orbit, to_uint8
from dreamdistill.paths import assets_dir
from dreamdistill.render.cameras import orbit_cameras
from dreamdistill.scene.config import SceneConfig

CONFIG_NAME, CHECKPOINT_NAME, LOG_NAME = "config.yaml", "checkpoint.pt", "log.jsonl"
GENERATOR_DIR, WEIGHTS_NAME, INFO_NAME = "generator", "weights.pt", "instant.json"
DEFAULT_GENERATOR = "toy-instant"
"""The shipped generator: ``assets/toy-instant``."""


# ---- the generator folder -------------------------------------------------------------------------------


def save_generator(model: InstantField, config: InstantConfig, folder: Path, steps: int, seconds: float) -> Path:
    """``folder``/weights.pt (the generator's tensors in fp16) and ``folder``/instant.json (the recipe, what
    rebuilds the generator, trained_steps, minutes, held-out pairs)."""
    folder = Path(folder)
    weights = {name: tensor.detach().to("cpu", torch.float16) for name, tensor in model.state_dict().items()}
    torch_save_atomic(folder / WEIGHTS_NAME, weights)
    info = {"recipe": to_dict(config), "generator": model.describe(), "trained_steps": steps,
            "minutes": round(seconds / 60, 1), "held_out": held_out_prompts(), "training_prompts": training_prompts(),
            "held_out_pairs": [list(pair) for pair in HELD_OUT_PAIRS]}
    write_json_atomic(folder / INFO_NAME, info)
    return folder


def resolve_generator(name_or_path: str | Path | None) -> Path:
    """A generator folder: None or "toy-instant" -> the shipped ``assets/toy-instant``; else the path given."""
    path = assets_dir() / DEFAULT_GENERATOR if name_or_path in (None, DEFAULT_GENERATOR) else Path(name_or_path)
    if not (path / WEIGHTS_NAME).is_file() or not (path / INFO_NAME).is_file():
        raise DreamDistillError(f"{path} is not an instant generator (no {WEIGHTS_NAME} and {INFO_NAME}); train one "
                                "with `dreamdistill train-instant --out OUT` and pass OUT/generator")
    return path


def load_generator(name_or_path: str | Path | None, device: torch.device | str = "cpu"
                   ) -> tuple[InstantField, dict]:
    """The generator of a folder written by :func:`save_generator` (float32, eval mode) and its instant.json."""
    path = resolve_generator(name_or_path)
    info = json.loads((path / INFO_NAME).read_text())
    described = info["generator"]
    model = InstantField(from_dict(SceneConfig, described["scene"]),
                         from_dict(ConditioningConfig, described["conditioning"]), int(described["text_dim"]),
                         tuple(described["categories"]))
    weights = torch_load_checked(path / WEIGHTS_NAME, (), "ship it again from a training folder's generator/")
    model.load_state_dict({name: tensor.float() for name, tensor in weights.items()})
    return model.to(device).eval(), info


# ---- the loop -----------------------------------------------------------------------------------------


SHEET_PROMPTS = 8
"""Validation sheets show the first held-out prompt of each category and one training prompt of each."""


def sheet_prompts() -> list[str]:
    """The prompts of a validation sheet: held-out pairs first (one per category), then training prompts."""
    held_out = held_out_prompts()[0::2]
    training = training_prompts()[0::7]
    return held_out[:SHEET_PROMPTS] + training[:SHEET_PROMPTS]


def save_sheet(trainer: InstantTrainer, path: Path, views: int = 4, resolution: int = 48) -> Path:
    """One row of ``views`` orbit renders per :func:`sheet_prompts` prompt (held-out rows first)."""
    cameras = orbit_cameras(views, elevation=ORBIT_ELEVATION)
    rows = []
    with torch.no_grad():
        for prompt in sheet_prompts():
            field_ = trainer.model.to_field(prompt, trainer.text(prompt))
            images = render_orbit(field_, trainer.background, None, trainer.config.render, cameras, resolution)
            rows.append(np.concatenate(list(to_uint8(images)), axis=1))
    trainer.model.train()
    return save_image_atomic(path, np.concatenate(rows, axis=0))


def save_checkpoint(trainer: InstantTrainer, out: Path, step: int, seconds: float) -> None:
    torch_save_atomic(out / CHECKPOINT_NAME, {"step": step, "seconds": seconds, **trainer.state_dict()})
    save_generator(trainer.model, trainer.config, out / GENERATOR_DIR, step, seconds)


def prepare(config: InstantConfig, out: Path) -> tuple[InstantConfig, dict | None]:
    """The run's config and checkpoint: a new folder gets ``config``; an existing one resumes with its own
    config.yaml (only ``steps`` and ``device`` may change), refusing other differences in one line."""
    out = Path(out)
    if not (out / CONFIG_NAME).is_file():
        return config, None
    saved = from_dict(InstantConfig, read_yaml(out / CONFIG_NAME))
    mine = dataclasses.replace(config, steps=saved.steps, device=saved.device, threads=saved.threads)
    if to_dict(mine) != to_dict(saved):
        changed = sorted(k for k, v in to_dict(mine).items() if to_dict(saved).get(k) != v)
        raise DreamDistillError(f"{out} was trained with other settings ({', '.join(changed)} differ from its "
                                f"{CONFIG_NAME}); pass the same ones to resume, or another --out")
    resumed = dataclasses.replace(saved, steps=config.steps, device=config.device, threads=config.threads)
    checkpoint = None
    if (out / CHECKPOINT_NAME).is_file():
        checkpoint = torch_load_checked(out / CHECKPOINT_NAME, ("step", "model"),
                                        "move it away to start this training over from step 0")
        if resumed.steps < int(checkpoint["step"]):
            raise DreamDistillError(f"--steps {resumed.steps} is below the step of {out / CHECKPOINT_NAME} "
                                    f"({checkpoint['step']}); pass --steps {checkpoint['step']} or more")
    return resumed, checkpoint


def train(config: InstantConfig, out: Path, teacher=None, stop_after: int | None = None,
          progress_bar: bool = True) -> InstantTrainer:
    """Train (or resume) the generator in ``out``; ``stop_after`` ends after that step (to test resuming).
    Ctrl-C or SIGTERM ends after the current step with a checkpoint (:class:`Interrupted`). Under several processes
    (a launcher's WORLD_SIZE) every process calls this; rank 0 alone writes and shows the bar."""
    from tqdm import tqdm

    out = Path(out)
    check_instant_config(config)
    processes = join_processes(config.device)
    config, checkpoint = prepare(config, out)
    check_shares(config, processes)
    if config.threads:
        torch.set_num_threads(config.threads)
    if teacher is None:
        from dreamdistill.diffusion.teacher import Teacher
        from dreamdistill.lift3d.run import quiet_libraries

        quiet_libraries()
        device = processes.device if processes.world > 1 else config.device
        teacher = Teacher.from_pretrained(config.teacher, device=device)
    trainer = InstantTrainer(config, teacher, processes=processes)
    start, seconds = 0, 0.0
    if checkpoint is not None:
        trainer.load_state_dict(checkpoint)
        start, seconds = int(checkpoint["step"]), float(checkpoint.get("seconds", 0.0))
    processes.barrier()  # every process has read the folder before rank 0 writes to it
    main = processes.is_main
    if main:
        out.mkdir(parents=True, exist_ok=True)
        save_yaml(config, out / CONFIG_NAME)
        truncate_jsonl(out / LOG_NAME, lambda record: record.get("step", 0) < start)
        several = f", {processes.world} processes" if processes.world > 1 else ""
        print(f"instant SDS on {config.teacher!r}: {len(trainer.prompts)} training prompts, "
              f"{len(held_out_prompts())} held out, steps {start} -> {config.steps}{several}, -> {out}",
              file=sys.stderr)
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc="instant", unit="step",
               disable=not progress_bar or not main, dynamic_ncols=True, file=sys.stderr)
    began = time.perf_counter() - seconds
    with StopRequest() as stop, bar:
        for step in bar:
            stats = trainer.step(step)
            done = step + 1
            if main:
                append_jsonl(out / LOG_NAME, {"step": step, **{k: (round(v, 6) if isinstance(v, float) else v)
                                                                for k, v in stats.items()}})
            bar.set_postfix(loss=f"{stats['loss']:.3g}", opacity=f"{stats['opacity']:.2f}", refresh=False)
            if trainer.nonfinite_steps * 2 > max(done, 20):
                raise DreamDistillError(f"the training diverged: {trainer.nonfinite_steps} of {done} steps were "
                                        "non-finite; lower the guidance scale or the learning rates")
            signum = int(processes.largest(stop.signum or 0)) if processes.world > 1 else stop.signum
            if done % config.checkpoint_every == 0 or done == config.steps or signum:
                if main:
                    save_checkpoint(trainer, out, done, time.perf_counter() - began)
            if signum:
                processes.barrier()  # the checkpoint is written before any process exits
                raise Interrupted(f"stopped at step {done} of {config.steps}, checkpoint saved; continue with the "
                                  "same command", signum)
            if main and (config.validate_every and done % config.validate_every == 0 or done == config.steps):
                save_sheet(trainer, out / "validation" / f"step-{done:06d}.png")
            if stop_after is not None and done >= stop_after:
                break
    processes.barrier()  # rank 0 has written the last checkpoint and sheet when the command returns anywhere
    return trainer


def config_for_training(preset: str | Path | None, overrides: list[str]) -> InstantConfig:
    """An InstantConfig from a preset (default: configs/instant-toy.yaml) and ``--set`` overrides."""
    from dreamdistill.paths import configs_dir

    preset = preset if preset is not None else configs_dir() / "instant-toy.yaml"
    return load_config(InstantConfig, preset, list(overrides))
