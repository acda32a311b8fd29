"""Instant text-to-3D: the generator's run folders for every toy prompt, training prompts and held-out pairs apart.

    python benchmarks/instant.py [--generator assets/toy-instant] [--prompts all|held-out|training]
                                 [--limit N] [--runs DIR] [--out PATH] [--set KEY=VALUE ...]

Each prompt is one ``dreamdistill PROMPT --instant`` run folder (made in this process: the teacher, the evaluator
and the generator are loaded once), with the default preset (configs/toy-sds.yaml) and ``--instant``'s lighter
outputs. Per prompt: R-precision (8 orbit renders at elevation 15° classified by the toy evaluator as the prompt's
category and colour), view consistency (fronted categories only), nearest-real IoU of the exported mesh (and its
normal consistency with that nearest true object), mesh health, and the wall time after loading (field, turntable,
meshes, metrics, report; one uncounted warm-up run of the first prompt first loads the evaluator and the shape
references). Means for the training prompts and for the held-out pairs apart. The per-prompt default's figures for
its 8 prompts (all held-out pairs here) are read from ``benchmarks/results/text_to_3d.json`` (labelled so: not
rerun) and compared on those prompts. Issue 18's targets, per group: mean R-precision >= 0.9, mean view
consistency >= 0.6, mean nearest-real IoU no more than 0.05 below the per-prompt default's mean on the same
prompts (checked on the 8 compared prompts), and <= 5 s per prompt after loading.
Writes ``benchmarks/results/instant.json`` and ``instant.png`` (rows: categories; per colour two turntable
frames, 90° apart; held-out pairs framed in black).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

from dreamdistill.config import load_config
from dreamdistill.fileio import save_image_atomic, write_json_atomic
from dreamdistill.instant.infer import INSTANT_OUTPUT_OVERRIDES, instant_run, is_held_out, with_generator_scene
from dreamdistill.instant.prompts import all_prompts, held_out_prompts, training_prompts
from dreamdistill.instant.run import load_generator, resolve_generator
from dreamdistill.lift3d import LiftConfig, configs_dir, load_teacher
from dreamdistill.machine import device_info
from dreamdistill.paths import repo_relative
from dreamdistill.toyworld.world import CATEGORIES, COLOURS

PER_PROMPT_RESULTS = Path(__file__).parent / "results" / "text_to_3d.json"
TARGETS = {"mean_r_precision": 0.9, "mean_view_consistency": 0.6, "iou_below_per_prompt_at_most": 0.05,
           "max_seconds_after_loading": 5.0}
"""Issue 18's "done when", per group of prompts."""


def mean(values: list[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return round(statistics.fmean(present), 4) if present else None


def run_one(prompt: str, teacher, model, info: dict, generator_dir: Path, args: argparse.Namespace) -> dict:
    overrides = [*INSTANT_OUTPUT_OVERRIDES, *args.overrides, f"prompt={prompt}", "device=cpu"]
    config = with_generator_scene(load_config(LiftConfig, configs_dir() / "toy-sds.yaml", overrides), info)
    result = instant_run(config, teacher, model, info, generator_dir, Path(args.runs))
    metrics = result["metrics"]
    shape = metrics.get("shape") or {}
    return {"prompt": prompt, "held_out": is_held_out(prompt), "run_dir": repo_relative(result["run_dir"]),
            "seconds_after_loading": metrics["wall_seconds_after_loading"],
            "r_precision": metrics["r_precision"], "view_consistency": metrics["view_consistency"],
            "nearest_real_iou": shape.get("iou", {}).get("best"),
            "normal_consistency": shape.get("surface", {}).get("normal_consistency"),
            "components": shape.get("components"), "largest_area_share": shape.get("largest_area_share"),
            "mesh": metrics["mesh"]}


def group_summary(runs: list[dict]) -> dict:
    ious = [r["nearest_real_iou"] for r in runs if r["nearest_real_iou"] is not None]
    return {"prompts": len(runs), "mean_r_precision": mean([r["r_precision"] for r in runs]),
            "min_r_precision": min((r["r_precision"] for r in runs), default=None),
            "mean_view_consistency": mean([r["view_consistency"] for r in runs]),
            "mean_nearest_real_iou": mean(ious), "min_nearest_real_iou": min(ious, default=None),
            "mean_normal_consistency": mean([r.get("normal_consistency") for r in runs]),
            "one_component_95": sum(1 for r in runs if (r["largest_area_share"] or 0) >= 0.95),
            "mean_seconds_after_loading": mean([r["seconds_after_loading"] for r in runs]),
            "max_seconds_after_loading": max((r["seconds_after_loading"] for r in runs), default=None)}


def per_prompt_comparison(runs: list[dict]) -> dict | None:
    """Instant vs the per-prompt default on text_to_3d.json's prompts (its figures read from that file)."""
    if not PER_PROMPT_RESULTS.is_file():
        return None
    earlier = json.loads(PER_PROMPT_RESULTS.read_text())
    default = earlier.get("default_method", "sds")
    theirs = {r["prompt"]: r for r in earlier["runs"] if r["method"] == default}
    mine = {r["prompt"]: r for r in runs}
    common = [p for p in theirs if p in mine]
    if not common:
        return None
    rows = [{"prompt": p, "held_out": mine[p]["held_out"],
             "instant": {k: mine[p].get(k) for k in ("r_precision", "view_consistency", "nearest_real_iou",
                                                     "normal_consistency", "seconds_after_loading")},
             "per_prompt": {"r_precision": theirs[p]["r_precision"], "view_consistency": theirs[p]["view_consistency"],
                            "nearest_real_iou": theirs[p]["nearest_real_iou"],
                            "normal_consistency": theirs[p].get("normal_consistency"), "steps": theirs[p]["steps"],
                            "wall_seconds": theirs[p]["wall_seconds"]}} for p in common]

    def means(side: str) -> dict:
        return {k: mean([row[side][k] for row in rows]) for k in rows[0][side]}

    instant, per_prompt = means("instant"), means("per_prompt")
    return {"source": repo_relative(PER_PROMPT_RESULTS) + f" (method {default}; figures read from that file, "
                                                         "not rerun here)",
            "prompts": common, "rows": rows, "instant_means": instant, "per_prompt_means": per_prompt,
            "iou_gap": round(per_prompt["nearest_real_iou"] - instant["nearest_real_iou"], 4),
            "time_ratio_per_prompt_over_instant": round(per_prompt["wall_seconds"] / instant["seconds_after_loading"],
                                                        1)}


def checks(summary: dict, comparison: dict | None) -> dict:
    out = {}
    for group, s in summary.items():
        out[group] = {"mean_r_precision": (s["mean_r_precision"] or 0) >= TARGETS["mean_r_precision"],
                      "mean_view_consistency": (s["mean_view_consistency"] or 0) >= TARGETS["mean_view_consistency"],
                      "seconds": (s["max_seconds_after_loading"] or 1e9) <= TARGETS["max_seconds_after_loading"]}
    if comparison is not None:
        out["iou_on_compared_prompts"] = comparison["iou_gap"] <= TARGETS["iou_below_per_prompt_at_most"]
    return out


def figure(runs: list[dict], path: Path, frames: tuple[int, int] = (1, 4)) -> Path:
    """Categories in rows, colours in columns, two turntable frames per prompt; held-out pairs framed in black."""
    import imageio.v3 as iio

    by_prompt = {r["prompt"]: r for r in runs}
    tile = None
    rows = []
    for category in CATEGORIES:
        cells = []
        for colour in COLOURS:
            run = next((r for p, r in by_prompt.items() if p.endswith(f" {colour} {category}")), None)
            if run is None:
                cells.append(None)
                continue
            gif = iio.imread(Path(run["run_dir"]) / "turntable.gif", index=None)[..., :3]
            cell = np.concatenate([gif[i % len(gif)] for i in frames], axis=1)
            if run["held_out"]:
                cell = cell.copy()
                cell[:2], cell[-2:], cell[:, :2], cell[:, -2:] = 0, 0, 0, 0
            tile = cell.shape
            cells.append(cell)
        rows.append(cells)
    blank = np.full(tile, 255, np.uint8)
    sheet = np.concatenate([np.concatenate([c if c is not None else blank for c in row], axis=1) for row in rows])
    return save_image_atomic(path, sheet)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--generator", default=None, help="generator folder (default: assets/toy-instant)")
    parser.add_argument("--prompts", choices=("all", "held-out", "training"), default="all")
    parser.add_argument("--limit", type=int, default=None, help="only the first N prompts (a smoke run)")
    parser.add_argument("--runs", default="runs/benchmark-instant", help="parent folder of the run folders")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "instant.json"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    generator_dir = resolve_generator(args.generator)
    model, info = load_generator(generator_dir)
    prompts = {"all": all_prompts(), "held-out": held_out_prompts(), "training": training_prompts()}[args.prompts]
    prompts = prompts[:args.limit] if args.limit else prompts
    config = load_config(LiftConfig, configs_dir() / "toy-sds.yaml", ["prompt=a red chair", "device=cpu"])
    teacher = load_teacher(with_generator_scene(config, info))
    warm_up = run_one(prompts[0], teacher, model, info, generator_dir, argparse.Namespace(
        **{**vars(args), "runs": str(Path(args.runs) / "warm-up")}))  # loads the evaluator, shape references
    began = time.perf_counter()
    runs = []
    for number, prompt in enumerate(prompts, 1):
        runs.append(run_one(prompt, teacher, model, info, generator_dir, args))
        r = runs[-1]
        print(f"[{number}/{len(prompts)}] {prompt}{' (held out)' if r['held_out'] else ''}: R {r['r_precision']}, "
              f"view {r['view_consistency']}, IoU {r['nearest_real_iou']}, {r['seconds_after_loading']} s",
              file=sys.stderr)
    summary = {"training": group_summary([r for r in runs if not r["held_out"]]),
               "held_out": group_summary([r for r in runs if r["held_out"]])}
    comparison = per_prompt_comparison(runs)
    result = {"benchmark": "instant", "generator": repo_relative(generator_dir),
              "generator_trained_steps": info["trained_steps"], "generator_training_minutes": info["minutes"],
              "held_out_prompts": held_out_prompts(), "settings": {"preset": "configs/toy-sds.yaml",
                                                                  "overrides": [*INSTANT_OUTPUT_OVERRIDES,
                                                                                *args.overrides]},
              "device": device_info("cpu"), "total_seconds": round(time.perf_counter() - began, 1),
              "warm_up_seconds_after_loading": warm_up["seconds_after_loading"],
              "summary": summary, "per_prompt_default_comparison": comparison, "targets": TARGETS,
              "checks": checks(summary, comparison), "runs": runs}
    out = Path(args.out)
    write_json_atomic(out, result)
    picture = figure(runs, out.with_suffix(".png"))
    print(f"wrote {out} and {picture}")
    print(json.dumps({"summary": summary, "checks": result["checks"],
                      "comparison_means": comparison and {k: comparison[k] for k in
                                                          ("instant_means", "per_prompt_means", "iou_gap")}},
                     indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
