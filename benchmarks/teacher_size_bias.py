"""How large the teacher draws objects, against the toy world, as classifier-free guidance grows.

    python benchmarks/teacher_size_bias.py [--teacher toy] [--num 24] [--cfg 1,4,7.5,15] [--steps 32]

For each benchmark prompt of ``benchmarks/text_to_3d.py`` ("a red chair", ...): ``--num`` true objects of its
category and colour rendered by the toy world from front-view cameras (azimuth ±40°, elevation 0–40°, the
data set's distances and fields of view), and ``--num`` teacher samples of "PROMPT, front view" (DDIM,
``--steps``) at every guidance weight. Coverage is the fraction of the frame the object covers: pixels farther
than 0.15 from white, after a 3 × 3 morphological opening (so isolated speckles of a noisy sample do not
count). A ratio sample/real above 1 means the teacher (at that guidance) wants the object larger than it is;
SDS seeks the guided teacher's modes, so its 3D objects inherit that pull (the "frame-filling blob").
Writes ``benchmarks/results/teacher_size_bias.json``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from text_to_3d import PROMPTS  # noqa: E402

from dreamdistill.diffusion.teacher import Teacher  # noqa: E402
from dreamdistill.fileio import write_json_atomic  # noqa: E402
from dreamdistill.machine import device_info  # noqa: E402
from dreamdistill.render.cameras import Cameras  # noqa: E402
from dreamdistill.toyworld.raytrace import render_objects  # noqa: E402
from dreamdistill.toyworld.shapes import make_object, object_rng  # noqa: E402
from dreamdistill.toyworld.world import CATEGORIES, COLOURS, DATASET_CAMERAS  # noqa: E402

WHITE_DISTANCE = 0.15
"""A pixel is covered when some channel is this far from white."""


def coverage(images: torch.Tensor) -> torch.Tensor:
    """Per image [B]: the covered fraction of [B, 3, H, W] images on white, after a 3 × 3 opening."""
    mask = ((1 - images).abs().amax(1, keepdim=True) > WHITE_DISTANCE).float()
    opened = F.max_pool2d(-F.max_pool2d(-mask, 3, 1, 1), 3, 1, 1)  # erosion (min-pool), then dilation
    return opened.flatten(1).mean(1)


def front_cameras(count: int, seed: int) -> Cameras:
    """Front views: azimuth ±40°, elevation 0–40°, the data set's distances and fields of view."""
    g = torch.Generator().manual_seed(seed)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(count, generator=g)

    return Cameras(uniform(-40, 40), uniform(0, 40), uniform(*DATASET_CAMERAS.distance),
                   uniform(*DATASET_CAMERAS.fov))


def parse_prompt(prompt: str) -> tuple[str, str]:
    """'a red chair' -> ('red', 'chair')."""
    words = prompt.split()
    return words[-2], words[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="toy")
    parser.add_argument("--num", type=int, default=24)
    parser.add_argument("--cfg", default="1,4,7.5,15")
    parser.add_argument("--steps", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=8, help="the first N prompts of text_to_3d.py")
    parser.add_argument("--out", default="benchmarks/results/teacher_size_bias.json")
    args = parser.parse_args()
    weights = [float(w) for w in args.cfg.split(",")]
    teacher = Teacher.from_pretrained(args.teacher)
    cameras = front_cameras(args.num, seed=0)
    rows, start = [], time.perf_counter()
    for prompt in PROMPTS[: args.prompts]:
        colour, category = parse_prompt(prompt)
        objects = [make_object(CATEGORIES.index(category), COLOURS.index(colour), object_rng(7, i))
                   for i in range(args.num)]
        real = float(coverage(render_objects(objects, cameras, teacher.image_size).images).mean())
        row = {"prompt": prompt, "real_coverage": round(real, 4), "samples": {}}
        for w in weights:
            samples = teacher.sample([f"{prompt}, front view"] * args.num, steps=args.steps, guidance_scale=w,
                                     seed=1)
            value = float(coverage(samples).mean())
            row["samples"][f"cfg {w:g}"] = {"coverage": round(value, 4), "over_real": round(value / real, 3)}
        rows.append(row)
        print(prompt, row["real_coverage"], {k: v["over_real"] for k, v in row["samples"].items()}, flush=True)
    mean_ratio = {f"cfg {w:g}": round(sum(r["samples"][f"cfg {w:g}"]["over_real"] for r in rows) / len(rows), 3)
                  for w in weights}
    write_json_atomic(Path(args.out), {
        "benchmark": "teacher_size_bias", "teacher": args.teacher, "num": args.num, "ddim_steps": args.steps,
        "white_distance": WHITE_DISTANCE, "device": device_info("cpu"),
        "seconds": round(time.perf_counter() - start, 1), "mean_over_real": mean_ratio, "prompts": rows})
    print(f"wrote {args.out}: mean coverage over real {mean_ratio}")


if __name__ == "__main__":
    main()
