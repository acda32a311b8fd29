"""Distilled students against their teacher on the toy world: Fréchet distance, prompt fidelity, PSNR, speed.

    python benchmarks/distill.py [--teacher toy] [--students assets] [--num 2000] [--device cuda]
                                 [--cache runs/distill-cache] [--time-num 16] [--floor-num 4096]
                                 [--train [--train-steps N --train-batch B]] [--out benchmarks/results/distill.json]

Rows, all measured in one run on the same N prompts (captions of fresh toy-world renders from a seed
no training used) and the same N noise tensors:
- the teacher with classifier-free guidance at 64, 16, 8, 4 and 1 DDIM steps (the baseline);
- every student found under --students at its own steps and guidance: the shipped ones (``--students assets``,
  the default: toy-pd4/, toy-dmd/, toy-sid/, no training needed) or those ``dreamdistill distill`` writes
  (``--students students``: kd/, pd/, guided/, dmd/, sid/, and guided distillation's stage-1 student
  guided-work/guided-stage1/), one network call per step.
The real renders' features and the teacher rows' samples are cached under --cache (an ignored folder), keyed by
everything that makes them; a cached teacher row is re-timed on its first --time-num prompts, so the speed-ups
still come from this run.
Columns:
- fd: Fréchet distance between the evaluator's features of the samples and of the N real renders
  (fd_floor in the JSON: the N real renders against N independent ones, the smallest FD N samples can show);
- kid, kid_se: kernel inception distance (unbiased at any N) with its standard error over 10 disjoint
  blocks (kid_floor: the same for two further independent real sets of --floor-num renders each; real renders
  are cheap, and the floor's standard error must be small for the teacher's row to stand clear of it, since
  KID is unbiased the floor's expected value is 0 at any size); ``comparisons`` gives paired KID differences
  (both rows against the same real blocks) with their standard errors, and calls a row better or worse only
  when the gap exceeds two of them;
- prompt fidelity: the evaluator's category and colour agree with the prompt (and its view, for
  categories that have a front), with the per-attribute accuracies;
- psnr_vs_teacher64: PSNR against the teacher's 64-step CFG DDIM output from the same noise (the ODE
  solution KD and PD approximate; reported for every row);
- seconds per image (after a warm-up batch; CUDA synchronised), network evaluations per image, and the
  speed-up over the 64-step CFG teacher measured in the same run.
``--train`` first distills any missing student with its preset (configs/distill-*.yaml), shrunk by
``--train-steps`` / ``--train-batch``. Writes the JSON and a PNG of sample grids (one row per sampler,
the same prompt and noise in each column) next to it.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from dreamdistill.diffusion.teacher import Teacher
from dreamdistill.errors import DreamDistillError
from dreamdistill.paths import repo_relative
from dreamdistill.toyworld.evaluator import default_path as default_evaluator_path

RESULTS = Path(__file__).parent / "results"
METHODS = ("kd", "pd", "guided", "dmd", "sid")
TARGETS = {"pd_fd_ratio_max": 1.5, "dmd_fd_ratio_max": 2.0, "sid_fd_ratio_max": 1.5,
           "guided_fidelity_gap_max_points": 5.0, "pd_speedup_min": 16.0, "significance_standard_errors": 2.0}
"""Issues 6 and 17's acceptance thresholds (ratios to the 64-step CFG teacher measured in the same run)."""
STUDENT_FOLDERS = (("kd", ("kd",)), ("pd", ("pd", "toy-pd4")), ("guided-stage1", ("guided-work/guided-stage1",)),
                   ("guided", ("guided",)), ("dmd", ("dmd", "toy-dmd")), ("sid", ("sid", "toy-sid")))
"""Row name -> folders under --students that hold that student (as distill writes them, as shipped in assets/)."""
COMPARISONS = (("sid", "dmd"), ("pd", "teacher-4"), ("dmd", "teacher-64"), ("sid", "teacher-64"))
"""Pairs of rows whose KIDs are compared (paired blocks), when both are present."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="toy", help="teacher folder (default: the embedded toy teacher)")
    parser.add_argument("--students", type=Path, default=Path("assets"),
                        help="folder holding the students: the shipped toy-pd4/, toy-dmd/, toy-sid/ (default: "
                             "assets), or kd/, pd/, guided/, dmd/, sid/ as written by the presets (students)")
    parser.add_argument("--cache", type=Path, default=Path("runs/distill-cache"),
                        help="folder caching real features and teacher samples between runs (ignored by git)")
    parser.add_argument("--time-num", type=int, default=16,
                        help="prompts a cached teacher row is re-timed on (speed-ups stay within one run)")
    parser.add_argument("--evaluator", type=Path, default=None, help="evaluator folder (default: the shipped one)")
    parser.add_argument("--num", type=int, default=2000, help="samples per row (and real renders)")
    parser.add_argument("--floor-num", type=int, default=4096,
                        help="real renders in each of the two independent sets of the KID floor")
    parser.add_argument("--batch", type=int, default=250, help="sampling batch size")
    parser.add_argument("--teacher-steps", default="64,16,8,4,1", help="comma-separated DDIM steps of teacher rows")
    parser.add_argument("--reference-steps", type=int, default=64, help="teacher steps of the PSNR reference")
    parser.add_argument("--cfg", type=float, default=None, help="teacher guidance (default: its default_cfg)")
    parser.add_argument("--seed", type=int, default=2024, help="seed of the real renders, prompts and noise")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--grid", type=int, default=8, help="samples per row in the figure")
    parser.add_argument("--train", action="store_true", help="distill missing students first (presets)")
    parser.add_argument("--train-steps", type=int, default=None, help="with --train: loop.steps override")
    parser.add_argument("--train-batch", type=int, default=None, help="with --train: loop.batch_size override")
    parser.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                        help="with --train: extra config override for every method (repeatable)")
    parser.add_argument("--out", type=Path, default=RESULTS / "distill.json")
    return parser.parse_args(argv)


# ------------------------------------------------------------------------------------------ metrics
def psnr(images: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean over images of 10·log10(1 / MSE) for images in [0, 1]."""
    mse = (images.float() - reference.float()).square().flatten(1).mean(dim=1).clamp(min=1e-10)
    return float((10 * torch.log10(1.0 / mse)).mean())


def prompt_fidelity(predicted: dict[str, torch.Tensor], real) -> dict[str, float]:
    """Agreement of the evaluator's labels with the prompts' (the real renders' labels): per attribute and all."""
    category = predicted["category"] == real.category
    colour = predicted["colour"] == real.colour
    view = predicted["view"] == real.view
    fronted = real.fronted
    everything = category & colour & (view | ~fronted)
    return {
        "prompt_fidelity": round(100 * float(everything.float().mean()), 2),
        "category_accuracy": round(100 * float(category.float().mean()), 2),
        "colour_accuracy": round(100 * float(colour.float().mean()), 2),
        "view_accuracy_fronted": round(100 * float(view[fronted].float().mean()), 2) if fronted.any() else None,
    }


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sample_all(model: Teacher, prompts: list[str], noise: torch.Tensor, steps: int, cfg: float,
               batch: int) -> tuple[torch.Tensor, float]:
    """All images (CPU, [0, 1]) and the sampling seconds, timed after an untimed one-step warm-up batch."""
    model.encode_text(sorted(set(prompts)))  # text embeddings are cached per prompt: keep them out of the timing
    model.sample(prompts[:batch], steps=1, guidance_scale=cfg, noise=noise[:batch])  # warm-up: one step is enough
    synchronise(model.device)
    started = time.perf_counter()
    images = [model.sample(prompts[i:i + batch], steps=steps, guidance_scale=cfg, noise=noise[i:i + batch]).cpu()
              for i in range(0, len(prompts), batch)]
    synchronise(model.device)
    return torch.cat(images), time.perf_counter() - started


def cache_key(*parts) -> str:
    """A short stable file name for what a cached tensor depends on."""
    import hashlib

    return hashlib.sha1(json.dumps([str(p) for p in parts]).encode()).hexdigest()[:16]


def cached(path: Path, compute):
    """torch.load(path) when it exists, else compute(), saved there (atomically) first."""
    from dreamdistill.fileio import torch_save_atomic

    if path.is_file():
        return torch.load(path, weights_only=True)
    value = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    torch_save_atomic(path, value)
    return value


def sample_cached(model: Teacher, prompts: list[str], noise: torch.Tensor, steps: int, cfg: float,
                  batch: int, path: Path, time_num: int) -> tuple[torch.Tensor, float, bool]:
    """Images and seconds per image of one teacher row; with a cache hit the images come from ``path`` and the
    time from sampling the first ``time_num`` prompts again now. Returns (images, seconds per image, hit)."""
    if path.is_file():
        images = torch.load(path, weights_only=True).float()
        count = max(1, min(time_num, len(prompts)))
        _, seconds = sample_all(model, prompts[:count], noise[:count], steps, cfg, min(batch, count))
        return images, seconds / count, True
    images, seconds = sample_all(model, prompts, noise, steps, cfg, batch)
    from dreamdistill.fileio import torch_save_atomic

    path.parent.mkdir(parents=True, exist_ok=True)
    torch_save_atomic(path, images.half())
    return images.half().float(), seconds / len(prompts), False


# ------------------------------------------------------------------------------------------ figure
def save_figure(rows: list[tuple[str, torch.Tensor]], path: Path, scale: int = 3) -> Path:
    """One labelled row of images per sampler (images [n, 3, H, W] in [0, 1]), as a PNG."""
    from PIL import Image, ImageDraw

    from dreamdistill.fileio import save_image_atomic

    label_width, pad = 190, 2
    size = rows[0][1].shape[-1] * scale
    columns = max(images.shape[0] for _, images in rows)
    canvas = Image.new("RGB", (label_width + columns * (size + pad), len(rows) * (size + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for r, (label, images) in enumerate(rows):
        top = r * (size + pad)
        draw.text((4, top + size // 2 - 6), label, fill="black")
        images = F.interpolate(images.float(), size=(size, size), mode="nearest")
        for c, image in enumerate(images):
            array = (image.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().numpy()
            canvas.paste(Image.fromarray(array), (label_width + c * (size + pad), top))
    return save_image_atomic(path, canvas)


# ------------------------------------------------------------------------------------------ students
def train_missing(args: argparse.Namespace, teacher: Teacher, cfg: float) -> None:
    """Distill every student missing under --students with its preset, at the teacher rows' ``cfg``."""
    from dreamdistill.config import load_config
    from dreamdistill.distill import DistillConfig, distill, preset_path

    for method in METHODS:
        out = args.students / method
        if (out / "dreamdistill_teacher.json").is_file():
            continue
        overrides = [f"teacher={args.teacher}", f"out={out}", f"cfg={cfg}", *args.train_set]
        if args.train_steps:
            overrides += [f"loop.steps={args.train_steps}", f"guided.stage1_steps={args.train_steps}"]
        if args.train_batch:
            overrides.append(f"loop.batch_size={args.train_batch}")
        preset = preset_path(method)
        config = load_config(DistillConfig, preset if preset.is_file() else None, overrides, base={"method": method})
        print(f"training the {method} student into {out}", flush=True)
        distill(config, teacher=teacher)


def training_summary(folder: Path) -> dict | None:
    """The recipe a student was trained with (from its folder's JSON), in the few numbers that size it."""
    saved = json.loads((folder / "dreamdistill_teacher.json").read_text())
    recipe = saved.get("recipe")
    if not recipe:
        return None
    loop, method = recipe["loop"], recipe["method"]
    summary = {"method": method, "steps_per_phase": loop["steps"], "batch_size": loop["batch_size"],
               "learning_rate": loop["learning_rate"], "data_size": recipe["data"]["size"]}
    if method in ("pd", "guided"):
        summary["pd_rounds"] = f"{recipe['pd']['teacher_steps']} -> {recipe['pd']['student_steps']} steps"
    if method == "guided":
        summary["stage1_steps"] = recipe["guided"]["stage1_steps"] or loop["steps"]
    if method == "dmd":
        summary.update(fake_steps=recipe["dmd"]["fake_steps"], fake=recipe["dmd"]["fake"],
                       regression_weight=recipe["dmd"]["regression_weight"],
                       fake_learning_rate=recipe["dmd"].get("fake_learning_rate"))
    if method == "sid":
        summary.update(alpha=recipe["sid"]["alpha"], fake_steps=recipe["sid"]["fake_steps"],
                       fake=recipe["sid"]["fake"], fake_learning_rate=recipe["sid"].get("fake_learning_rate"),
                       fake_cfg=recipe["sid"].get("fake_cfg", 1.0), adam_beta1=recipe["sid"].get("adam_beta1", 0.9))
    if method in ("kd", "dmd"):
        summary["rollout_steps"] = recipe["data"]["rollout_steps"]
    if saved.get("steps_trained"):
        summary["steps_trained"] = saved["steps_trained"]
    if "trained_steps" in saved:  # a shipped student (benchmarks/ship_students.py)
        summary.update(trained_steps=saved["trained_steps"], training_minutes=saved.get("training_minutes"))
    elif saved.get("steps_trained"):  # as distill wrote it: its work folder's log holds the minutes
        from dreamdistill.distill.student import training_minutes

        summary.update(trained_steps=sum(saved["steps_trained"].values()),
                       training_minutes=training_minutes(folder.with_name(f"{folder.name}-work")) or None)
    if recipe["loop"].get("mixed_precision", "no") != "no":
        summary["mixed_precision"] = recipe["loop"]["mixed_precision"]
    return summary


def training_curve(folder: Path) -> list[dict] | None:
    """The logged losses of a student's training (a shipped folder's training_log.jsonl, else FOLDER-work/log.jsonl)."""
    for log in (folder / "training_log.jsonl", folder.with_name(f"{folder.name}-work") / "log.jsonl"):
        if log.is_file():
            return [json.loads(line) for line in log.read_text().splitlines() if line.strip()]
    return None


def student_rows(students: Path) -> list[tuple[str, Path]]:
    """(row name, folder) of every student present, in a fixed order."""
    found = []
    for name, candidates in STUDENT_FOLDERS:
        for candidate in candidates:
            folder = students / candidate
            if (folder / "dreamdistill_teacher.json").is_file():
                found.append((name, folder))
                break
    return found


# ------------------------------------------------------------------------------------------ main
def run(args: argparse.Namespace) -> dict:
    from dreamdistill.toyworld import render_dataset
    from dreamdistill.toyworld.evaluator import Evaluator, frechet_distance, kernel_inception_distance, kid_difference

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    teacher = Teacher.from_pretrained(args.teacher, device=device, dtype=torch.float32 if args.train else None)
    cfg = args.cfg if args.cfg is not None else float(teacher.info.defaults.get("default_cfg", 4.0))
    if args.train:
        train_missing(args, teacher, cfg)
        teacher = Teacher.from_pretrained(args.teacher, device=device)
    teacher_steps = [int(s) for s in args.teacher_steps.split(",") if s.strip()]
    teacher_steps = [args.reference_steps] + [s for s in teacher_steps if s != args.reference_steps]
    evaluator = Evaluator.load(args.evaluator, device=device)

    print(f"rendering {args.num} real toy-world images (and {args.num} + 2 × {args.floor_num} more for the "
          "floors)...", flush=True)
    real = render_dataset(args.num, seed=args.seed)
    evaluator_file = Path(args.evaluator or default_evaluator_path()) / "model.safetensors"
    evaluator_id = (repo_relative(evaluator_file), evaluator_file.stat().st_size)
    real_features, floor_features = cached(
        args.cache / f"real-features-{cache_key(args.num, args.seed, *evaluator_id)}.pt",
        lambda: (evaluator.embed(real.images), evaluator.embed(render_dataset(args.num, seed=args.seed + 1).images)))
    kid_floor_a, kid_floor_b = cached(
        args.cache / f"floor-features-{cache_key(args.floor_num, args.seed, *evaluator_id)}.pt",
        lambda: tuple(evaluator.embed(render_dataset(args.floor_num, seed=args.seed + k).images) for k in (2, 3)))
    fd_floor = frechet_distance(real_features, floor_features)
    kid_floor = kernel_inception_distance(kid_floor_a, kid_floor_b)
    prompts = real.captions
    noise = torch.randn((args.num, *teacher.model_shape), generator=torch.Generator().manual_seed(args.seed))

    samplers: list[tuple[str, Teacher, int, float]] = [(f"teacher-{n}", teacher, n, cfg) for n in teacher_steps]
    for name, folder in student_rows(args.students):
        student = Teacher.from_pretrained(folder, device=device)
        defaults = student.info.defaults
        samplers.append((name, student, int(defaults.get("default_steps", 1)), float(defaults.get("default_cfg", 1.0))))

    teacher_file = Path(teacher.info.path) / "unet" / "diffusion_pytorch_model.safetensors"
    teacher_id = (repo_relative(teacher.info.path), teacher_file.stat().st_size if teacher_file.exists() else 0,
                  teacher.dtype, device.type)
    rows, figure, reference, features_of = [], [("real renders", real.float_images()[: args.grid])], None, {}
    curves = {}
    for name, model, steps, guidance in samplers:
        print(f"{name}: {steps} steps, cfg {guidance:g}", flush=True)
        hit = False
        if model is teacher:
            path = args.cache / f"{name}-{cache_key(*teacher_id, steps, guidance, args.num, args.seed)}.pt"
            images, seconds_per_image, hit = sample_cached(model, prompts, noise, steps, guidance, args.batch, path,
                                                           args.time_num)
        else:
            images, seconds = sample_all(model, prompts, noise, steps, guidance, args.batch)
            seconds_per_image = seconds / args.num
        if name == f"teacher-{args.reference_steps}":
            reference = images
        doubled = guidance != 1.0 and not model.info.guidance_embedding
        features = features_of[name] = evaluator.embed(images)
        row = {
            "name": name, "steps": steps, "cfg": guidance, "network_evals_per_image": steps * (2 if doubled else 1),
            "fd": round(frechet_distance(features, real_features), 4),
            **dict(zip(("kid", "kid_se"), (round(v, 6) for v in kernel_inception_distance(features, real_features)))),
            **prompt_fidelity(evaluator.classify(images), real),
            "psnr_vs_teacher64": round(psnr(images, reference), 3) if reference is not None else None,
            "seconds_per_image": seconds_per_image,
            **({"samples_cached": True, "timed_on": min(args.time_num, args.num)} if hit else {}),
            "folder": repo_relative(model.info.path),
            "training": None if model is teacher else training_summary(Path(model.info.path)),
        }
        rows.append(row)
        if model is not teacher and (curve := training_curve(Path(model.info.path))):
            curves[name] = curve
        figure.append((f"{name} ({steps} step{'s' * (steps > 1)})", images[: args.grid]))
        shown = {k: v for k, v in row.items() if k not in ("name", "folder", "training")}
        print("  " + ", ".join(f"{k} {v}" for k, v in shown.items()), flush=True)

    by_name = {row["name"]: row for row in rows}
    base = by_name[f"teacher-{args.reference_steps}"]
    for row in rows:
        row["speedup_vs_teacher64"] = round(base["seconds_per_image"] / row["seconds_per_image"], 2)
        row["fd_ratio_vs_teacher64"] = round(row["fd"] / base["fd"], 3) if base["fd"] > 0 else math.inf
    checks = acceptance(by_name, base, kid_floor)
    comparisons = {}
    for a, b in COMPARISONS:
        if a in features_of and b in features_of:
            gap, se = kid_difference(features_of[a], features_of[b], real_features)
            verdict = ("better" if gap < 0 else "worse") if abs(gap) > TARGETS["significance_standard_errors"] * se \
                else "within two standard errors"
            comparisons[f"{a}_vs_{b}"] = {"kid_difference": round(gap, 6), "se": round(se, 6), "verdict": verdict}
    checks.update({f"{key}_kid": value["verdict"] for key, value in comparisons.items()})
    figure_path = args.out.with_suffix(".png")
    save_figure(figure, figure_path)
    return {
        "command": "python benchmarks/distill.py " + " ".join(sys.argv[1:]),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__,
        "teacher": repo_relative(teacher.info.path), "cfg": cfg, "num_samples": args.num, "seed": args.seed,
        "fd_floor": round(fd_floor, 4), "kid_floor": [round(v, 6) for v in kid_floor], "kid_floor_num": args.floor_num,
        "rows": rows, "comparisons": comparisons, "checks": checks, "targets": TARGETS, "training_curves": curves,
        "figure": repo_relative(figure_path),
    }


def acceptance(by_name: dict[str, dict], base: dict, kid_floor: tuple[float, float]) -> dict:
    """Issues 6 and 17's criteria, from this run's rows (absent where a row is missing)."""
    floor, floor_se = kid_floor
    gap = base["kid"] - floor
    checks: dict = {"kid_floor_below_teacher64": gap > TARGETS["significance_standard_errors"] * math.hypot(
        base["kid_se"], floor_se), "teacher64_kid_over_floor_standard_errors": round(
        gap / max(math.hypot(base["kid_se"], floor_se), 1e-12), 1)}
    pd, teacher4, dmd = by_name.get("pd"), by_name.get("teacher-4"), by_name.get("dmd")
    if pd:
        checks["pd_fd_ratio"] = pd["fd_ratio_vs_teacher64"]
        checks["pd_fd_ok"] = pd["fd_ratio_vs_teacher64"] <= TARGETS["pd_fd_ratio_max"] and (
            teacher4 is None or pd["fd"] < teacher4["fd"])
        checks["pd_speedup"] = pd["speedup_vs_teacher64"]
        checks["pd_speedup_ok"] = pd["speedup_vs_teacher64"] >= TARGETS["pd_speedup_min"]
    if dmd:
        checks["dmd_fd_ratio"] = dmd["fd_ratio_vs_teacher64"]
        checks["dmd_fd_ok"] = dmd["fd_ratio_vs_teacher64"] <= TARGETS["dmd_fd_ratio_max"]
    sid = by_name.get("sid")
    if sid:
        checks["sid_fd_ratio"] = sid["fd_ratio_vs_teacher64"]
        checks["sid_fd_ok"] = sid["fd_ratio_vs_teacher64"] <= TARGETS["sid_fd_ratio_max"]
    for name in ("guided-stage1", "guided"):
        if name in by_name:
            gap = round(base["prompt_fidelity"] - by_name[name]["prompt_fidelity"], 2)
            checks[f"{name}_fidelity_gap_points"] = gap
            checks[f"{name}_fidelity_ok"] = gap <= TARGETS["guided_fidelity_gap_max_points"]
    return checks


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        if args.num < 4 or args.floor_num < 4 or args.batch < 1 or args.time_num < 1:
            raise DreamDistillError("--num and --floor-num must be at least 4 (KID's standard error needs 2 blocks "
                                    "of 2), --batch and --time-num at least 1")
        result = run(args)
    except DreamDistillError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    from dreamdistill.fileio import write_json_atomic

    write_json_atomic(args.out, result)
    print(json.dumps(result["checks"], indent=2))
    print(f"wrote {args.out} and {result['figure']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
