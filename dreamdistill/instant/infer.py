"""``dreamdistill PROMPT --instant``: the run folder of a per-prompt run, from the generator in one forward pass;
``--init instant``: a per-prompt run (SDS/VSD, the usual loop) that starts from that field.

G_θ(y) is a plain Field (:meth:`InstantField.to_field`), so the folder is written by the per-prompt run's own
:func:`~dreamdistill.lift3d.run.finish` (turntable, meshes, metrics.json with R-precision, view consistency and
nearest-real IoU, report.html), and its checkpoint.pt (step 0) resumes as a per-prompt run:
``dreamdistill --resume RUN_DIR`` optimises it for the config's ``steps``.
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

from dreamdistill.config import from_dict, save_yaml
from dreamdistill.errors import DreamDistillError
from dreamdistill.fileio import write_json_atomic
from dreamdistill.instant.generator import InstantField, category_of
from dreamdistill.instant.prompts import HELD_OUT_PAIRS
from dreamdistill.lift3d.config import LiftConfig, check_config, config_from_args
from dreamdistill.lift3d.lifter import Lifter
from dreamdistill.lift3d.run import (
    CONFIG_NAME,
    DEFAULT_OUT,
    METRICS_NAME,
    create_run_dir,
    finish,
    load_teacher,
    optimise,
    save_checkpoint,
    summary_line,
)
from dreamdistill.scene.config import SceneConfig
from dreamdistill.toyworld.captions import parse_prompt


def is_held_out(prompt: str, pairs: tuple[tuple[str, str], ...] = HELD_OUT_PAIRS) -> bool:
    """Whether the prompt's colour × category pair was held out of the generator's training."""
    colour, category, _ = parse_prompt(prompt)
    return (colour, category) in pairs


def with_generator_scene(config: LiftConfig, info: dict) -> LiftConfig:
    """``config`` with the generator's scene settings (a bound prompt is a Field of exactly those)."""
    scene = from_dict(SceneConfig, info["generator"]["scene"])
    if dataclasses.asdict(scene) != dataclasses.asdict(config.scene):
        changed = sorted(k for k, v in dataclasses.asdict(scene).items() if getattr(config.scene, k) != v)
        print(f"note: scene settings from the generator ({', '.join(changed)})", file=sys.stderr)
    return dataclasses.replace(config, scene=scene)


def load_instant_field(lifter: Lifter, model: InstantField, prompt: str) -> None:
    """Put G_θ(prompt) into the lifter's field (its optimiser state stays fresh)."""
    field_ = model.to_field(prompt, lifter.teacher.encode_text([prompt])[0])
    lifter.field.load_state_dict(field_.state_dict())
    if lifter.config.scene.geometry == "sdf":  # the generator ends training at the annealed β
        lifter.field.beta.fill_(lifter.config.scene.sdf_beta_end)


def instant_metrics(prompt: str, generator: Path, info: dict, init: str) -> dict:
    """What metrics.json says about the generator behind a run."""
    return {"method": "instant" if init == "none" else f"{info['recipe'].get('method', 'sds')}+instant-init",
            "generator": str(generator), "generator_steps": info["trained_steps"], "held_out": is_held_out(prompt)}


def main(args: argparse.Namespace) -> int:
    """``dreamdistill PROMPT --instant`` (``args.init == "none"``: no optimisation) or ``--init instant``."""
    from dreamdistill.instant.run import load_generator, resolve_generator

    init = "none" if args.instant else "instant"
    config = config_from_args(args)
    check_config(config)
    category_of(config.prompt)
    generator_dir = resolve_generator(args.generator)
    model, info = load_generator(generator_dir)
    config = with_generator_scene(config, info)
    teacher = load_teacher(config)
    if teacher.info.vocabulary and info["recipe"].get("teacher", "toy") != config.teacher:
        print(f"note: the generator was trained with teacher {info['recipe'].get('teacher')!r}", file=sys.stderr)
    model = model.to(teacher.device)
    began = time.perf_counter()
    lifter = Lifter(config, teacher)
    load_instant_field(lifter, model, config.prompt)
    run_dir = create_run_dir(Path(args.out or DEFAULT_OUT), config.prompt)
    save_yaml(config, run_dir / CONFIG_NAME)
    extra = instant_metrics(config.prompt, generator_dir, info, init)
    try:
        if init == "none":
            save_checkpoint(lifter, run_dir, 0, 0.0)
            result = finish(lifter, run_dir, 0, time.perf_counter() - began, extra_metrics=extra)
            seconds = time.perf_counter() - began
            metrics = {**result["metrics"], "wall_seconds_after_loading": round(seconds, 2)}
            write_json_atomic(run_dir / METRICS_NAME, metrics)
            result["metrics"] = metrics
            print(f"instant: {config.prompt!r} -> {run_dir} in {seconds:.1f} s after loading "
                  f"(continue per prompt with: dreamdistill --resume {shlex.quote(str(run_dir))})", file=sys.stderr)
        else:
            print(f"{config.method} on {config.teacher!r} from the instant generator: {config.prompt!r} -> "
                  f"{run_dir}", file=sys.stderr)
            result = optimise(lifter, run_dir, None)
            metrics = {**result["metrics"], **extra}
            write_json_atomic(run_dir / METRICS_NAME, metrics)
            result["metrics"] = metrics
    except OSError as error:
        raise DreamDistillError(f"writing to the run folder {run_dir} failed ({error.strerror or error})") from None
    print(summary_line(result))
    return 0
