"""Prompt fidelity, paraphrase robustness, KID and Fréchet distance of teachers' samples, side by side in one run.

    python benchmarks/teacher_quality.py --teachers toy,toy-sd --per-prompt 4 --steps 64

For each teacher: samples ``per-prompt`` images for each of 24 fixed (category, colour, view) prompts with DDIM,
classifies them with the toy evaluator (images are downsampled to its 32 px with antialiasing), and reports
category / colour / view accuracy (view on categories with a front), KID ± its standard error and the Fréchet
distance (evaluator features) to real renders, with the real-vs-real floor. Paraphrases: the same for 8 prompts
worded with templates and filler words no teacher trained on (:data:`dreamdistill.toyworld.sd_text
.HELD_OUT_TEMPLATES`). A latent teacher's VAE is also scored: PSNR of its reconstructions of held-out 128-px renders,
and a side-by-side grid. Writes ``benchmarks/results/teacher_quality.json`` and one sample grid per teacher.
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from dreamdistill.diffusion.teacher import LatentCodec, Teacher, read_folder_notes
from dreamdistill.fileio import write_json_atomic
from dreamdistill.machine import device_info
from dreamdistill.metrics import prompt_fidelity, prompt_labels
from dreamdistill.paths import repo_relative
from dreamdistill.toyworld import render_dataset
from dreamdistill.toyworld.captions import caption
from dreamdistill.toyworld.evaluator import Evaluator, frechet_distance, kernel_inception_distance
from dreamdistill.toyworld.sd_text import HELD_OUT_FILLERS, HELD_OUT_TEMPLATES, SEEN_FROM
from dreamdistill.toyworld.train_teacher import save_grid
from dreamdistill.toyworld.world import CATEGORIES, COLOURS, VIEWS

RESULTS = Path(__file__).parent / "results"
GRIDS = {"toy": "assets/toy-teacher-samples.png", "toy-sd": "assets/toy-sd-samples.png"}


def benchmark_triples() -> list[tuple[str, str, str]]:
    """24 (colour, category, view): every category three times, views and colours cycling so all appear."""
    triples = []
    for i in range(24):
        category = CATEGORIES[i % len(CATEGORIES)]
        view = VIEWS[(i // len(CATEGORIES) + i) % len(VIEWS)]
        colour = COLOURS[(5 * i) % len(COLOURS)]
        triples.append((colour, category, view))
    return triples


def benchmark_prompts() -> list[str]:
    """The 24 captions "a {colour} {category}, {view} view"."""
    return [caption(*triple) for triple in benchmark_triples()]


def paraphrased_prompts() -> list[tuple[str, str]]:
    """(paraphrase, its caption) for 8 of the benchmark prompts (one per category), held-out wordings only."""
    rng = random.Random(0)
    pairs = []
    for i, (colour, category, view) in enumerate(benchmark_triples()[:len(CATEGORIES)]):
        template = HELD_OUT_TEMPLATES[i % len(HELD_OUT_TEMPLATES)]
        text = template.format(colour=colour, category=category, view=view, seen=SEEN_FROM[view],
                               filler=rng.choice(HELD_OUT_FILLERS))
        pairs.append((text, caption(colour, category, view)))
    return pairs


def sample_all(teacher: Teacher, prompts: list[str], steps: int, cfg: float, batch: int) -> torch.Tensor:
    """DDIM samples of ``prompts``, the noise of chunk k seeded by k's first index (the same for every teacher
    with the same model shape)."""
    samples, started = [], time.time()
    for start in range(0, len(prompts), batch):
        chunk = prompts[start:start + batch]
        noise = torch.randn((len(chunk), *teacher.model_shape), generator=torch.Generator().manual_seed(start))
        samples.append(teacher.sample(chunk, steps=steps, guidance_scale=cfg, noise=noise))
        print(f"  sampled {start + len(chunk)}/{len(prompts)} ({time.time() - started:.0f}s)", flush=True)
    return torch.cat(samples)


@torch.no_grad()
def vae_scores(teacher: Teacher, count: int, grid: Path | None) -> dict:
    """PSNR (dB) of a latent teacher's VAE on ``count`` held-out renders at its resolution (never trained on: a
    seed no training set uses), and a grid of renders over their reconstructions with a front-view house and
    snowman first."""
    from dreamdistill.toyworld.train_sd_teacher import psnr

    held_out = render_dataset(count, seed=777_000, resolution=teacher.image_size)
    images = held_out.float_images()
    reconstructions = torch.cat([teacher.model_to_images(teacher.images_to_model(images[i:i + 32]))
                                 for i in range(0, count, 32)])
    values = psnr(reconstructions, images)
    if grid is not None:
        wanted = [i for i, c in enumerate(held_out.captions) if c.endswith(("house, front view",
                                                                             "snowman, front view"))][:4]
        order = wanted + [i for i in range(count) if i not in wanted][:8 - len(wanted)]
        save_grid(torch.cat([images[order], reconstructions[order]]), grid, columns=8, scale=1)
    return {"renders": count, "psnr_db_mean": round(float(values.mean()), 2),
            "psnr_db_min": round(float(values.min()), 2), "target_db": 26.0,
            "grid": repo_relative(grid) if grid is not None else None}


def score_teacher(name: str, evaluator: Evaluator, args, real_features: torch.Tensor) -> dict:
    """Every figure of one teacher."""
    teacher = Teacher.from_pretrained(name, device="cpu")
    print(f"{name}: {teacher.info.format} teacher at {teacher.image_size} px", flush=True)
    prompts = [p for p in benchmark_prompts() for _ in range(args.per_prompt)]
    started = time.time()
    samples = sample_all(teacher, prompts, args.steps, args.cfg or teacher.info.defaults.get("default_cfg", 4.0),
                         args.batch)
    seconds = time.time() - started
    predicted = evaluator.classify(samples)
    features = evaluator.embed(samples)
    kid, kid_se = kernel_inception_distance(features, real_features)
    per_prompt = {}
    for i, prompt in enumerate(benchmark_prompts()):
        part = slice(i * args.per_prompt, (i + 1) * args.per_prompt)
        per_prompt[prompt] = prompt_fidelity({k: v[part] for k, v in predicted.items()}, prompt_labels(prompts[part]))
    pairs = paraphrased_prompts()
    worded = [text for text, _ in pairs for _ in range(args.per_prompt)]
    meant = [meaning for _, meaning in pairs for _ in range(args.per_prompt)]
    paraphrase_samples = sample_all(teacher, worded, args.steps,
                                    args.cfg or teacher.info.defaults.get("default_cfg", 4.0), args.batch)
    grid = Path(args.grid_dir) / Path(GRIDS.get(name, f"{Path(name).name}-samples.png")).name
    first = torch.stack([samples[i * args.per_prompt] for i in range(len(benchmark_prompts()))])
    save_grid(first, grid, columns=8, scale=max(1, 128 // teacher.image_size))
    result = {
        "teacher": repo_relative(teacher.info.path), "format": teacher.info.format,
        "image_size": teacher.image_size, "trained_steps": read_folder_notes(teacher.info.path).get("trained_steps"),
        "cfg": args.cfg or teacher.info.defaults.get("default_cfg", 4.0),
        "accuracy": prompt_fidelity(predicted, prompt_labels(prompts)),
        "paraphrase_accuracy": prompt_fidelity(evaluator.classify(paraphrase_samples), prompt_labels(meant)),
        "paraphrases": [text for text, _ in pairs],
        "kid": round(kid, 3), "kid_se": round(kid_se, 3),
        "frechet_distance_to_real": round(frechet_distance(features, real_features), 2),
        "sampling_seconds": round(seconds, 1), "seconds_per_image": round(seconds / len(prompts), 3),
        "grid": repo_relative(grid), "per_prompt": per_prompt,
    }
    if isinstance(teacher.codec, LatentCodec):
        result["vae"] = vae_scores(teacher, args.vae_renders, grid.with_name(grid.stem.replace("-samples", "")
                                                                              + "-vae.png"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teachers", default="toy,toy-sd", help="comma-separated names or folders")
    parser.add_argument("--per-prompt", type=int, default=4)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--cfg", type=float, default=None, help="guidance scale (default: each teacher's own)")
    parser.add_argument("--batch", type=int, default=96)
    parser.add_argument("--real", type=int, default=1000, help="real renders for the KID / Fréchet reference")
    parser.add_argument("--vae-renders", type=int, default=256)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--out", default=str(RESULTS / "teacher_quality.json"))
    parser.add_argument("--grid-dir", default="assets", help="where the sample grids go")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    evaluator = Evaluator.load()
    real = render_dataset(2 * args.real, seed=424242).float_images()
    real_features, floor_features = evaluator.embed(real[:args.real]), evaluator.embed(real[args.real:])
    floor_kid, floor_kid_se = kernel_inception_distance(floor_features, real_features)
    teachers = {name: score_teacher(name, evaluator, args, real_features) for name in args.teachers.split(",")}
    result = {
        "command": "python benchmarks/teacher_quality.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if k not in ("out",) and v is not None),
        "prompts": len(benchmark_prompts()), "samples_per_prompt": args.per_prompt, "ddim_steps": args.steps,
        "targets": {"category": 0.95, "colour": 0.95, "view": 0.8, "vae_psnr_db": 26.0},
        "real_renders": args.real, "real_vs_real_floor": {
            "kid": round(floor_kid, 3), "kid_se": round(floor_kid_se, 3),
            "frechet_distance": round(frechet_distance(floor_features, real_features), 2)},
        "teachers": teachers, "device": device_info(torch.device("cpu")),
    }
    write_json_atomic(Path(args.out), result)
    for name, scores in teachers.items():
        print(name, {k: scores[k] for k in ("accuracy", "paraphrase_accuracy", "kid", "kid_se")},
              scores.get("vae", {}).get("psnr_db_mean"))


if __name__ == "__main__":
    main()
