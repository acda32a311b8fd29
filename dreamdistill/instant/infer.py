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

import torch

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
from dreamdistill.lift3d.scene import render_orbit
from dreamdistill.paths import repo_relative
from dreamdistill.render.cameras import Cameras
from dreamdistill.render.volume import Shading
from dreamdistill.scene.config import SceneConfig
from dreamdistill.toyworld.captions import parse_prompt

INSTANT_OUTPUT_OVERRIDES = ("turntable_frames=12", "turntable_resolution=96", "export.resolution=96")
"""``--instant``'s outputs, lighter than a per-prompt run's (24 frames at 256 px, meshes at 128): on 2 busy
cores the 24 × 256² turntable alone took 24 s, 12 × 96² 1.7 s; marching cubes at 128 took 4 s, at 96 about 2 s
(the shape score voxelises at 48³ either way). ``--set`` overrides them."""


def is_held_out(prompt: str, pairs: tuple[tuple[str, str], ...] = HELD_OUT_PAIRS) -> bool:
    """Whether the prompt's colour × category pair was held out of the generator's training."""
    colour, category, _ = parse_prompt(prompt)
    return (colour, category) in pairs


def with_generator_scene(config: LiftConfig, info: dict) -> LiftConfig:
    """``config`` with the scene settings of the Field a bound prompt folds into (``field_scene``)."""
    scene = from_dict(SceneConfig, info["generator"].get("field_scene", info["generator"]["scene"]))
    if dataclasses.asdict(scene) != dataclasses.asdict(config.scene):
        changed = sorted(k for k, v in dataclasses.asdict(scene).items() if getattr(config.scene, k) != v)
        print(f"note: scene settings from the generator ({', '.join(changed)})", file=sys.stderr)
    return dataclasses.replace(config, scene=scene)


class InstantLifter(Lifter):
    """A Lifter whose field is the generator's and does not change while its run folder is written: the orbit
    renders (validation, turntable, metrics) share one :meth:`~OccupancyGrid.visible_cells` grid instead of
    computing it for each."""

    visible = None

    def render_views(self, cameras: Cameras, resolution: int, shading: Shading = "diffuse") -> torch.Tensor:
        if self.occupancy is None:
            return super().render_views(cameras, resolution, shading)
        if self.visible is None:
            self.visible = self.occupancy.visible_cells(self.field.density, self.step_size)
        return render_orbit(self.field, self.background, self.visible, self.config.render, cameras, resolution,
                            shading, occupancy_is_visible=True)


def load_instant_field(lifter: Lifter, model: InstantField, prompt: str) -> None:
    """Put G_θ(prompt) into the lifter's field (its optimiser state stays fresh)."""
    field_ = model.to_field(prompt, lifter.teacher.encode_text([prompt])[0])
    lifter.field.load_state_dict(field_.state_dict())
    if lifter.config.scene.geometry == "sdf":  # the generator ends training at the annealed β
        lifter.field.beta.fill_(lifter.config.scene.sdf_beta_end)


def instant_metrics(prompt: str, generator: Path, info: dict, method: str) -> dict:
    """What metrics.json says about the generator behind a run: ``method`` (instant, or e.g. sds+instant-init),
    the generator folder and its training steps, whether the prompt was held out of its training."""
    return {"method": method, "generator": repo_relative(generator), "generator_steps": info["trained_steps"],
            "held_out": is_held_out(prompt)}


def instant_run(config: LiftConfig, teacher, model: InstantField, info: dict, generator_dir: Path,
                out: Path) -> dict:
    """``--instant``: a new run folder under ``out`` for ``config.prompt`` from the generator, written by
    :func:`finish` (+ checkpoint.pt at step 0); metrics.json also holds ``wall_seconds_after_loading`` (field,
    turntable, meshes, metrics and report). Returns finish's result."""
    began = time.perf_counter()
    lifter = InstantLifter(config, teacher)
    load_instant_field(lifter, model, config.prompt)
    run_dir = create_run_dir(Path(out), config.prompt)
    save_yaml(config, run_dir / CONFIG_NAME)
    save_checkpoint(lifter, run_dir, 0, 0.0)
    extra = instant_metrics(config.prompt, generator_dir, info, "instant")
    result = finish(lifter, run_dir, 0, time.perf_counter() - began, extra_metrics=extra)
    result["metrics"] = {**result["metrics"], "wall_seconds_after_loading": round(time.perf_counter() - began, 2)}
    write_json_atomic(run_dir / METRICS_NAME, result["metrics"])
    return result


def main(args: argparse.Namespace) -> int:
    """``dreamdistill PROMPT --instant`` (no optimisation) or ``--init instant`` (the per-prompt loop from it)."""
    from dreamdistill.instant.run import load_generator, resolve_generator

    if args.instant:
        args = argparse.Namespace(**{**vars(args), "overrides": [*INSTANT_OUTPUT_OVERRIDES, *args.overrides]})
    config = config_from_args(args)
    check_config(config)
    category_of(config.prompt)
    generator_dir = resolve_generator(args.generator)
    model, info = load_generator(generator_dir)
    config = with_generator_scene(config, info)
    teacher = load_teacher(config)
    model = model.to(teacher.device)
    out = Path(args.out or DEFAULT_OUT)
    try:
        if args.instant:
            result = instant_run(config, teacher, model, info, generator_dir, out)
            print(f"instant: {config.prompt!r} -> {result['run_dir']} in "
                  f"{result['metrics']['wall_seconds_after_loading']:.1f} s after loading (continue per prompt "
                  f"with: dreamdistill --resume {shlex.quote(str(result['run_dir']))})", file=sys.stderr)
        else:
            lifter = Lifter(config, teacher)
            load_instant_field(lifter, model, config.prompt)
            run_dir = create_run_dir(out, config.prompt)
            save_yaml(config, run_dir / CONFIG_NAME)
            print(f"{config.method} on {config.teacher!r} from the instant generator: {config.prompt!r} -> "
                  f"{run_dir}", file=sys.stderr)
            result = optimise(lifter, run_dir, None)
            result["metrics"] = {**result["metrics"], **instant_metrics(config.prompt, generator_dir, info,
                                                                    f"{config.method}+instant-init")}
            write_json_atomic(run_dir / METRICS_NAME, result["metrics"])
    except OSError as error:
        raise DreamDistillError(f"writing to the run folder failed ({error.strerror or error})") from None
    print(summary_line(result))
    return 0
