"""What SDS alone draws: one image per prompt optimised directly with a teacher's SDS (no 3D), beside the teacher's
own samples of the same prompts. It separates the two causes of a 3D flaw: a part that 2D SDS already loses (a
house's roof, a chair's white seat) is lost to SDS's mode seeking, not to the 3D representation.

    python benchmarks/sds_2d.py --teacher toy-sd --config configs/toy-sd-sds.yaml

Each image is a [0, 1] sigmoid of free logits at the preset's final render resolution (``render.resolution``
throughout, not its coarse start), started from a white image with a gray disc (as the 3D field starts), updated
with Adam on the preset's guidance (scale, weighting and the sliding timestep band over ``--steps``). The toy
evaluator classifies the results. Writes
``benchmarks/results/sds_2d_<teacher>.json`` and a figure: teacher samples (top row) and 2D SDS (bottom row).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from dreamdistill.config import load_config
from dreamdistill.diffusion.teacher import Teacher, resize
from dreamdistill.fileio import write_json_atomic
from dreamdistill.guidance.sds import SDS
from dreamdistill.lift3d.config import LiftConfig
from dreamdistill.machine import device_info
from dreamdistill.metrics import prompt_fidelity, prompt_labels
from dreamdistill.paths import repo_relative
from dreamdistill.toyworld.evaluator import Evaluator
from dreamdistill.toyworld.train_teacher import save_grid

PROMPTS = ["a red chair, side view", "a yellow house, front view", "a purple bed, side view",
           "a pink lamp, front view", "a blue mug, side view", "an orange table, front view"]
"""Views that show the parts 3D runs lose: the chair's seat, the house's roof, the bed's headboard, the lamp's pole,
the mug's handle, the table's leg."""


def initial_logits(count: int, size: int) -> torch.Tensor:
    """Logits of a white image with a hard-edged gray disc in the middle (the 3D field's initial blob, seen flat)."""
    axis = torch.linspace(-1, 1, size)
    radius = (axis[None, :] ** 2 + axis[:, None] ** 2).sqrt()
    gray = 1.0 - 0.4 * (radius < 0.6).float()
    image = gray.clamp(0.02, 0.98).expand(count, 3, size, size).clone()
    return torch.logit(image)


def run_sds_2d(teacher, prompts: list[str], config: LiftConfig, steps: int, learning_rate: float, seed: int):
    """Optimise one image per prompt with SDS; returns the images [B, 3, H, W] in [0, 1]."""
    size = config.render.resolution
    logits = initial_logits(len(prompts), size).requires_grad_(True)
    optimizer = torch.optim.Adam([logits], lr=learning_rate)
    guidance = SDS(teacher, prompts[0], config.guidance)
    generator = torch.Generator().manual_seed(seed)
    for step in range(steps):
        result = guidance(torch.sigmoid(logits), views=None, progress=step / max(steps - 1, 1),
                          generator=generator, prompts=prompts)
        optimizer.zero_grad()
        result["loss"].backward()
        optimizer.step()
    return torch.sigmoid(logits).detach()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="toy-sd")
    parser.add_argument("--config", default="configs/toy-sd-sds.yaml", help="preset whose guidance and render size "
                        "are used")
    parser.add_argument("--prompt", action="append", default=None, help="draw these prompts instead (repeatable; "
                        "a prompt given twice is drawn twice, from different noise)")
    parser.add_argument("--guidance-scale", type=float, default=None, help="override the preset's guidance scale")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a preset setting, e.g. guidance.space=image")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--learning-rate", type=float, default=0.05)
    parser.add_argument("--sample-steps", type=int, default=32)
    parser.add_argument("--sample-guidance", type=float, default=4.0, help="the teacher's sampling CFG")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    overrides = args.set + ([] if args.guidance_scale is None else [f"guidance.guidance_scale={args.guidance_scale}"])
    config = load_config(LiftConfig, args.config, overrides)
    prompts = args.prompt or PROMPTS
    teacher = Teacher.from_pretrained(args.teacher, device="cpu")
    started = time.perf_counter()
    drawn = run_sds_2d(teacher, prompts, config, args.steps, args.learning_rate, args.seed)
    sds_seconds = time.perf_counter() - started
    with torch.no_grad():
        samples = teacher.sample(prompts, steps=args.sample_steps, guidance_scale=args.sample_guidance, seed=args.seed)
    samples = resize(samples.float(), drawn.shape[-1])

    evaluator = Evaluator.load()
    wanted = prompt_labels(prompts)
    scores = {name: prompt_fidelity(evaluator.classify(images), wanted)
              for name, images in (("teacher_samples", samples), ("sds_2d", drawn))}
    out = Path(args.out or f"benchmarks/results/sds_2d_{Path(args.teacher).name}.json")
    figure = save_grid(torch.cat([samples, drawn]), out.with_suffix(".png"), columns=len(prompts), scale=2)
    write_json_atomic(out, {
        "benchmark": "sds_2d", "teacher": args.teacher, "config": args.config, "prompts": prompts,
        "steps": args.steps, "learning_rate": args.learning_rate, "guidance_scale": config.guidance.guidance_scale,
        "t_range": list(config.guidance.t_range), "t_range_end": list(config.guidance.t_range_end),
        "resolution": config.render.resolution, "sample_steps": args.sample_steps,
        "sample_guidance": args.sample_guidance, "seed": args.seed, "overrides": overrides,
        "space": config.guidance.space, "fidelity": scores,
        "sds_seconds": round(sds_seconds, 1), "figure": repo_relative(figure), "device": device_info(),
    })
    print(f"wrote {out} and {figure}: {scores}")


if __name__ == "__main__":
    main()
