"""Prompt fidelity and Fréchet distance of a teacher's samples, scored by the toy-world evaluator.

    python benchmarks/teacher_quality.py [--teacher toy] [--per-prompt 16] [--steps 64] [--cfg 4]

Samples ``per-prompt`` images for each of 24 fixed (category, colour, view) prompts with DDIM,
classifies them, and writes category / colour / view accuracy (view on categories with a front),
the Fréchet distance (evaluator features) to real renders, and the real-vs-real floor, to
``benchmarks/results/teacher_quality.json``; also a PNG grid of one sample per prompt.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from dreamdistill.diffusion.teacher import Teacher
from dreamdistill.fileio import write_json_atomic
from dreamdistill.machine import device_info
from dreamdistill.metrics import prompt_fidelity, prompt_labels
from dreamdistill.paths import repo_relative
from dreamdistill.toyworld import render_dataset
from dreamdistill.toyworld.captions import caption
from dreamdistill.toyworld.evaluator import Evaluator, frechet_distance
from dreamdistill.toyworld.train_teacher import save_grid
from dreamdistill.toyworld.world import CATEGORIES, COLOURS, VIEWS

RESULTS = Path(__file__).parent / "results"


def benchmark_prompts() -> list[str]:
    """24 prompts: every category three times, views and colours cycling so all appear."""
    prompts = []
    for i in range(24):
        category = CATEGORIES[i % len(CATEGORIES)]
        view = VIEWS[(i // len(CATEGORIES) + i) % len(VIEWS)]
        colour = COLOURS[(5 * i) % len(COLOURS)]
        prompts.append(caption(colour, category, view))
    return prompts


def trained_steps(folder: Path) -> int | None:
    """The optimiser steps recorded in a pixel-format teacher folder (None for other teachers)."""
    config = Path(folder) / "dreamdistill_teacher.json"
    return json.loads(config.read_text()).get("trained_steps") if config.is_file() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="toy")
    parser.add_argument("--per-prompt", type=int, default=16)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--cfg", type=float, default=4.0)
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--real", type=int, default=2000, help="real renders for the Fréchet reference")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "teacher_quality.json"))
    parser.add_argument("--grid", default="assets/toy-teacher-samples.png")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    teacher = Teacher.from_pretrained(args.teacher, device="cpu")
    evaluator = Evaluator.load()
    prompts = [p for p in benchmark_prompts() for _ in range(args.per_prompt)]
    started = time.time()
    samples = []
    for start in range(0, len(prompts), args.batch):
        chunk = prompts[start:start + args.batch]
        noise = torch.randn((len(chunk), *teacher.model_shape), generator=torch.Generator().manual_seed(start))
        samples.append(teacher.sample(chunk, steps=args.steps, guidance_scale=args.cfg, noise=noise))
        print(f"sampled {start + len(chunk)}/{len(prompts)} ({time.time() - started:.0f}s)", flush=True)
    samples = torch.cat(samples)
    seconds = time.time() - started
    torch.save({"prompts": prompts, "samples": samples}, Path(args.out).with_suffix(".samples.pt"))

    fidelity = prompt_fidelity(evaluator.classify(samples), prompt_labels(prompts))
    real = render_dataset(args.real + len(prompts), seed=424242).float_images()
    reference, floor_set = real[: args.real], real[args.real:]
    features_reference = evaluator.embed(reference)
    fd = frechet_distance(evaluator.embed(samples), features_reference)
    fd_floor = frechet_distance(evaluator.embed(floor_set), features_reference)
    per_prompt = {}
    predicted = evaluator.classify(samples)
    for i, prompt in enumerate(benchmark_prompts()):
        part = slice(i * args.per_prompt, (i + 1) * args.per_prompt)
        per_prompt[prompt] = prompt_fidelity({k: v[part] for k, v in predicted.items()}, prompt_labels(prompts[part]))
    result = {
        "command": "python benchmarks/teacher_quality.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out", "grid")),
        "teacher": repo_relative(teacher.info.path), "trained_steps": trained_steps(teacher.info.path),
        "prompts": len(benchmark_prompts()), "samples_per_prompt": args.per_prompt, "ddim_steps": args.steps,
        "cfg": args.cfg, "accuracy": fidelity, "targets": {"category": 0.9, "colour": 0.9, "view": 0.7},
        "frechet_distance_to_real": fd, "frechet_distance_real_vs_real_floor": fd_floor,
        "real_renders": args.real, "sampling_seconds": round(seconds, 1),
        "seconds_per_image": round(seconds / len(prompts), 3), "per_prompt": per_prompt,
        "device": device_info(teacher.device),
    }
    write_json_atomic(Path(args.out), result)
    first = torch.stack([samples[i * args.per_prompt] for i in range(len(benchmark_prompts()))])
    if args.grid:
        save_grid(first, Path(args.grid), columns=8, scale=2)
    print({k: result[k] for k in ("accuracy", "frechet_distance_to_real", "frechet_distance_real_vs_real_floor")})


if __name__ == "__main__":
    main()
