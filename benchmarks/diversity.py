"""Shape diversity across seeds: n seeds of each of the first P prompts, against the toy world's own.

    python benchmarks/diversity.py [--method sds] [--prompts 4] [--seeds 3] [--jobs N] [--runs DIR]

Each (prompt, seed) is a run of the default preset (``benchmarks/text_to_3d.py``'s ``run_one`` with
``seed=S``; seed 0 is reused from ``benchmarks/results/text_to_3d.json`` when its preset is unchanged).
Per prompt: the nearest-real IoU and normal consistency of every seed's mesh, the diversity 1 − mean pairwise IoU
of their voxel grids (48³, :func:`dreamdistill.shape.diversity`) and, beside it, the same figure for n true
objects of the category (:func:`dreamdistill.toyworld.shape_fidelity.real_diversity`; its mean over 8 disjoint
draws of n). A generator as varied as the toy world scores about the real figure; mode collapse scores near 0.
Writes ``benchmarks/results/diversity.json`` after every run (rerunning resumes) and ``diversity.png``
(one row per prompt and seed: the exported mesh from 8 orbit cameras).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_to_3d import FIGURE_TILE, PROMPTS, label_tile, limit_threads, mesh_views, preset_hash, run_one  # noqa: E402

from dreamdistill.fileio import write_json_atomic  # noqa: E402
from dreamdistill.lift3d import DEFAULT_METHOD  # noqa: E402
from dreamdistill.machine import device_info  # noqa: E402


def run_seed(prompt: str, method: str, seed: int, args: argparse.Namespace) -> dict:
    """One run of ``prompt`` with ``seed`` (the preset with ``seed=S``)."""
    seeded = argparse.Namespace(**{**vars(args), "overrides": [*args.overrides, f"seed={seed}"], "steps": None,
                                   "teacher": None, "device": None})
    return {**run_one(prompt, method, seeded), "seed": seed}


def mesh_occupancy(run_dir: Path) -> np.ndarray | None:
    import trimesh

    from dreamdistill.shape import voxelise_mesh

    path = Path(run_dir) / "mesh.ply"
    if not path.is_file():
        return None
    mesh = trimesh.load(path, process=False)
    return voxelise_mesh(np.asarray(mesh.vertices), np.asarray(mesh.faces))


def summarise(runs: list[dict], prompts: list[str], seeds: int) -> dict:
    from dreamdistill.shape import diversity
    from dreamdistill.toyworld.shape_fidelity import real_diversity

    rows = {}
    for prompt in prompts:
        mine = sorted((r for r in runs if r["prompt"] == prompt), key=lambda r: r["seed"])
        grids = [g for g in (mesh_occupancy(r["run_dir"]) for r in mine) if g is not None]
        real = [real_diversity(prompt, n=seeds, start=seeds * k) for k in range(8)]
        rows[prompt] = {
            "seeds": [r["seed"] for r in mine], "nearest_real_iou": [r["nearest_real_iou"] for r in mine],
            "normal_consistency": [r.get("normal_consistency") for r in mine],
            "largest_area_share": [r.get("largest_area_share") for r in mine],
            "diversity": round(diversity(np.stack(grids)), 4) if len(grids) >= 2 else None,
            "real_diversity": round(statistics.fmean(real), 4), "real_diversity_sd": round(statistics.stdev(real), 4),
        }
    done = [row for row in rows.values() if row["diversity"] is not None]
    return {"prompts": rows,
            "mean_diversity": round(statistics.fmean(r["diversity"] for r in done), 4) if done else None,
            "mean_real_diversity": round(statistics.fmean(r["real_diversity"] for r in done), 4) if done else None}


def write_figure(runs: list[dict], prompts: list[str], path: Path, frames: int = 8) -> None:
    import imageio.v3 as iio

    rows = []
    for prompt in prompts:
        for run in sorted((r for r in runs if r["prompt"] == prompt), key=lambda r: r["seed"]):
            views = mesh_views(Path(run["run_dir"]), frames, FIGURE_TILE)
            if views is None:
                continue
            label = f"{run['method'].upper()}\n{prompt}\nseed {run['seed']}\nIoU {run['nearest_real_iou']:.2f}"
            if run.get("normal_consistency") is not None:
                label += f"\nNC {run['normal_consistency']:.2f}"
            rows.append(np.concatenate([label_tile(label, FIGURE_TILE + 32, FIGURE_TILE), *views], axis=1))
    if rows:
        iio.imwrite(path, np.concatenate(rows, axis=0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", default=DEFAULT_METHOD)
    parser.add_argument("--prompts", type=int, default=4, help="use the first N prompts of text_to_3d.py")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--runs", default="runs/benchmark-diversity", help="parent folder of the run folders")
    parser.add_argument("--out", default="benchmarks/results/diversity.json")
    parser.add_argument("--reuse", default="benchmarks/results/text_to_3d.json",
                        help="seed-0 runs to reuse (same preset, no overrides)")
    parser.add_argument("--jobs", type=int, default=1)
    args = parser.parse_args()
    args.quiet = True
    prompts = list(PROMPTS[: args.prompts])
    preset = preset_hash(args.method)
    settings = {"method": args.method, "preset": preset, "overrides": args.overrides, "seeds": args.seeds}
    out = Path(args.out)
    runs: list[dict] = []
    if out.is_file() and json.loads(out.read_text()).get("settings") == settings:
        runs = json.loads(out.read_text())["runs"]
    reuse = Path(args.reuse)
    if not args.overrides and reuse.is_file():
        earlier = json.loads(reuse.read_text())
        for r in earlier.get("runs", []):
            fresh = not any(x["prompt"] == r["prompt"] and x["seed"] == 0 for x in runs)
            if (r["method"] == args.method and r.get("preset") == preset and r["prompt"] in prompts and fresh
                    and not earlier["settings"].get("overrides") and Path(r["run_dir"]).is_dir()):
                runs.append({**r, "seed": 0})
    todo = [(p, s) for s in range(args.seeds) for p in prompts
            if not any(r["prompt"] == p and r["seed"] == s for r in runs)]

    def record(result: dict) -> None:
        runs.append(result)
        print(f"{result['prompt']!r} seed {result['seed']}: IoU {result['nearest_real_iou']}, normal consistency "
              f"{result.get('normal_consistency')}", flush=True)
        write_json_atomic(out, {"benchmark": "diversity", "settings": settings, "device": device_info("cpu"),
                                "runs": runs, **summarise(runs, prompts, args.seeds)})

    if args.jobs <= 1:
        for prompt, seed in todo:
            record(run_seed(prompt, args.method, seed, args))
    else:
        threads = max(1, (os.cpu_count() or 1) // args.jobs)
        with ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=limit_threads, initargs=(threads,)) as pool:
            futures = [pool.submit(run_seed, p, args.method, s, args) for p, s in todo]
            for future in as_completed(futures):
                record(future.result())
    if runs:
        write_json_atomic(out, {"benchmark": "diversity", "settings": settings, "device": device_info("cpu"),
                                "runs": runs, **summarise(runs, prompts, args.seeds)})
        write_figure(runs, prompts, out.with_suffix(".png"))
    print(json.dumps(summarise(runs, prompts, args.seeds), indent=1))


if __name__ == "__main__":
    main()
