"""Text-to-3D quality and time: SDS and VSD on a fixed list of toy-world prompts, side by side.

    python benchmarks/text_to_3d.py [--methods sds,vsd] [--prompts N | --prompt TEXT ...] [--steps S] [--teacher toy]
                                    [--set KEY=VALUE ...] [--runs DIR] [--out PATH] [--jobs N]

Each (prompt, method) pair is one ``dreamdistill PROMPT --guidance METHOD`` run with the shipped toy preset
(configs/toy-METHOD.yaml, overrides applied to both). Per run: R-precision (8 orbit renders at elevation 15°
classified as the prompt's category and colour by the toy evaluator), view consistency (fronted categories:
predicted view = camera's view label), nearest-real IoU of the exported mesh, its normal consistency and
surface-area ratio against that nearest true object, mesh health and wall time. Per method: means and minima,
and which method is better (higher mean nearest-real IoU, then R-precision).
Targets (the shapes issue, for the better method, which the default preset should be): nearest-real IoU
>= 0.55 for every prompt and >= 0.6 on average, mean R-precision >= 0.9 with none under 0.75, mean view
consistency >= 0.7, every export one component holding >= 95 % of the surface area.
Writes ``benchmarks/results/text_to_3d.json`` after every run and, at the end, ``text_to_3d.png`` (rows: each
method's prompts in order, 8 turntable frames 45° apart, then the exported mesh from the same 8 cameras);
rerunning the same command skips the runs
already in it (same overrides, steps and teacher, and the method's preset unchanged), so an interrupted
benchmark resumes. Runs go method by method (every prompt of the first method, then the next); with
``--jobs N`` to N worker processes (CPU threads split between them).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import multiprocessing
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from dreamdistill.config import load_config, save_yaml, to_dict
from dreamdistill.fileio import write_json_atomic
from dreamdistill.lift3d import DEFAULT_METHOD, LiftConfig, Lifter, configs_dir, create_run_dir, load_teacher, optimise
from dreamdistill.lift3d.config import default_preset
from dreamdistill.machine import device_info

PROMPTS = (
    "a red chair",
    "a blue mug",
    "a green car",
    "a yellow house",
    "a purple bed",
    "a gray snowman",
    "an orange table",
    "a pink lamp",
    "a brown chair",
    "a blue car",
)
"""Fixed prompts: every toy category (tables and lamps have no front: no view consistency), varied colours."""
TARGETS = {"mean_nearest_real_iou": 0.6, "min_nearest_real_iou": 0.55, "mean_r_precision": 0.9,
           "min_r_precision": 0.75, "mean_view_consistency": 0.7}
"""The shape issue's targets for the better method (and every export: one component with >= 95 % of the area)."""
LATENT_TARGETS = {"mean_nearest_real_iou": 0.65, "min_prompt_mean_iou": 0.5, "mean_normal_consistency": 0.78,
                  "mean_r_precision": 0.9, "mean_view_consistency": 0.7, "max_wall_seconds": 360}
"""Issue 32's targets for text-to-3D through the latent teacher (toy-sd), over 8 prompts × 3 seeds: a prompt's
mean over its seeds is a category's mean; one prompt at most 6 minutes wall on 2 cores."""


def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.fmean(present), 4) if present else None


def preset_path(method: str, teacher: str | None) -> Path:
    """The preset ``dreamdistill PROMPT --teacher TEACHER --guidance METHOD`` picks (toy-METHOD for the pixel toy
    teacher, toy-sd-METHOD for toy-sd)."""
    return default_preset(teacher or "toy", method) or configs_dir() / f"toy-{method}.yaml"


def run_one(prompt: str, method: str, args: argparse.Namespace, seed: int | None = None) -> dict:
    preset = preset_path(method, args.teacher)
    config = load_config(LiftConfig, preset, list(args.overrides))
    changes = {"prompt": prompt, "method": method, "teacher": args.teacher, "device": args.device, "seed": seed}
    if args.steps:
        changes["steps"] = args.steps
    config = dataclasses.replace(config, **{k: v for k, v in changes.items() if v is not None})
    teacher = load_teacher(config)  # fresh per run: VSD adds its critic adapter to the teacher's UNet
    run_dir = create_run_dir(Path(args.runs), f"{method}-{prompt}" + (f"-seed{seed}" if seed is not None else ""))
    save_yaml(config, run_dir / "config.yaml")
    start = time.perf_counter()
    result = optimise(Lifter(config, teacher), run_dir, progress_bar=not args.quiet)
    metrics = result["metrics"]
    shape = metrics.get("shape") or {}
    return {"prompt": prompt, "method": method, "seed": config.seed, "preset": preset_hash(method, args.teacher),
            "run_dir": str(run_dir),
            "wall_seconds": round(time.perf_counter() - start, 1), "optimisation_seconds": metrics["seconds"],
            "steps": metrics["steps"], "r_precision": metrics["r_precision"],
            "view_consistency": metrics["view_consistency"], "nearest_real_iou": shape.get("iou", {}).get("best"),
            "normal_consistency": shape.get("surface", {}).get("normal_consistency"),
            "area_ratio": shape.get("surface", {}).get("area_ratio"), "components": shape.get("components"),
            "largest_area_share": shape.get("largest_area_share"), "mesh": metrics["mesh"]}


def per_prompt(runs: list[dict]) -> dict:
    """Each prompt's mean nearest-real IoU and normal consistency over its runs (seeds)."""
    prompts = dict.fromkeys(r["prompt"] for r in runs)
    return {prompt: {"runs": sum(r["prompt"] == prompt for r in runs),
                     "mean_nearest_real_iou": mean([r.get("nearest_real_iou") for r in runs if r["prompt"] == prompt]),
                     "mean_normal_consistency": mean([r.get("normal_consistency") for r in runs
                                                      if r["prompt"] == prompt])}
            for prompt in prompts}


def latent_checks(best: dict) -> dict:
    """Issue 32's targets (:data:`LATENT_TARGETS`) against one method's summary."""
    return {
        "mean_iou": (best["mean_nearest_real_iou"] or 0) >= LATENT_TARGETS["mean_nearest_real_iou"],
        "min_prompt_mean_iou": (best["min_prompt_mean_iou"] or 0) >= LATENT_TARGETS["min_prompt_mean_iou"],
        "mean_normal_consistency": (best["mean_normal_consistency"] or 0) >= LATENT_TARGETS["mean_normal_consistency"],
        "mean_r_precision": (best["mean_r_precision"] or 0) >= LATENT_TARGETS["mean_r_precision"],
        "mean_view_consistency": (best["mean_view_consistency"] or 0) >= LATENT_TARGETS["mean_view_consistency"],
        "one_component_95": best["one_component_95"] == best["runs"],
        "max_wall_seconds": best["max_wall_seconds"] <= LATENT_TARGETS["max_wall_seconds"],
    }


def summarise(runs: list[dict], methods: list[str], teacher: str = "toy") -> dict:
    """Per-method means and minima, the better method (higher mean nearest-real IoU, then R-precision) and the
    shape issue's targets for it."""
    per_method = {}
    for method in methods:
        mine = [r for r in runs if r["method"] == method]
        if mine:
            ious = [r["nearest_real_iou"] for r in mine if r.get("nearest_real_iou") is not None]
            consistencies = [r["normal_consistency"] for r in mine if r.get("normal_consistency") is not None]
            per_method[method] = {
                "runs": len(mine),
                "mean_r_precision": mean([r["r_precision"] for r in mine]),
                "min_r_precision": min(r["r_precision"] for r in mine),
                "mean_view_consistency": mean([r["view_consistency"] for r in mine]),
                "mean_nearest_real_iou": mean(ious),
                "min_nearest_real_iou": min(ious, default=None),
                "mean_normal_consistency": mean(consistencies),
                "min_normal_consistency": min(consistencies, default=None),
                "mean_area_ratio": mean([r.get("area_ratio") for r in mine]),
                "one_component_95": sum(1 for r in mine if (r.get("largest_area_share") or 0) >= 0.95),
                "mean_wall_seconds": mean([r["wall_seconds"] for r in mine]),
                "max_wall_seconds": max(r["wall_seconds"] for r in mine),
                "per_prompt": per_prompt(mine),
            }
            per_method[method]["min_prompt_mean_iou"] = min(
                (p["mean_nearest_real_iou"] for p in per_method[method]["per_prompt"].values()
                 if p["mean_nearest_real_iou"] is not None), default=None)
    better = max(per_method, key=lambda m: (per_method[m]["mean_nearest_real_iou"] or 0,
                                            per_method[m]["mean_r_precision"] or 0))
    best = per_method[better]
    checks = {
        "mean_iou": (best["mean_nearest_real_iou"] or 0) >= TARGETS["mean_nearest_real_iou"],
        "min_iou": (best["min_nearest_real_iou"] or 0) >= TARGETS["min_nearest_real_iou"],
        "mean_r_precision": (best["mean_r_precision"] or 0) >= TARGETS["mean_r_precision"],
        "min_r_precision": best["min_r_precision"] >= TARGETS["min_r_precision"],
        "mean_view_consistency": (best["mean_view_consistency"] or 0) >= TARGETS["mean_view_consistency"],
        "one_component_95": best["one_component_95"] == best["runs"],
    }
    targets = TARGETS
    if teacher != "toy":
        targets, checks = LATENT_TARGETS, latent_checks(best)
    summary = {"methods": per_method, "better_method": better, "default_method": DEFAULT_METHOD,
               "targets": targets, "checks": checks, "targets_met": all(checks.values()),
               "default_is_better": better == DEFAULT_METHOD}
    sds, vsd = per_method.get("sds"), per_method.get("vsd")
    if sds and vsd and sds["mean_wall_seconds"]:
        summary["vsd_over_sds_time"] = round(vsd["mean_wall_seconds"] / sds["mean_wall_seconds"], 3)
    return summary


def finished_runs(path: Path, settings: dict) -> list[dict]:
    """Runs of an earlier, interrupted benchmark that still count: same overrides, steps and teacher, and the
    preset of the run's method unchanged (a changed preset invalidates that method's runs only)."""
    if not path.is_file():
        return []
    earlier = json.loads(path.read_text())
    same = {k: v for k, v in settings.items() if k != "presets"}
    if {k: v for k, v in earlier.get("settings", {}).items() if k != "presets"} != same:
        return []
    return [r for r in earlier.get("runs", []) if r.get("preset") == settings["presets"].get(r["method"])]


FIGURE_TILE = 96
"""Pixels per view in the figure."""


def mesh_views(run_dir: Path, frames: int, size: int):
    """``frames`` orbit views (elevation 15°, azimuth 0° first) of a run's exported mesh.ply, or None."""
    import numpy as np
    import trimesh

    from dreamdistill.lift3d import ORBIT_ELEVATION
    from dreamdistill.render.cameras import orbit_cameras
    from dreamdistill.render.mesh_view import render_mesh

    path = run_dir / "mesh.ply"
    if not path.is_file():
        return None
    mesh = trimesh.load(path, process=False)
    colors = np.asarray(mesh.visual.vertex_colors)[:, :3]
    return render_mesh(np.asarray(mesh.vertices), np.asarray(mesh.faces), colors,
                       orbit_cameras(frames, elevation=ORBIT_ELEVATION), size)


def label_tile(text: str, width: int, height: int):
    """A white tile with ``text`` (wrapped) in black."""
    import textwrap

    import numpy as np
    from PIL import Image, ImageDraw

    tile = Image.new("RGB", (width, height), (255, 255, 255))
    lines = [wrapped for line in text.splitlines() for wrapped in textwrap.wrap(line, 18)]
    ImageDraw.Draw(tile).multiline_text((4, 4), "\n".join(lines), fill=(0, 0, 0))
    return np.asarray(tile)


def write_figure(runs: list[dict], methods: list[str], prompts: list[str], path: Path, frames: int = 8,
                 teacher: str = "toy", others: tuple[tuple[str, list[dict]], ...] = ()) -> None:
    """One row per (teacher, method, prompt), teachers then methods in blocks (each prompt's lowest seed): a label,
    ``frames`` NeRF turntable frames evenly spaced around the orbit, then the exported mesh from the same cameras
    (so mesh defects show beside the field). ``others``: (teacher, runs) of other results files, drawn after."""
    import imageio.v3 as iio
    import numpy as np
    from PIL import Image

    def tile(image):
        return np.asarray(Image.fromarray(image).resize((FIGURE_TILE, FIGURE_TILE), Image.LANCZOS))

    rows = []
    blocks = [(teacher, runs, method) for method in methods]
    blocks += [(name, theirs, method) for name, theirs in others for method in methods]
    for name, block_runs, method in blocks:
        for prompt in prompts:
            mine = [r for r in block_runs if r["method"] == method and r["prompt"] == prompt]
            run = min(mine, key=lambda r: r.get("seed") or 0, default=None)
            gif = Path(run["run_dir"]) / "turntable.gif" if run else None
            if gif is None or not gif.is_file():
                continue
            turntable = iio.imread(gif, index=None)[..., :3]
            picks = np.linspace(0, len(turntable), frames, endpoint=False).astype(int)
            meshes = mesh_views(Path(run["run_dir"]), frames, FIGURE_TILE)
            if meshes is None:
                meshes = np.full((frames, FIGURE_TILE, FIGURE_TILE, 3), 255, np.uint8)
            iou, consistency = run.get("nearest_real_iou"), run.get("normal_consistency")
            label = (f"{name} {method.upper()}\n{prompt}" + (f"\nIoU {iou:.2f}" if iou is not None else "")
                     + (f"\nNC {consistency:.2f}" if consistency is not None else ""))
            rows.append(np.concatenate([label_tile(label, FIGURE_TILE + 32, FIGURE_TILE)]
                                       + [tile(f) for f in turntable[picks]] + list(meshes), axis=1))
    if rows:
        iio.imwrite(path, np.concatenate(rows, axis=0))


def changed_settings(config: dict, defaults: dict) -> dict:
    """The entries of a nested settings mapping that differ from ``defaults`` (same nesting)."""
    changed = {}
    for key, value in config.items():
        default = defaults.get(key)
        if isinstance(value, dict) and isinstance(default, dict):
            inner = changed_settings(value, default)
            if inner:
                changed[key] = inner
        elif key not in defaults or value != default:
            changed[key] = value
    return changed


def preset_hash(method: str, teacher: str | None = None) -> str:
    """Short hash of the settings the method's preset for ``teacher`` changes from the config's defaults, as loaded
    (comments and layout do not count, and a new config field left at its default does not invalidate earlier
    runs)."""
    config = load_config(LiftConfig, preset_path(method, teacher), [])
    settings = changed_settings(to_dict(config), to_dict(LiftConfig()))
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def limit_threads(threads: int) -> None:
    """Worker initialiser: this process's share of the CPU threads."""
    import torch

    torch.set_num_threads(threads)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="sds,vsd")
    parser.add_argument("--prompts", type=int, default=len(PROMPTS), help="use the first N prompts")
    parser.add_argument("--prompt", action="append", default=[], metavar="TEXT",
                        help="run these prompts instead of the fixed list (repeatable)")
    parser.add_argument("--steps", type=int, default=None, help="override the presets' steps")
    parser.add_argument("--teacher", default=None, help="default: the presets' (toy)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs", default="runs/benchmark-text-to-3d", help="parent folder of the run folders")
    parser.add_argument("--out", default="benchmarks/results/text_to_3d.json")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time, each in its own process")
    parser.add_argument("--figure-only", action="store_true", help="redraw the figure from the finished runs")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds, each prompt run once per seed "
                        "(default: the preset's seed)")
    parser.add_argument("--figure-with", action="append", default=[], metavar="JSON",
                        help="also draw the seed-0 rows of another teacher's results file (repeatable)")
    args = parser.parse_args()
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    # a changed preset invalidates earlier runs
    presets = {method: preset_hash(method, args.teacher) for method in methods}
    settings = {"overrides": args.overrides, "steps_override": args.steps, "teacher": args.teacher or "toy",
                "presets": presets}
    out = Path(args.out)
    runs = finished_runs(out, settings)
    info = device_info(args.device or "cpu")
    prompts = list(args.prompt) or list(PROMPTS[: args.prompts])
    seeds = [int(seed) for seed in args.seeds.split(",")] if args.seeds else [None]
    todo = [(prompt, method, seed) for method in methods for seed in seeds for prompt in prompts  # method by method
            if not any(r["method"] == method and r["prompt"] == prompt and (seed is None or r.get("seed") == seed)
                       for r in runs)]
    if args.figure_only:  # redraw what the file holds, whatever code wrote it
        runs = json.loads(out.read_text()).get("runs", []) if out.is_file() else []
        todo = []

    def record(result: dict) -> None:
        runs.append(result)
        print(f"{result['method']} {result['prompt']!r} seed {result.get('seed')}: r_precision "
              f"{result['r_precision']}, view_consistency "
              f"{result['view_consistency']}, IoU {result['nearest_real_iou']}, normal consistency "
              f"{result['normal_consistency']}, {result['wall_seconds']} s", flush=True)
        write_json_atomic(out, {"benchmark": "text_to_3d", "settings": settings,
                                "prompts": prompts, "device": info, "jobs": args.jobs,
                                **summarise(runs, methods, settings["teacher"]), "runs": runs})

    if args.jobs <= 1:
        for prompt, method, seed in todo:
            record(run_one(prompt, method, args, seed))
    else:
        args.quiet = True  # interleaved progress bars would be unreadable
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=limit_threads, initargs=(threads,)) as pool:
            futures = [pool.submit(run_one, prompt, method, args, seed) for prompt, method, seed in todo]
            for future in as_completed(futures):
                record(future.result())
    if runs and out.is_file():  # the summary of every run it holds (also when nothing was left to run)
        write_json_atomic(out, {**json.loads(out.read_text()), **summarise(runs, methods, settings["teacher"])})
    figure = out.with_suffix(".png")
    others = []
    for other in args.figure_with:
        report = json.loads(Path(other).read_text())
        others.append((report.get("settings", {}).get("teacher", "toy"), report.get("runs", [])))
    write_figure(runs, methods, prompts, figure, teacher=settings["teacher"], others=tuple(others))
    report = json.loads(out.read_text())
    better = report["better_method"]
    print(f"wrote {out} and {figure.name}: better {better} {report['methods'][better]}")


if __name__ == "__main__":
    main()
