"""Command line: ``dreamdistill PROMPT`` (text-to-3D; ``--instant`` from the instant generator) and the subcommands
``sample``, ``train-teacher``, ``train-instant``, ``distill``, ``batch``, ``export``, ``eval``, ``report`` and ``app``.

User errors (argparse's included) print one line (``error: ...``) and exit with status 2; no tracebacks.
Every setting is checked before any model is loaded or any file written. Ctrl-C / SIGTERM during a
text-to-3D run saves a checkpoint, prints the ``--resume`` command and exits with 130 / 143.
"""

from __future__ import annotations

import argparse
import difflib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

from dreamdistill.config import Device, Range, Seed, check_output_path, validate
from dreamdistill.errors import DreamDistillError, Interrupted

SUBCOMMANDS = ("sample", "train-teacher", "train-instant", "distill", "batch", "export", "eval", "report", "app")


class ArgumentParser(argparse.ArgumentParser):
    """argparse with its errors as one line (a DreamDistillError) instead of the usage block and exit."""

    def error(self, message: str):
        raise DreamDistillError(f"{message} (see `{self.prog} --help`)")


def _flag(key: str) -> str:
    """The command-line flag of a config field: ``dataset_size`` -> ``--dataset-size``."""
    return "--" + key.replace("_", "-")


def _device_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when available)")


def _check_writable(path: Path, folder: bool = True) -> None:
    """Fail early, before any work, when an output location cannot be written."""
    check_output_path(path, "--out", folder=folder)


def _typo_of_subcommand(word: str) -> str | None:
    """The subcommand a one-word first argument was probably meant to be (``smaple`` -> ``sample``)."""
    if word.startswith("-") or " " in word.strip():
        return None
    close = difflib.get_close_matches(word.lower().replace("_", "-"), SUBCOMMANDS, n=1, cutoff=0.75)
    return close[0] if close else None


# ----------------------------------------------------------------------- text-to-3D
def main_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="dreamdistill",
        description="Text-to-3D by score distillation. Subcommands: " + ", ".join(SUBCOMMANDS)
        + " (run `dreamdistill SUBCOMMAND --help`).",
    )
    parser.add_argument("prompt", nargs="?", default=None,
                        help='what to make, e.g. "a red chair" (not needed with --resume)')
    parser.add_argument("--guidance", choices=("sds", "vsd"), default=None, help="score distillation variant")
    parser.add_argument("--teacher", default=None,
                        help="toy (embedded), a folder, or a cached hub id (default: the preset's, else toy)")
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--out", default=None, help="parent folder of the run directory (default: runs)")
    parser.add_argument("--config", default=None, help="a preset, e.g. configs/toy-sds.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--resume", default=None, metavar="RUN_DIR", help="continue an interrupted run")
    parser.add_argument("--instant", action="store_true",
                        help="no optimisation: the run folder from the instant generator in one forward pass "
                             "(toy vocabulary; `dreamdistill --resume RUN_DIR` then optimises it per prompt)")
    parser.add_argument("--init", choices=("random", "instant"), default="random",
                        help="instant: start the per-prompt run from the instant generator's field for the prompt")
    parser.add_argument("--generator", default=None, metavar="DIR",
                        help="instant generator folder (default: the shipped assets/toy-instant)")
    _device_argument(parser)
    return parser


def run_text_to_3d(args: argparse.Namespace) -> int:
    if args.resume is None and not (args.prompt or "").strip():
        raise DreamDistillError('empty prompt: pass what to make, e.g. dreamdistill "a red chair"')
    if args.instant or args.init == "instant":
        if args.resume is not None:
            raise DreamDistillError("--resume continues a run as it was made: drop --instant / --init instant")
        if args.instant and args.init == "instant":
            raise DreamDistillError("choose one: --instant (no optimisation) or --init instant (optimise from it)")
        _check_writable(Path(args.out or "runs"))
        from dreamdistill.instant.infer import main as instant_main

        return instant_main(args)
    if args.resume is None:
        _check_writable(Path(args.out or "runs"))
    elif not os.access(args.resume, os.W_OK):
        raise DreamDistillError(f"cannot resume {args.resume}: it does not exist or is not writable")
    from dreamdistill.lift3d.run import main as lift3d_main

    return lift3d_main(args)


# -------------------------------------------------------------------------- sample
@dataclass
class SampleOptions:
    """The numbers ``dreamdistill sample`` takes, with their valid values."""

    num: Annotated[int, Range(1, 1024)] = 16
    """Number of samples (-n)."""
    steps: Annotated[int | None, Range(1, 1000)] = None
    """DDIM steps (None: the model's own); at most the 1000 training timesteps of the teachers here."""
    cfg: Annotated[float | None, Range(0, 100)] = None
    """Classifier-free guidance scale (None: the model's own)."""
    seed: Seed = 0
    """Seed of the initial noise."""
    device: Device = None
    """cpu, cuda or cuda:N (None: cuda when available)."""


def sample_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="dreamdistill sample",
                                     description="Draw a grid of 2D samples from a teacher.")
    parser.add_argument("prompt")
    parser.add_argument("-n", "--num", type=int, default=16, help="number of samples")
    parser.add_argument("--steps", type=int, default=None, help="DDIM steps (default: the model's own)")
    parser.add_argument("--cfg", type=float, default=None, help="classifier-free guidance scale")
    parser.add_argument("--model", default="toy",
                        help="toy (the teacher), a shipped student (toy-pd4: 4 steps; toy-dmd, toy-sid: one step), "
                             "a teacher or student folder, or a cached hub id")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="samples.png", help="PNG grid to write")
    _device_argument(parser)
    return parser


def run_sample(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from dreamdistill.diffusion.teacher import Teacher
    from dreamdistill.toyworld.train_teacher import save_grid

    if not args.prompt.strip():
        raise DreamDistillError('empty prompt: pass what to draw, e.g. dreamdistill sample "a red chair, front view"')
    validate(SampleOptions(args.num, args.steps, args.cfg, args.seed, args.device),
             names=lambda key: "-n" if key == "num" else _flag(key))
    out = Path(args.out)
    if out.suffix.lower() not in (".png", ".jpg", ".jpeg"):
        raise DreamDistillError(f"--out {out} must end in .png or .jpg")
    _check_writable(out, folder=False)
    teacher = Teacher.from_pretrained(args.model, device=args.device)
    warning = teacher.vocabulary_warning(args.prompt)
    if warning:
        print(warning, file=sys.stderr)
    defaults = teacher.info.defaults
    steps = args.steps if args.steps is not None else int(defaults.get("default_steps", 64))
    cfg = args.cfg if args.cfg is not None else float(defaults.get("default_cfg", 4.0))
    images = teacher.sample([args.prompt] * args.num, steps=steps, guidance_scale=cfg, seed=args.seed,
                            progress=lambda it: tqdm(it, desc=f"sampling {args.num} × {steps} steps", unit="step"))
    save_grid(images, out, columns=min(8, args.num), scale=max(1, 128 // teacher.image_size))
    print(f"wrote {out} ({args.num} samples, {steps} steps, cfg {cfg}, model {args.model})")
    return 0


# -------------------------------------------------------------------- train-teacher
def train_teacher_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="dreamdistill train-teacher",
        description="Train a toy teacher on the toy world. --format pixel (default): the embedded 32-px pixel "
        "teacher (assets/toy-teacher). --format sd: toy-sd, Stable Diffusion in miniature at 128 px "
        "(assets/toy-sd; stages data, vae, latents, unet, decoder, export). Rerunning the same command resumes "
        "from WORK_DIR; Ctrl-C saves a checkpoint first.",
    )
    parser.add_argument("--format", choices=("pixel", "sd"), default="pixel", help="which teacher to train")
    parser.add_argument("--out", default=None, help="teacher folder to write (default: assets/toy-teacher or "
                        "assets/toy-sd)")
    parser.add_argument("--work-dir", default=None, help="checkpoints, data cache, samples, log (default: "
                        "runs/toy-teacher or runs/toy-sd)")
    parser.add_argument("--stage", default=None, help="sd only: all (default), data, vae, latents, unet, "
                        "decoder or export")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="sd only: any training setting, e.g. --set unet_minutes=80 (repeatable)")
    parser.add_argument("--steps", type=int, default=None, help="pixel only: optimiser steps")
    parser.add_argument("--batch-size", type=int, default=None, help="pixel only")
    parser.add_argument("--width", type=int, default=None, help="pixel only: UNet width (first level channels)")
    parser.add_argument("--dataset-size", type=int, default=None)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (0 = default)")
    parser.add_argument("--device", default=None)
    return parser


def run_train_teacher(args: argparse.Namespace) -> int:
    shared = {key: value for key, value in (("out", args.out), ("work_dir", args.work_dir),
                                            ("dataset_size", args.dataset_size), ("seed", args.seed),
                                            ("threads", args.threads), ("device", args.device)) if value is not None}
    if args.format == "sd":
        from dreamdistill.config import from_dict, merge_override, parse_override
        from dreamdistill.toyworld.train_sd_teacher import SDTeacherTrainConfig, train_sd_teacher

        for flag, value in (("--steps", args.steps), ("--batch-size", args.batch_size), ("--width", args.width)):
            if value is not None:
                raise DreamDistillError(f"{flag} is for --format pixel: with --format sd pass --set, e.g. "
                                        "--set unet_steps=20000 (see dreamdistill/toyworld/train_sd_teacher.py)")
        data = dict(shared, **({"stage": args.stage} if args.stage else {}))
        for text in args.overrides:
            data = merge_override(data, *parse_override(text))
        config = from_dict(SDTeacherTrainConfig, data)
        validate(config, names=_flag)
        train_sd_teacher(config)
        return 0
    if args.stage or args.overrides:
        raise DreamDistillError("--stage and --set are for --format sd (the pixel teacher has one stage)")
    from dreamdistill.toyworld.train_teacher import TeacherTrainConfig, train_teacher

    pixel = {key: value for key, value in (("steps", args.steps), ("batch_size", args.batch_size),
                                           ("width", args.width)) if value is not None}
    config = TeacherTrainConfig(**shared, **pixel)
    validate(config, names=_flag)
    train_teacher(config)
    return 0


# -------------------------------------------------------------------- train-instant
def train_instant_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="dreamdistill train-instant",
        description="Train the instant generator: one text-conditioned field for the toy vocabulary by amortised "
        "SDS (16 colour × category pairs held out). Rerunning the same command resumes from OUT/checkpoint.pt; "
        "Ctrl-C saves a checkpoint. OUT/generator/ is the shippable generator (`dreamdistill PROMPT --instant "
        "--generator OUT/generator`).",
    )
    parser.add_argument("--out", default="runs/instant-toy", help="training folder (default: runs/instant-toy)")
    parser.add_argument("--config", default=None, help="preset (default: configs/instant-toy.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--steps", type=int, default=None, help="generator updates (may grow on resume)")
    parser.add_argument("--teacher", default=None, help="toy (embedded) or a toy-teacher folder")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: the preset's, 1)")
    _device_argument(parser)
    return parser


def run_train_instant(args: argparse.Namespace) -> int:
    from dreamdistill.instant.run import config_for_training, train

    overrides = list(args.overrides)
    for key, value in (("steps", args.steps), ("teacher", args.teacher), ("threads", args.threads),
                       ("device", args.device)):
        if value is not None:
            overrides.append(f"{key}={value}")
    _check_writable(Path(args.out))
    train(config_for_training(args.config, overrides), Path(args.out))
    return 0


# -------------------------------------------------------------------------- distill
def distill_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="dreamdistill distill",
        description="Distill the teacher into a fast sampler saved as a teacher-format folder "
        "(sample it with `dreamdistill sample PROMPT --model OUT`). Rerunning the same command resumes. "
        "Multi-GPU: `accelerate launch -m dreamdistill.cli distill ...`.",
    )
    parser.add_argument("method", choices=("kd", "pd", "guided", "dmd", "sid"),
                        help="kd: one-step regression on teacher rollouts; pd: progressive distillation; "
                        "guided: w-conditioned student, then PD; dmd: one-step distribution matching; "
                        "sid: one-step score identity distillation")
    parser.add_argument("--teacher", default=None, help="toy (embedded), a teacher folder, or a cached hub id")
    parser.add_argument("--out", default=None, help="student folder to write (default: students/METHOD)")
    parser.add_argument("--config", default=None,
                        help="YAML preset (default: the shipped configs/distill-METHOD.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set pd.student_steps=8 (repeatable)")
    parser.add_argument("--steps", type=int, default=None, help="optimiser steps per phase (loop.steps)")
    parser.add_argument("--batch-size", type=int, default=None, help="per-process batch size (loop.batch_size)")
    parser.add_argument("--work-dir", default=None, help="checkpoints, caches, log (default: OUT-work)")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--device", choices=("auto", "cpu"), default=None,
                        help="auto: a GPU when there is one (accelerate's choice); cpu: force the CPU")
    return parser


def run_distill(args: argparse.Namespace) -> int:
    from dreamdistill.config import load_config
    from dreamdistill.distill import DistillConfig, distill, preset_path

    preset = args.config or (preset_path(args.method) if preset_path(args.method).is_file() else None)
    overrides = list(args.overrides)
    for key, value in (("teacher", args.teacher), ("out", args.out), ("work_dir", args.work_dir),
                       ("loop.steps", args.steps), ("loop.batch_size", args.batch_size), ("loop.seed", args.seed),
                       ("loop.device", args.device)):
        if value is not None:
            overrides.append(f"{key}={value}")
    base = {"method": args.method, "out": f"students/{args.method}"}
    config = load_config(DistillConfig, preset, overrides, base=base)
    if config.method != args.method:
        raise DreamDistillError(f"config {preset} is for method {config.method!r}, not {args.method!r}; "
                                f"pass --config configs/distill-{args.method}.yaml")
    distill(config)
    return 0


# ---------------------------------------------------------------------------- batch
def batch_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="dreamdistill batch",
        description="One text-to-3D run per line of PROMPTS.txt (blank and # lines skipped), each in "
        "OUT/NNN-<prompt>/ (NNN: the line number), with the settings of a single run; then OUT/summary.json and "
        "OUT/index.html. Rerunning the same command skips finished prompts and resumes interrupted ones. Several "
        "processes split the prompts (one GPU each): `accelerate launch --multi_gpu --num_processes N -m "
        "dreamdistill.cli batch ...`, several machines through an accelerate config.",
    )
    parser.add_argument("prompts", metavar="PROMPTS.txt", help="text file, one prompt per line")
    parser.add_argument("--out", required=True, help="folder of the run folders, summary.json and index.html")
    parser.add_argument("--guidance", choices=("sds", "vsd"), default=None, help="score distillation variant")
    parser.add_argument("--teacher", default=None,
                        help="toy (embedded), a folder, or a cached hub id (default: the preset's, else toy)")
    parser.add_argument("--steps", type=int, default=None, help="optimisation steps")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--config", default=None, help="a preset, e.g. configs/toy-sds.yaml")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per process (default: torch's)")
    _device_argument(parser)
    return parser


def run_batch(args: argparse.Namespace) -> int:
    from dreamdistill.lift3d.batch import batch

    if args.threads is not None and args.threads < 1:
        raise DreamDistillError(f"--threads {args.threads}: pass 1 or more")
    _check_writable(Path(args.out))
    return batch(args)


# --------------------------------------------------------------------------- export
def export_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(prog="dreamdistill export",
                                     description="Write meshes of a text-to-3D run from its checkpoint.")
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder made by `dreamdistill PROMPT`")
    parser.add_argument("--format", default="glb,obj,ply", help="comma-separated: glb, obj, ply")
    parser.add_argument("--resolution", type=int, default=256, help="marching-cubes samples along the longest side")
    parser.add_argument("--threshold", type=float, default=None, help="density level (default: automatic)")
    parser.add_argument("--texture-size", type=int, default=None, metavar="N",
                        help="also write mesh_textured.obj with an N×N albedo texture (needs xatlas); "
                             "0: vertex colours only (default: the run's export.texture_size)")
    _device_argument(parser)
    return parser


def run_export(args: argparse.Namespace) -> int:
    from dreamdistill.export import FORMATS
    from dreamdistill.lift3d.run import export_run

    formats = [f.strip().lower() for f in args.format.split(",") if f.strip()]
    unknown = [f for f in formats if f not in FORMATS]
    if not formats or unknown:
        raise DreamDistillError(f"--format {args.format!r}: choose from {', '.join(FORMATS)}")
    if not os.access(args.run_dir, os.W_OK):
        raise DreamDistillError(f"cannot export into {args.run_dir}: it does not exist or is not writable")
    written = export_run(args.run_dir, formats, args.resolution, args.threshold, args.device, args.texture_size)
    print(f"wrote {', '.join(str(p) for p in written)}")
    return 0


# ----------------------------------------------------------------------------- eval
def eval_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="dreamdistill eval",
        description="Re-score a text-to-3D run from its checkpoint (without loading the teacher): R-precision and "
        "view consistency of orbit renders (elevation 15°) by the toy evaluator, and the nearest-real shape IoU of "
        "RUN_DIR/mesh.ply. Prints one JSON object and "
        "writes it to RUN_DIR/eval.json.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder made by `dreamdistill PROMPT`")
    parser.add_argument("--views", type=int, default=None,
                        help="orbit cameras (default: the run's metric_views, which reproduces metrics.json)")
    parser.add_argument("--resolution", type=int, default=None,
                        help="render pixels (default: the run's view_resolution, which reproduces metrics.json)")
    _device_argument(parser)
    return parser


def run_eval(args: argparse.Namespace) -> int:
    import json

    from dreamdistill.lift3d.run import eval_run

    print(json.dumps(eval_run(args.run_dir, args.views, args.resolution, args.device)))
    return 0


# --------------------------------------------------------------------------- report
def report_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="dreamdistill report",
        description="(Re)build RUN_DIR/report.html: the mesh in an interactive 3D view, the turntable, the last "
        "validation strip, the metrics, the curves of log.jsonl and the config, in one self-contained page that "
        "opens from a file:// URL with no network.",
    )
    parser.add_argument("run_dir", metavar="RUN_DIR", help="a folder made by `dreamdistill PROMPT`")
    return parser


def run_report(args: argparse.Namespace) -> int:
    from dreamdistill.report import REPORT_NAME, write_report

    if not Path(args.run_dir).is_dir():
        raise DreamDistillError(f"{args.run_dir} is not a folder; pass a folder made by `dreamdistill PROMPT`")
    if not os.access(args.run_dir, os.W_OK):
        raise DreamDistillError(f"cannot write {REPORT_NAME} into {args.run_dir}: it is not writable")
    print(f"wrote {write_report(args.run_dir)}")
    return 0


# ------------------------------------------------------------------------------ app
def app_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="dreamdistill app",
        description="A local web page (Gradio) for text-to-3D: prompt, teacher, method, steps, seed, instant; live "
        "step, loss and validation strip; the mesh in a 3D view, downloads and the report. Each run is an ordinary "
        "run folder under --out (`dreamdistill --resume RUN_DIR` continues it); one run at a time. Needs "
        '`pip install "dreamdistill[app]"`.',
    )
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to serve on (default: 127.0.0.1, this machine only; 0.0.0.0: every interface)")
    parser.add_argument("--port", type=int, default=7860, help="port (default: 7860)")
    parser.add_argument("--out", default="runs", help="parent folder of the run folders (default: runs)")
    return parser


def run_app(args: argparse.Namespace) -> int:
    from dreamdistill.app import serve

    if not 1 <= args.port <= 65535:
        raise DreamDistillError(f"--port {args.port}: choose a port between 1 and 65535")
    serve(args.out, args.host, args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] == "sample":
            return run_sample(sample_parser().parse_args(argv[1:]))
        if argv and argv[0] == "train-teacher":
            return run_train_teacher(train_teacher_parser().parse_args(argv[1:]))
        if argv and argv[0] == "train-instant":
            return run_train_instant(train_instant_parser().parse_args(argv[1:]))
        if argv and argv[0] == "distill":
            return run_distill(distill_parser().parse_args(argv[1:]))
        if argv and argv[0] == "batch":
            return run_batch(batch_parser().parse_args(argv[1:]))
        if argv and argv[0] == "export":
            return run_export(export_parser().parse_args(argv[1:]))
        if argv and argv[0] == "eval":
            return run_eval(eval_parser().parse_args(argv[1:]))
        if argv and argv[0] == "report":
            return run_report(report_parser().parse_args(argv[1:]))
        if argv and argv[0] == "app":
            return run_app(app_parser().parse_args(argv[1:]))
        if argv and _typo_of_subcommand(argv[0]):
            raise DreamDistillError(f"unknown command {argv[0]!r}: did you mean `{_typo_of_subcommand(argv[0])}`? "
                                    f"(to make a one-word prompt, put it after --: dreamdistill -- {argv[0]})")
        return run_text_to_3d(main_parser().parse_args(argv))
    except Interrupted as stop:
        print(f"interrupted: {stop}", file=sys.stderr)
        return stop.exit_code
    except DreamDistillError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; long jobs resume from their last checkpoint when run again", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
