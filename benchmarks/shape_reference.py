"""The ceiling of the shape score and the toy world's own diversity, per category.

    python benchmarks/shape_reference.py [--k 64] [--resolution 48] [--n 16] [--out PATH]

For every category (:mod:`dreamdistill.toyworld.shape_fidelity`):
- ``reference_iou``: n held-out true objects scored against the K references by nearest-real IoU, with
  their exact voxels (``analytic``) and through the mesh pipeline (marching cubes at 128³ → ray-parity
  voxels: ``mesh``, what a perfect generator scores); ``self`` is each mesh's IoU with its own exact voxels;
  ``normal_consistency`` and ``area_ratio``: each held-out mesh's surface against its nearest reference's mesh
  (the ``mesh`` IoU argmax; 20,000 area-uniform points on each, both ways), as ``score_mesh`` scores a result;
- ``leave_one_out``: each of the K references against the other K − 1 (analytic; a larger sample of the
  analytic ceiling);
- ``real_diversity``: 1 − mean pairwise IoU of n = 3 and n = 8 true objects: the first n references, and
  the mean and standard deviation over the disjoint groups of n among the K (how noisy a 3-result
  diversity is);
- ``seconds``: one ``nearest_real_iou`` call with a cold cache (drawing and voxelising the K references)
  and a warm one.
Writes ``benchmarks/results/shape_reference.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from dreamdistill.fileio import write_json_atomic
from dreamdistill.machine import device_info
from dreamdistill.paths import repo_relative
from dreamdistill.shape import SURFACE_POINTS, diversity
from dreamdistill.toyworld.shape_fidelity import (
    MESH_RESOLUTION,
    REFERENCE_SEED,
    clear_reference_cache,
    nearest_real_iou,
    reference_iou,
    reference_occupancies,
)
from dreamdistill.toyworld.world import CATEGORIES

ROOT = Path(__file__).resolve().parent.parent


def timed_nearest(category: str, k: int, resolution: int) -> dict:
    """Seconds of one nearest_real_iou call, cold (references not cached) then warm (median of 20)."""
    clear_reference_cache()
    probe = np.zeros((resolution,) * 3, dtype=bool)
    start = time.perf_counter()
    nearest_real_iou(probe, category, k)
    cold = time.perf_counter() - start
    warm = []
    for _ in range(20):
        start = time.perf_counter()
        nearest_real_iou(probe, category, k)
        warm.append(time.perf_counter() - start)
    return {"nearest_real_iou_cold": round(cold, 4), "nearest_real_iou_warm": round(float(np.median(warm)), 5)}


def diversity_of_groups(references: np.ndarray, n: int) -> dict:
    """Diversity of the first n references, and its mean and std over the disjoint groups of n."""
    groups = [diversity(references[i:i + n]) for i in range(0, len(references) - n + 1, n)]
    return {"first": round(groups[0], 4), "mean": round(float(np.mean(groups)), 4),
            "std": round(float(np.std(groups)), 4), "groups": len(groups)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--k", type=int, default=64, help="reference objects per category")
    parser.add_argument("--resolution", type=int, default=48, help="voxels per side of [-1, 1]^3")
    parser.add_argument("--n", type=int, default=16, help="held-out objects per category")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "shape_reference.json")
    args = parser.parse_args()
    start = time.perf_counter()
    info = device_info("cpu")
    categories = {}
    for category in CATEGORIES:
        began = time.perf_counter()
        seconds = timed_nearest(category, args.k, args.resolution)
        references = reference_occupancies(category, args.k, args.resolution)
        leave_one_out = [nearest_real_iou(references[i], category, args.k, exclude=i).best for i in range(args.k)]
        result = reference_iou(category, args.k, args.resolution, args.n)
        categories[category] = {
            **{key: result[key] for key in ("analytic", "mesh", "self", "normal_consistency", "area_ratio")},
            "leave_one_out": {"mean": round(float(np.mean(leave_one_out)), 4),
                              "std": round(float(np.std(leave_one_out)), 4)},
            "real_diversity": {f"n{n}": diversity_of_groups(references, n) for n in (3, 8)},
            "seconds": {**seconds, "category_total": round(time.perf_counter() - began, 1)},
        }
        print(category, json.dumps({k: categories[category][k] for k in ("analytic", "mesh", "leave_one_out",
                                                                         "normal_consistency", "area_ratio")}),
              flush=True)
    payload = {
        "benchmark": "shape_reference",
        "script": "benchmarks/shape_reference.py",
        "settings": {"k": args.k, "resolution": args.resolution, "n_held_out": args.n,
                     "mesh_resolution": MESH_RESOLUTION, "seed": REFERENCE_SEED, "bound": 1.0,
                     "surface_points": SURFACE_POINTS,
                     "held_out": "objects k..k+n-1 of the reference stream (not among the K references)"},
        "categories": categories,
        "summary": {key: round(float(np.mean([c[key]["mean"] for c in categories.values()])), 4)
                    for key in ("analytic", "mesh", "self", "normal_consistency", "area_ratio")},
        "surface_extremes": {  # over every held-out object of every category
            "normal_consistency_min": min(c["normal_consistency"]["min"] for c in categories.values()),
            "area_ratio_min": min(c["area_ratio"]["min"] for c in categories.values()),
            "area_ratio_max": max(c["area_ratio"]["max"] for c in categories.values())},
        "total_seconds": round(time.perf_counter() - start, 1),
        "info": info,
    }
    write_json_atomic(args.out, payload)
    print(json.dumps(payload["summary"]), f"({payload['total_seconds']} s) ->", repo_relative(args.out))


if __name__ == "__main__":
    main()
