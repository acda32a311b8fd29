"""A text-to-3D run: its folder, checkpoints, the loop, and the ``dreamdistill`` PROMPT / export / eval commands.

``dreamdistill "a red chair"`` -> :func:`main`: config (preset YAML <- ``--set`` <- flags), validation before
anything is written, a run directory ``runs/<slug>-<time>/`` holding

    config.yaml        the full config (``--resume RUN_DIR`` reads it back)
    checkpoint.pt      field, background, occupancy, optimiser(s), critic, step (atomic, every N steps)
    validation/        orbit renders every ``validate_every`` steps
    turntable.gif      ``turntable_resolution`` px (+ turntable.mp4 when an ffmpeg writer is installed)
    mesh.glb, mesh.obj (+ mesh.mtl), mesh.ply
    metrics.json       r_precision, view_consistency, shape (nearest-real IoU; toy teachers), seconds, steps, mesh
    log.jsonl          one line per step: loss, grad norm, t, opacity, regularisers, critic loss (VSD)
    report.html        the page to look at the result (dreamdistill/report.py; ``dreamdistill report RUN_DIR``)
    eval.json          ``dreamdistill eval RUN_DIR``: the metrics re-scored from checkpoint.pt

Every step draws its randomness (cameras, shading, timesteps, noise, critic) from a generator seeded by
(seed, step), so a resumed run replays the same streams as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import os
import re
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch

from dreamdistill.config import check_device, check_field, from_dict, read_yaml, save_yaml, validate
from dreamdistill.errors import DreamDistillError, Interrupted
from dreamdistill.export import EmptySceneError, ExportConfig, export_meshes, write_turntable
from dreamdistill.fileio import (
    append_jsonl,
    first_line,
    save_image_atomic,
    torch_load_checked,
    torch_save_atomic,
    truncate_jsonl,
    write_json_atomic,
)
from dreamdistill.interrupt import StopRequest
from dreamdistill.lift3d.config import LiftConfig, check_config, check_resolutions, config_from_args
from dreamdistill.lift3d.evaluate import ORBIT_ELEVATION, evaluate, score_orbit, shape_score
from dreamdistill.lift3d.fast_path import LOG_EVERY
from dreamdistill.lift3d.lifter import Lifter
from dreamdistill.lift3d.scene import load_scene, marching_step, render_orbit, to_uint8
from dreamdistill.render.cameras import Cameras, orbit_cameras
from dreamdistill.report import write_report
from dreamdistill.run_files import (  # the folder's file names; instant/infer.py and lift3d/ import them from here
    CHECKPOINT_NAME,
    CONFIG_NAME,
    DEFAULT_OUT,
    EVAL_NAME,
    LOG_NAME,
    MESH_NAME,
    METRICS_NAME,
    TURNTABLE_NAME,
    VALIDATION_FOLDER,
    validation_name,
)
from dreamdistill.texture import check_texture_size

# ---- the run folder -----------------------------------------------------------------------------------


def slugify(prompt: str, limit: int = 40) -> str:
    """'A red chair!' -> 'a-red-chair'."""
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:limit].strip("-") or "run"


def create_run_dir(out: Path, prompt: str) -> Path:
    """A new ``OUT/<slug>-<YYYYmmdd-HHMMSS>`` folder (suffixed when taken)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(out) / f"{slugify(prompt)}-{stamp}"
    base.parent.mkdir(parents=True, exist_ok=True)
    path, n = base, 1
    while True:  # mkdir, not exists(): two runs of one prompt started in the same second each get their own folder
        try:
            path.mkdir()
            return path
        except FileExistsError:
            n += 1
            path = base.with_name(f"{base.name}-{n}")


def load_run(run_dir: str | Path) -> tuple[Path, LiftConfig, dict | None]:
    """The config and the checkpoint (None before the first one) of an existing run folder."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_NAME).is_file():
        raise DreamDistillError(f"{run_dir} is not a text-to-3D run: it has no {CONFIG_NAME} "
                                "(pass a folder made by `dreamdistill PROMPT`, e.g. runs/a-red-chair-...)")
    try:
        config = from_dict(LiftConfig, read_yaml(run_dir / CONFIG_NAME))
        validate(dataclasses.replace(config, device=None))  # the device is this machine's choice, checked on use
    except DreamDistillError as error:
        raise DreamDistillError(f"{run_dir / CONFIG_NAME}: {error}; correct that file") from None
    checkpoint = None
    if (run_dir / CHECKPOINT_NAME).is_file():
        checkpoint = torch_load_checked(run_dir / CHECKPOINT_NAME, ("step", "field"),
                                        "move it away to start this run over from step 0")
    return run_dir, config, checkpoint


@contextlib.contextmanager
def checkpoint_matches_config(run_dir: Path):
    """Turn a failure to load a checkpoint into a scene built from config.yaml into one line."""
    try:
        yield
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        raise DreamDistillError(f"{run_dir / CHECKPOINT_NAME} does not match {run_dir / CONFIG_NAME} "
                                f"({first_line(error)}); put back the settings the run was made with") from None


def restore(lifter: Lifter, run_dir: Path, checkpoint: dict) -> tuple[int, float]:
    """Load a checkpoint into ``lifter`` (one line when it does not match the config); returns (step, seconds)."""
    with checkpoint_matches_config(run_dir):
        lifter.load_state_dict(checkpoint)
    return int(checkpoint["step"]), float(checkpoint.get("seconds", 0.0))


# ---- the teacher --------------------------------------------------------------------------------------


def teacher_image_size(name_or_path: str) -> int | None:
    """The image size a teacher folder takes, read from its config files (None when they do not say)."""
    import json

    from dreamdistill.diffusion.teacher import TEACHER_CONFIG_NAME, resolve_teacher_path

    path = resolve_teacher_path(name_or_path)
    try:
        if (path / TEACHER_CONFIG_NAME).is_file():
            return int(json.loads((path / TEACHER_CONFIG_NAME).read_text())["image_size"])
        unet = json.loads((path / "unet" / "config.json").read_text())
        vae = json.loads((path / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, KeyError, ValueError, TypeError):
        return None


def teacher_vocabulary(name_or_path: str) -> dict | None:
    """A toy teacher's vocabulary, read from its folder without loading it (None for other or missing teachers)."""

    from dreamdistill.diffusion.teacher import read_folder_notes, resolve_teacher_path

    try:
        return read_folder_notes(resolve_teacher_path(name_or_path)).get("vocabulary")
    except DreamDistillError:
        return None


def quiet_libraries() -> None:
    """No progress bars or info/warning chatter from transformers and diffusers while loading models."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def load_teacher(config: LiftConfig):
    """The teacher, with the render resolutions checked against it (before loading when the folder says)."""
    from dreamdistill.diffusion.teacher import Teacher

    size = teacher_image_size(config.teacher)
    if size is not None:
        check_resolutions(config, size)
    quiet_libraries()
    teacher = Teacher.from_pretrained(config.teacher, device=config.device)
    check_resolutions(config, teacher.image_size)
    teacher.check_encoder(config.guidance.encoder)
    return teacher


# ---- the loop -----------------------------------------------------------------------------------------


def save_checkpoint(lifter: Lifter, run_dir: Path, step: int, seconds: float) -> None:
    torch_save_atomic(run_dir / CHECKPOINT_NAME, {"step": step, "seconds": seconds, **lifter.state_dict()})


def save_validation(lifter: Lifter, run_dir: Path, step: int) -> Path:
    """Four orbit renders side by side: validation/step-NNNNNN.png."""
    images = lifter.render_views(orbit_cameras(4, elevation=ORBIT_ELEVATION), lifter.config.view_resolution)
    strip = np.concatenate(list(to_uint8(images)), axis=1)
    return save_image_atomic(run_dir / VALIDATION_FOLDER / validation_name(step), strip)


def finish(lifter: Lifter, run_dir: Path, steps: int, seconds: float, extra_metrics: dict | None = None) -> dict:
    """Turntable, meshes (an empty scene gives a warning and no mesh), metrics.json and report.html after the last
    step. ``extra_metrics`` are added to (and override) metrics.json's entries, e.g. ``method: instant``."""
    config = lifter.config
    save_validation(lifter, run_dir, steps)
    cameras = orbit_cameras(config.turntable_frames, elevation=ORBIT_ELEVATION)
    written = write_turntable(to_uint8(lifter.render_views(cameras, config.turntable_resolution)),
                              run_dir / TURNTABLE_NAME)
    shape = None
    try:
        mesh_files, mesh = export_meshes(lifter.field, config.export, run_dir, lifter.device, lifter.step_size)
        mesh_stats = mesh.stats()
        shape = shape_score(mesh.vertices, mesh.faces, config.prompt, lifter.teacher.info.vocabulary)
    except EmptySceneError as error:
        print(f"warning: no mesh written: {error}", file=sys.stderr)
        mesh_files, mesh_stats = [], None
    metrics = {**evaluate(lifter, config.prompt), "shape": shape, "seconds": round(seconds, 1), "steps": steps,
               "nonfinite_steps": lifter.nonfinite_steps, "method": config.method, "prompt": config.prompt,
               "mesh": mesh_stats, **(extra_metrics or {})}
    written += mesh_files + [write_json_atomic(run_dir / METRICS_NAME, metrics)]
    try:
        written.append(write_report(run_dir))
    except Exception as error:  # everything else is written: a page that fails must not fail the run
        print(f"warning: no report.html written ({error}); `dreamdistill report {run_dir}` rebuilds it",
              file=sys.stderr)
    return {"run_dir": run_dir, "files": written, "metrics": metrics}


def optimise(lifter: Lifter, run_dir: Path, checkpoint: dict | None = None, stop_after: int | None = None,
             progress_bar: bool = True) -> dict | None:
    """Run (or continue) the loop with checkpoints and validation, then :func:`finish`.

    ``stop_after`` ends the loop after that step without finishing (used to test resuming); returns None then.
    Ctrl-C or SIGTERM ends the loop after the current step with a checkpoint (:class:`Interrupted`). A run whose
    steps are mostly non-finite (more than half of ``steps``), or whose field never moved, stops with a
    DreamDistillError before anything is exported.
    """
    from tqdm import tqdm

    config = lifter.config
    start, seconds = restore(lifter, run_dir, checkpoint) if checkpoint is not None else (0, 0.0)
    log = run_dir / LOG_NAME
    truncate_jsonl(log, lambda record: record.get("step", 0) < start)  # a resumed run replays later steps
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc=config.method,
               unit="step", disable=not progress_bar, dynamic_ncols=True, file=sys.stderr)
    began = time.perf_counter() - seconds
    with StopRequest() as stop, bar:
        pending: list[tuple[int, dict]] = []  # the fast path's steps not yet logged (stats still on the device)
        for step in bar:
            pending.append((step, lifter.step(step)))
            done = step + 1
            if lifter.fast_path and not (done % LOG_EVERY == 0 or done % config.checkpoint_every == 0
                                         or done == config.steps or stop.requested or done == stop_after
                                         or config.validate_every and done % config.validate_every == 0):
                continue  # no host sync until the next log write
            for logged_step, step_stats in pending:
                stats = {k: float(v) for k, v in step_stats.items()}
                append_jsonl(log, {"step": logged_step, **{k: round(v, 6) for k, v in stats.items()}})
            pending.clear()
            bar.set_postfix(loss=f"{stats['loss']:.3g}", opacity=f"{stats['opacity']:.2f}", refresh=False)
            if lifter.nonfinite_steps * 2 > config.steps:
                bar.close()
                raise DreamDistillError(
                    f"the optimisation diverged: {lifter.nonfinite_steps} of the {done} steps so far had a NaN or "
                    f"infinite loss or gradient (more than half of the run's {config.steps}), so nothing is "
                    f"exported from {run_dir}; lower guidance.guidance_scale or the learning rates and start again")
            if done % config.checkpoint_every == 0 or done == config.steps or stop.requested:
                save_checkpoint(lifter, run_dir, done, time.perf_counter() - began)
            if stop.requested:
                bar.close()
                raise Interrupted(f"stopped at step {done} of {config.steps}, checkpoint saved; continue with: "
                                  f"dreamdistill --resume {shlex.quote(str(run_dir))}", stop.signum)
            if config.validate_every and done % config.validate_every == 0 and done < config.steps:
                save_validation(lifter, run_dir, done)
            if stop_after is not None and done >= stop_after:
                return None
    if not lifter.field_moved():
        raise DreamDistillError(
            f"the field never moved from its initial values in {config.steps} steps (learning rates too small, or "
            f"every step skipped), so nothing is exported from {run_dir}; raise optim.grid_learning_rate and "
            "optim.mlp_learning_rate and start again")
    if lifter.nonfinite_steps:
        print(f"warning: {lifter.nonfinite_steps} of {config.steps} steps had a NaN or infinite loss or gradient "
              "and were skipped (metrics.json: nonfinite_steps)", file=sys.stderr)
    return finish(lifter, run_dir, config.steps, time.perf_counter() - began)


def run_device(device: str | None) -> torch.device:
    """``--device`` (checked against this machine), else cuda when available, else cpu."""
    if device is not None:
        check_device(device)
    return torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))


def summary_line(result: dict) -> str:
    """One line: the run folder, the files written and the metrics."""
    metrics = result["metrics"]

    def fmt(value):
        return "n/a" if value is None else f"{value:.2f}"

    names = ", ".join(sorted({p.name for p in result["files"]}))
    return (f"done: {result['run_dir']} ({names}); r_precision {fmt(metrics['r_precision'])}, "
            f"view_consistency {fmt(metrics['view_consistency'])}, {metrics['steps']} steps in "
            f"{metrics['seconds']:.0f} s")


# ---- the commands -------------------------------------------------------------------------------------


def main(args: argparse.Namespace) -> int:
    """``dreamdistill PROMPT`` and ``dreamdistill --resume RUN_DIR``: everything is checked (config, devices,
    resume arguments, checkpoint against config) before the run folder is made or config.yaml rewritten."""
    checkpoint = None
    if args.resume:
        run_dir, config, checkpoint = load_resumed(args)
    else:
        config = config_from_args(args)
        run_dir = None
    check_config(config)
    teacher = load_teacher(config)
    warning = teacher.vocabulary_warning(config.prompt)
    if warning:
        print(warning, file=sys.stderr)
    lifter = Lifter(config, teacher)
    if checkpoint is not None:
        restore(lifter, run_dir, checkpoint)
    if run_dir is None:
        run_dir = create_run_dir(Path(args.out or DEFAULT_OUT), config.prompt)
    try:
        save_yaml(config, run_dir / CONFIG_NAME)
        print(f"{config.method} on {config.teacher!r}: {config.prompt!r} -> {run_dir}", file=sys.stderr)
        result = optimise(lifter, run_dir, checkpoint)
    except OSError as error:
        where = f"{error.strerror or first_line(error)}" + (f": {error.filename}" if error.filename else "")
        raise DreamDistillError(f"writing to the run folder {run_dir} failed ({where}); once there is space or "
                                f"write permission again, continue with: dreamdistill --resume "
                                f"{shlex.quote(str(run_dir))}") from None
    print(summary_line(result))
    return 0


def load_resumed(args: argparse.Namespace) -> tuple[Path, LiftConfig, dict | None]:
    """The run ``--resume`` names, with ``--steps`` / ``--device`` applied; every other setting comes from its
    config.yaml, so giving one is refused, as is ``--steps`` below the checkpoint's step."""
    given = [name for name, value in (("a prompt", args.prompt), ("--guidance", args.guidance),
                                      ("--teacher", args.teacher), ("--seed", args.seed), ("--out", args.out),
                                      ("--config", args.config), ("--set", args.overrides))
             if value not in (None, "", [])]
    if given:
        raise DreamDistillError(f"--resume continues {args.resume} with its own config.yaml, so {', '.join(given)} "
                                "would be ignored; drop them (only --steps and --device may change on resume)")
    run_dir, config, checkpoint = load_run(args.resume)
    changes = {k: v for k, v in (("steps", args.steps), ("device", args.device)) if v is not None}
    config = dataclasses.replace(config, **changes)
    done = int(checkpoint["step"]) if checkpoint is not None else 0
    if config.steps < done:
        name = f"--steps {config.steps}" if args.steps is not None else f"steps={config.steps} in its config.yaml"
        raise DreamDistillError(f"{name} is below the step of {run_dir / CHECKPOINT_NAME} ({done}); "
                                f"pass --steps {done} or more")
    return run_dir, config, checkpoint


def export_run(run_dir: str | Path, formats: list[str], resolution: int | None = None,
               threshold: float | None = None, device: str | None = None,
               texture_size: int | None = None) -> list[Path]:
    """``dreamdistill export RUN_DIR``: meshes from a run's checkpoint (without loading the teacher).
    ``texture_size`` None keeps the run's ``export.texture_size``."""
    for name, value, flag in (("resolution", resolution, "--resolution"), ("threshold", threshold, "--threshold"),
                              ("texture_size", texture_size, "--texture-size")):
        check_field(ExportConfig, name, value, flag)
    run_dir, config, checkpoint = load_run(run_dir)
    if checkpoint is None:
        raise DreamDistillError(f"{run_dir} has no {CHECKPOINT_NAME} yet: nothing to export")
    export = dataclasses.replace(config.export, formats=formats, threshold=threshold,
                                 resolution=config.export.resolution if resolution is None else resolution,
                                 texture_size=config.export.texture_size if texture_size is None else texture_size)
    check_texture_size(export.texture_size, "--texture-size")
    device = run_device(device)
    with checkpoint_matches_config(run_dir):
        field_, _, _ = load_scene(config, checkpoint, device)
    written, _ = export_meshes(field_, export, run_dir, device, marching_step(config.render))
    return written


def eval_run(run_dir: str | Path, views: int | None = None, resolution: int | None = None,
             device: str | None = None) -> dict:
    """``dreamdistill eval RUN_DIR``: the metrics of ``views`` orbit renders of a run's checkpoint, written to
    RUN_DIR/eval.json (without loading the teacher). ``views`` and ``resolution`` default to the run's
    ``metric_views`` and ``view_resolution``, which reproduces metrics.json."""
    check_field(LiftConfig, "metric_views", views, "--views")
    check_field(LiftConfig, "view_resolution", resolution, "--resolution")
    run_dir, config, checkpoint = load_run(run_dir)
    views = config.metric_views if views is None else views
    resolution = config.view_resolution if resolution is None else resolution
    if checkpoint is None:
        raise DreamDistillError(f"{run_dir} has no {CHECKPOINT_NAME} yet: nothing to evaluate")
    if not os.access(run_dir, os.W_OK):
        raise DreamDistillError(f"cannot write {EVAL_NAME} into {run_dir}: it is not writable")
    device = run_device(device)
    with checkpoint_matches_config(run_dir):
        field_, background, occupancy = load_scene(config, checkpoint, device)

    def render_views(cameras: Cameras) -> torch.Tensor:
        return render_orbit(field_, background, occupancy, config.render, cameras, resolution)

    vocabulary = teacher_vocabulary(config.teacher)
    metrics = score_orbit(render_views, views, config.prompt, vocabulary, explain=True)
    shape = None
    if (run_dir / MESH_NAME).is_file():
        import trimesh

        mesh = trimesh.load(run_dir / MESH_NAME, process=False)
        shape = shape_score(np.asarray(mesh.vertices), np.asarray(mesh.faces), config.prompt, vocabulary)
    result = {**metrics, "shape": shape, "views": views, "resolution": resolution, "step": int(checkpoint["step"]),
              "prompt": config.prompt}
    write_json_atomic(run_dir / EVAL_NAME, result)
    return result
