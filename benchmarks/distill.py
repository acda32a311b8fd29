"""Distilled students against their teachers on the toy world: KID, Fréchet distance, label accuracies, speed.

    python benchmarks/distill.py [--teacher toy[,toy-sd]] [--students assets] [--num 2000] [--device cuda]
                                 [--cache runs/distill-cache] [--time-num 16] [--floor-num 4096] [--real-only]
                                 [--train [--train-steps N --train-batch B]] [--out benchmarks/results/distill.json]

``--teacher`` takes one teacher or a comma list (``toy,toy-sd``: the pixel toy teacher at 32 px and its latent,
Stable-Diffusion-format twin at 128 px), measured one after the other in one run: one JSON with a section per
teacher under ``teachers`` (each with its own real-vs-real floor, rows, comparisons and checks), one figure with a
block per teacher, and a Markdown table of every row printed at the end. Rows of each teacher, all on the same N
prompts (captions of toy-world scenes from a seed no training used; the same for every teacher) and the same N noise
tensors (of the teacher's model shape):
- the teacher with classifier-free guidance at 64, 16, 8, 4 and 1 DDIM steps (the baseline);
- every student of *that* teacher found under --students, at its own steps and guidance, one network call per step.
  A row's folders, in order (TAG: the teacher's short name, ``toy`` or ``toy-sd``, else its folder's name): METHOD/
  (what ``dreamdistill distill`` writes by default: kd/, pd/, guided/, dmd/, sid/, and guided distillation's stage-1
  student guided-work/guided-stage1/), TAG-METHOD/ (e.g. ``--out students/toy-sd-pd``) and the shipped TAG-pd4/,
  TAG-dmd/, TAG-sid/ (assets/toy-pd4 ..., assets/toy-sd-pd4 ...). The first folder whose recorded teacher (its
  ``distilled_from``, or a LoRA student's ``base_model``) is this teacher is the row; a folder of another teacher is
  skipped with a printed note (``students_skipped`` in the JSON), so one --students folder can hold both teachers'.
Real renders are drawn at each teacher's own resolution (``teacher.image_size``) and, like the samples, downsampled
by the evaluator to its 32 px (antialiased): real and generated images take the same path. Their features and the
teacher rows' samples are cached under --cache (an ignored folder), keyed by everything that makes them (resolution
and teacher included); a cached teacher row is re-timed on its first --time-num prompts, so the speed-ups still come
from this run. 128-px renders are slow on a CPU (about 0.05 s each): ``--real-only`` fills the cache and stops, so a
timed GPU run can start from it.
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
- seconds per image (after a warm-up batch; CUDA synchronised; a latent model's VAE decoding included), network
  evaluations per image, and the speed-up over the same teacher's 64-step CFG row measured in the same run.
``--train`` first distills any missing student of each teacher with its preset (configs/distill-*.yaml), shrunk by
``--train-steps`` / ``--train-batch``, into --students/METHOD for the toy teacher (the presets' folders) and
--students/TAG-METHOD for any other. Writes the JSON and a PNG of sample grids (one column per prompt, one row per
teacher and student, a block per teacher) next to it.
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

from dreamdistill.diffusion.teacher import (
    EMBEDDED_TEACHER,
    SHIPPED_MODELS,
    Teacher,
    base_model_path,
    read_folder_notes,
    teacher_reference,
)
from dreamdistill.errors import DreamDistillError
from dreamdistill.paths import repo_relative
from dreamdistill.toyworld.evaluator import default_path as default_evaluator_path

RESULTS = Path(__file__).parent / "results"
METHODS = ("kd", "pd", "guided", "dmd", "sid")
TARGETS = {"pd_fd_ratio_max": 1.5, "dmd_fd_ratio_max": 2.0, "sid_fd_ratio_max": 1.5,
           "guided_fidelity_gap_max_points": 5.0, "pd_speedup_min": 16.0, "significance_standard_errors": 2.0}
"""Issues 6 and 17's acceptance thresholds (ratios to the 64-step CFG teacher measured in the same run)."""
STUDENT_FOLDERS = (("kd", ("kd", "{tag}-kd")), ("pd", ("pd", "{tag}-pd", "{tag}-pd4")),
                   ("guided-stage1", ("guided-work/guided-stage1", "{tag}-guided-work/guided-stage1")),
                   ("guided", ("guided", "{tag}-guided")), ("dmd", ("dmd", "{tag}-dmd")),
                   ("sid", ("sid", "{tag}-sid")))
"""Row name -> folders under --students that may hold that student (as distill writes them by default, as
--out TAG-METHOD, as shipped in assets/), TAG being the teacher's :func:`teacher_tag`; the first one distilled
from the teacher is the row."""
COMPARISONS = (("sid", "dmd"), ("pd", "teacher-4"), ("dmd", "teacher-64"), ("sid", "teacher-64"))
"""Pairs of rows whose KIDs are compared (paired blocks), when both are present."""
FIGURE_CELL = 96
"""Pixels per image in the figure: the toy teacher's 32 px shown 3× (nearest), toy-sd's 128 px downsampled."""


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--teacher", default="toy",
                        help="teacher, or comma-separated teachers measured side by side: shipped short names (toy, "
                             "toy-sd) or folders (default: the embedded toy teacher)")
    parser.add_argument("--students", type=Path, default=Path("assets"),
                        help="folder holding the students: the shipped toy-pd4/, toy-dmd/, toy-sid/, toy-sd-pd4/ ... "
                             "(default: assets), or kd/, pd/, ..., toy-sd-pd/ ... as distill writes them (students)")
    parser.add_argument("--cache", type=Path, default=Path("runs/distill-cache"),
                        help="folder caching real features and teacher samples between runs (ignored by git)")
    parser.add_argument("--real-only", action="store_true",
                        help="render and embed the real sets of each teacher into --cache, then stop")
    parser.add_argument("--time-num", type=int, default=16,
                        help="prompts a cached teacher row is re-timed on (speed-ups stay within one run)")
    parser.add_argument("--evaluator", type=Path, default=None, help="evaluator folder (default: the shipped one)")
    parser.add_argument("--num", type=int, default=2000, help="samples per row (and real renders)")
    parser.add_argument("--floor-num", type=int, default=4096,
                        help="real renders in each of the two independent sets of the KID floor")
    parser.add_argument("--batch", type=int, default=250, help="sampling batch size")
    parser.add_argument("--teacher-steps", default="64,16,8,4,1", help="comma-separated DDIM steps of teacher rows")
    parser.add_argument("--reference-steps", type=int, default=64, help="teacher steps of the PSNR reference")
    parser.add_argument("--cfg", type=float, default=None, help="teacher guidance (default: each one's default_cfg)")
    parser.add_argument("--seed", type=int, default=2024, help="seed of the real renders, prompts and noise")
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    parser.add_argument("--grid", type=int, default=8, help="prompts (columns) in the figure")
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


def prompt_fidelity(predicted: dict[str, torch.Tensor], prompts: list[str]) -> dict[str, float]:
    """Agreement (%) of the evaluator's labels with the prompts' (parsed from the captions): per attribute and all
    together (the view counting only for categories that have a front)."""
    from dreamdistill.metrics import prompt_labels
    from dreamdistill.toyworld.world import CATEGORIES, FRONTED_CATEGORIES

    wanted = prompt_labels(prompts)
    category, colour, view = (predicted[k] == wanted[k] for k in ("category", "colour", "view"))
    fronted = torch.tensor([CATEGORIES[c] in FRONTED_CATEGORIES for c in wanted["category"].tolist()])
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


# ------------------------------------------------------------------------------------------ real renders
def scene_prompts(num: int, seed: int) -> list[str]:
    """The captions of the toy-world data set ``seed`` (what ``render_dataset(num, seed)`` captions), unrendered."""
    from dreamdistill.toyworld.dataset import labels, sample_scene

    return labels(*sample_scene(num, seed))[0]


def real_preview(num: int, seed: int, count: int, resolution: int) -> torch.Tensor:
    """The first ``count`` renders of the data set ``seed`` of size ``num`` at ``resolution``: [count, 3, H, W]."""
    from dreamdistill.render.cameras import Cameras
    from dreamdistill.toyworld.dataset import render_objects, sample_scene

    objects, cameras = sample_scene(num, seed)
    first = Cameras(*(x[:count] for x in (cameras.azimuth, cameras.elevation, cameras.distance, cameras.fov)))
    return render_objects(objects[:count], first, resolution).images


def real_features(evaluator, evaluator_id: tuple, args: argparse.Namespace, resolution: int):
    """Evaluator features of the real sets at ``resolution`` (cached): the N renders of the prompts (seed), N
    independent ones (seed + 1, the FD floor) and two sets of --floor-num (seeds + 2, + 3, the KID floor)."""
    from dreamdistill.toyworld import render_dataset

    def embed(count: int, seed: int) -> torch.Tensor:
        return evaluator.embed(render_dataset(count, seed=seed, resolution=resolution).images)

    key = (resolution, args.seed, *evaluator_id)
    print(f"real sets at {resolution} px: {args.num}, {args.num} and 2 × {args.floor_num} renders (their features "
          f"cached under {args.cache})", flush=True)
    real, floor = cached(args.cache / f"real-features-{cache_key(args.num, *key)}.pt",
                         lambda: (embed(args.num, args.seed), embed(args.num, args.seed + 1)))
    floor_a, floor_b = cached(args.cache / f"floor-features-{cache_key(args.floor_num, *key)}.pt",
                              lambda: tuple(embed(args.floor_num, args.seed + k) for k in (2, 3)))
    return real, floor, floor_a, floor_b


# ------------------------------------------------------------------------------------------ figure
def fit(images: torch.Tensor, size: int) -> torch.Tensor:
    """Images resized to size×size for display: nearest when enlarging by a whole factor (crisp pixels), else
    bilinear (antialiased when shrinking)."""
    from dreamdistill.diffusion.teacher import resize

    if size % images.shape[-1] == 0:
        return F.interpolate(images.float(), size=(size, size), mode="nearest")
    return resize(images.float(), size)


def save_figure(blocks: list[tuple[str, list[tuple[str, torch.Tensor]]]], prompts: list[str], path: Path,
                cell: int = FIGURE_CELL) -> Path:
    """A PNG with one column per prompt (its caption on top) and, per block (a teacher), one labelled row of
    images [n, 3, H, W] in [0, 1] per sampler, every image shown at ``cell`` pixels."""
    from PIL import Image, ImageDraw

    from dreamdistill.fileio import save_image_atomic

    label_width, pad, line = 190, 2, 12
    columns = max(images.shape[0] for _, rows in blocks for _, images in rows)
    header = 2 * line + 4
    height = header + sum(line + 4 + len(rows) * (cell + pad) for _, rows in blocks)
    canvas = Image.new("RGB", (label_width + columns * (cell + pad), height), "white")
    draw = ImageDraw.Draw(canvas)
    for c, prompt in enumerate(prompts[:columns]):
        for k, text in enumerate(prompt.split(", ", 1)):
            draw.text((label_width + c * (cell + pad) + 2, 2 + k * line), text, fill="black")
    top = header
    for title, rows in blocks:
        draw.line((0, top, canvas.width, top), fill="gray")
        draw.text((4, top + 2), title, fill="black")
        top += line + 4
        for label, images in rows:
            draw.text((4, top + cell // 2 - 6), label, fill="black")
            for c, image in enumerate(fit(images, cell)):
                array = (image.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().numpy()
                canvas.paste(Image.fromarray(array), (label_width + c * (cell + pad), top))
            top += cell + pad
    return save_image_atomic(path, canvas)


# ------------------------------------------------------------------------------------------ students
def teacher_tag(path: Path) -> str:
    """How a run names a teacher: its shipped short name (toy, toy-sd), else its folder's name."""
    reference = teacher_reference(path)
    return reference if reference in SHIPPED_MODELS else Path(path).name


def train_folder(tag: str, method: str) -> str:
    """Where --train puts a student under --students: METHOD for the toy teacher (the presets' folders),
    TAG-METHOD for any other teacher."""
    return method if tag == EMBEDDED_TEACHER else f"{tag}-{method}"


def recorded_teacher(folder: Path) -> Path | None:
    """The resolved folder of the teacher a student was distilled from (its ``distilled_from``, else a LoRA
    student's ``base_model``); None when it records none or that teacher cannot be found."""
    notes = read_folder_notes(folder)
    name = notes.get("distilled_from") or notes.get("base_model")
    if not name:
        return None
    try:
        return base_model_path(str(name)).resolve()
    except DreamDistillError:
        return None


def student_rows(students: Path, teacher_path: Path) -> tuple[list[tuple[str, Path]], dict[str, str]]:
    """(row name, folder) of every student of the teacher at ``teacher_path`` present under ``students``, in a
    fixed order, and {folder: why it was skipped} for the candidates that belong to another teacher."""
    from dreamdistill.distill.student import is_student_folder

    tag, wanted = teacher_tag(teacher_path), Path(teacher_path).resolve()
    found, skipped = [], {}
    for name, candidates in STUDENT_FOLDERS:
        for candidate in candidates:
            folder = students / candidate.format(tag=tag)
            if not is_student_folder(folder):
                continue
            source = recorded_teacher(folder)
            if source == wanted:
                found.append((name, folder))
                break
            skipped[repo_relative(folder)] = (f"distilled from {repo_relative(source)}" if source else
                                              "records no teacher that can be found") + f", not from {tag}"
    return found, skipped


def train_missing(args: argparse.Namespace, name: str, teacher: Teacher, cfg: float) -> None:
    """Distill every student of ``teacher`` (loaded from ``name``) missing under --students with its preset, at the
    teacher rows' ``cfg``."""
    from dreamdistill.config import load_config
    from dreamdistill.distill import DistillConfig, distill, preset_path
    from dreamdistill.distill.student import is_student_folder

    tag = teacher_tag(teacher.info.path)
    for method in METHODS:
        out = args.students / train_folder(tag, method)
        if is_student_folder(out):
            continue
        overrides = [f"teacher={name}", f"out={out}", f"cfg={cfg}", *args.train_set]
        if args.train_steps:
            overrides += [f"loop.steps={args.train_steps}", f"guided.stage1_steps={args.train_steps}"]
        if args.train_batch:
            overrides.append(f"loop.batch_size={args.train_batch}")
        preset = preset_path(method)
        config = load_config(DistillConfig, preset if preset.is_file() else None, overrides, base={"method": method})
        print(f"training the {method} student of {tag} into {out}", flush=True)
        distill(config, teacher=teacher)


def training_summary(folder: Path) -> dict | None:
    """The recipe a student was trained with (from its folder's notes), in the few numbers that size it."""
    saved = read_folder_notes(folder)
    recipe = saved.get("recipe")
    if not recipe:
        return None
    loop, method = recipe["loop"], recipe["method"]
    summary = {"method": method, "steps_per_phase": loop["steps"], "batch_size": loop["batch_size"],
               "learning_rate": loop["learning_rate"], "data_size": recipe["data"]["size"]}
    if recipe.get("student", {}).get("lora_rank"):
        summary["lora_rank"] = recipe["student"]["lora_rank"]
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


# ------------------------------------------------------------------------------------------ main
def load_teacher(name: str, args: argparse.Namespace, device: torch.device) -> tuple[Teacher, float]:
    """The teacher ``name`` and its rows' guidance, after distilling its missing students with --train."""
    teacher = Teacher.from_pretrained(name, device=device, dtype=torch.float32 if args.train else None)
    cfg = args.cfg if args.cfg is not None else float(teacher.info.defaults.get("default_cfg", 4.0))
    if args.train:
        train_missing(args, name, teacher, cfg)
        teacher = Teacher.from_pretrained(name, device=device)
    return teacher, cfg


def measure_teacher(teacher: Teacher, cfg: float, evaluator, evaluator_id: tuple, prompts: list[str],
                    args: argparse.Namespace) -> tuple[dict, list[tuple[str, torch.Tensor]]]:
    """One teacher's section of the results (floor, rows, comparisons, checks) and its figure rows."""
    from dreamdistill.toyworld.evaluator import frechet_distance, kernel_inception_distance, kid_difference

    device, resolution, tag = teacher.device, teacher.image_size, teacher_tag(teacher.info.path)
    print(f"{tag}: {teacher.info.format} teacher at {resolution} px, model shape {tuple(teacher.model_shape)}",
          flush=True)
    real, floor, kid_floor_a, kid_floor_b = real_features(evaluator, evaluator_id, args, resolution)
    fd_floor = frechet_distance(real, floor)
    kid_floor = kernel_inception_distance(kid_floor_a, kid_floor_b)
    teacher_steps = [int(s) for s in args.teacher_steps.split(",") if s.strip()]
    teacher_steps = [args.reference_steps] + [s for s in teacher_steps if s != args.reference_steps]
    noise = torch.randn((args.num, *teacher.model_shape), generator=torch.Generator().manual_seed(args.seed))

    samplers: list[tuple[str, Teacher, int, float]] = [(f"teacher-{n}", teacher, n, cfg) for n in teacher_steps]
    found, skipped = student_rows(args.students, teacher.info.path)
    for folder, why in skipped.items():
        print(f"  {folder}: {why}; skipped", flush=True)
    for name, folder in found:
        student = Teacher.from_pretrained(folder, device=device)
        defaults = student.info.defaults
        samplers.append((name, student, int(defaults.get("default_steps", 1)), float(defaults.get("default_cfg", 1.0))))

    unet_file = Path(teacher.info.path) / "unet" / "diffusion_pytorch_model.safetensors"
    teacher_id = (repo_relative(teacher.info.path), unet_file.stat().st_size if unet_file.exists() else 0,
                  teacher.dtype, device.type, resolution)
    preview = real_preview(args.num, args.seed, min(args.grid, args.num), resolution)
    figure = [(f"real renders ({resolution} px)", preview)]
    rows, reference, features_of, curves = [], None, {}, {}
    for name, model, steps, guidance in samplers:
        print(f"{tag} {name}: {steps} steps, cfg {guidance:g}", flush=True)
        hit = False
        if model is teacher:
            path = args.cache / f"{tag}-{name}-{cache_key(*teacher_id, steps, guidance, args.num, args.seed)}.pt"
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
            "fd": round(frechet_distance(features, real), 4),
            **dict(zip(("kid", "kid_se"), (round(v, 6) for v in kernel_inception_distance(features, real)))),
            **prompt_fidelity(evaluator.classify(images), prompts),
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
            gap, se = kid_difference(features_of[a], features_of[b], real)
            verdict = ("better" if gap < 0 else "worse") if abs(gap) > TARGETS["significance_standard_errors"] * se \
                else "within two standard errors"
            comparisons[f"{a}_vs_{b}"] = {"kid_difference": round(gap, 6), "se": round(se, 6), "verdict": verdict}
    checks.update({f"{key}_kid": value["verdict"] for key, value in comparisons.items()})
    section = {
        "teacher": repo_relative(teacher.info.path), "format": teacher.info.format, "image_size": resolution,
        "model_shape": list(teacher.model_shape), "cfg": cfg, "fd_floor": round(fd_floor, 4),
        "kid_floor": [round(v, 6) for v in kid_floor], "kid_floor_num": args.floor_num, "rows": rows,
        "comparisons": comparisons, "checks": checks, "students_skipped": skipped, "training_curves": curves,
    }
    return section, figure


def run(args: argparse.Namespace, command: str = "") -> dict | None:
    """Every teacher's section and the figure (None with --real-only, once the real features are cached)."""
    from dreamdistill.toyworld.evaluator import Evaluator

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    evaluator = Evaluator.load(args.evaluator, device=device)
    evaluator_file = Path(args.evaluator or default_evaluator_path()) / "model.safetensors"
    evaluator_id = (repo_relative(evaluator_file), evaluator_file.stat().st_size)
    names = [name.strip() for name in args.teacher.split(",") if name.strip()]
    if not names:
        raise DreamDistillError("--teacher is empty: pass toy, toy-sd, a folder, or a comma list of them")
    prompts = scene_prompts(args.num, args.seed)
    sections, blocks = {}, []
    for name in names:
        teacher, cfg = load_teacher(name, args, device)
        tag = teacher_tag(teacher.info.path)
        if tag in sections:
            raise DreamDistillError(f"--teacher names {tag!r} twice (teachers are told apart by their short name "
                                    "or folder name)")
        if args.real_only:
            real_features(evaluator, evaluator_id, args, teacher.image_size)
            sections[tag] = None
            continue
        sections[tag], figure = measure_teacher(teacher, cfg, evaluator, evaluator_id, prompts, args)
        blocks.append((f"{tag} ({teacher.info.format}, {teacher.image_size} px)", figure))
    if args.real_only:
        return None
    figure_path = args.out.with_suffix(".png")
    save_figure(blocks, prompts, figure_path)
    return {
        "command": command,
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "torch": torch.__version__, "num_samples": args.num, "seed": args.seed, "targets": TARGETS,
        "teachers": sections, "figure": repo_relative(figure_path),
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


def summary_table(result: dict) -> str:
    """Every row of every teacher as one Markdown table (KID ± its standard error in the JSON's units), floors first."""
    lines = ["| teacher | row | steps | NFE | speed-up | FD | KID | prompt fidelity | category | colour | view |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for tag, section in result["teachers"].items():
        kid, se = section["kid_floor"]
        lines.append(f"| {tag} | real vs real | | | | {section['fd_floor']:.1f} | {kid:.2f} ± {se:.2f} | | | | |")
        for row in section["rows"]:
            view = row["view_accuracy_fronted"]
            lines.append(
                f"| {tag} | {row['name']} | {row['steps']} | {row['network_evals_per_image']} | "
                f"{row['speedup_vs_teacher64']:g}× | {row['fd']:.1f} | {row['kid']:.2f} ± {row['kid_se']:.2f} | "
                f"{row['prompt_fidelity']:.1f} % | {row['category_accuracy']:.1f} % | "
                f"{row['colour_accuracy']:.1f} % | {'—' if view is None else f'{view:.1f} %'} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    try:
        if args.num < 4 or args.floor_num < 4 or args.batch < 1 or args.time_num < 1:
            raise DreamDistillError("--num and --floor-num must be at least 4 (KID's standard error needs 2 blocks "
                                    "of 2), --batch and --time-num at least 1")
        result = run(args, "python benchmarks/distill.py " + " ".join(argv))
    except DreamDistillError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if result is None:
        print(f"real features cached in {args.cache}")
        return 0
    from dreamdistill.fileio import write_json_atomic

    write_json_atomic(args.out, result)
    print(json.dumps({tag: section["checks"] for tag, section in result["teachers"].items()}, indent=2))
    print(summary_table(result))
    print(f"wrote {args.out} and {result['figure']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
