"""Volume-render throughput: rays/s of a 64x64 render with backward, occupancy skipping on and off.

    python benchmarks/render.py [--device cpu|cuda] [--resolution 64] [--out PATH]

The default field (hash grid 16 levels x 2 features, 2^19 table; MLP 64 x 2) at initialisation: the
centred density blob, i.e. the start of every SDS run. Each case renders one view and back-propagates a
mean loss (no optimiser step), for albedo shading and for diffuse shading (normals by finite
differences). On CUDA the occupancy-on cases march with nerfacc, and an analytic scene is rendered both
ways and compared. Writes ``benchmarks/results/render.json`` (``render_gpu.json`` on CUDA).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import torch

from dreamdistill.machine import device_info
from dreamdistill.render.cameras import orbit_cameras
from dreamdistill.render.occupancy import OccupancyGrid
from dreamdistill.render.volume import DEFAULT_STEP_SIZE, headlights, nerfacc_available, render
from dreamdistill.scene.analytic import AnalyticField, default_scene
from dreamdistill.scene.background import Background
from dreamdistill.scene.field import Field


def nerfacc_check(device: torch.device, resolution: int) -> dict[str, Any]:
    """On CUDA: an analytic scene rendered through nerfacc (occupancy on) vs our own marching (off)."""
    if device.type != "cuda" or not nerfacc_available():
        return {"skipped": "needs CUDA and nerfacc"}
    field = AnalyticField(default_scene())
    grid = OccupancyGrid().to(device)
    grid.update(field.density, DEFAULT_STEP_SIZE)
    cameras = orbit_cameras(4, elevation=20.0).to(device)
    white = torch.ones(3, device=device)
    with_nerfacc = render(field, white, cameras, resolution, occupancy=grid)
    ours = render(field, white, cameras, resolution)
    difference = (with_nerfacc.image - ours.image).abs()
    agreement = float(((with_nerfacc.opacity > 0.5) == (ours.opacity > 0.5)).float().mean())
    result = {
        "mean_abs_difference": round(float(difference.mean()), 5),
        "silhouette_agreement": round(agreement, 5),
        "samples_nerfacc": with_nerfacc.samples,
        "samples_ours": ours.samples,
    }
    result["passed"] = result["mean_abs_difference"] < 0.01 and agreement > 0.99
    print("nerfacc check", result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device(args.device)
    name = "render_gpu.json" if device.type == "cuda" else "render.json"
    out = args.out or Path(__file__).parent / "results" / name
    torch.manual_seed(0)
    field, background = Field().to(device), Background("learned").to(device)
    field.train()
    occupancy = OccupancyGrid().to(device)
    start = time.perf_counter()
    occupancy.update(field.density, DEFAULT_STEP_SIZE)
    update_s = time.perf_counter() - start
    cameras = orbit_cameras(1, elevation=20.0)
    rays = args.resolution**2
    rows = []
    for shading in ("albedo", "diffuse"):
        for grid in (None, occupancy):
            times, samples = [], 0
            for repeat in range(args.repeats + 1):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                begin = time.perf_counter()
                output = render(
                    field,
                    background,
                    cameras,
                    args.resolution,
                    shading=shading,
                    light=headlights(cameras),
                    occupancy=grid,
                    stratified=True,
                )
                output.image.mean().backward()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                if repeat:  # the first run warms up
                    times.append(time.perf_counter() - begin)
                samples = output.samples
                field.zero_grad(set_to_none=True)
            seconds = statistics.median(times)
            row = {
                "shading": shading,
                "occupancy": grid is not None,
                "seconds": round(seconds, 4),
                "rays_per_s": round(rays / seconds),
                "samples": samples,
            }
            rows.append(row)
            print(row)
    for shading in ("albedo", "diffuse"):
        off, on = (next(r for r in rows if (r["shading"], r["occupancy"]) == (shading, flag)) for flag in (False, True))
        on["speedup_vs_no_occupancy"] = round(off["seconds"] / on["seconds"], 2)
    payload = {
        "benchmark": "render",
        "resolution": args.resolution,
        "step_size": DEFAULT_STEP_SIZE,
        "occupancy": {
            "resolution": occupancy.resolution,
            "occupied_fraction": round(occupancy.occupied_fraction, 4),
            "full_update_s": round(update_s, 3),
        },
        "info": device_info(device),
        "rows": rows,
        "nerfacc_check": nerfacc_check(device, args.resolution),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2) + "\n")
    print("->", out)


if __name__ == "__main__":
    main()
