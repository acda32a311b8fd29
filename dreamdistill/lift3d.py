"""The text-to-3D optimisation loop: a hash-grid field rendered from random cameras, driven by SDS or VSD.

``dreamdistill "a red chair"`` -> :func:`main`: config (preset YAML <- ``--set`` <- flags), validation before
anything is written, a run directory ``runs/<slug>-<time>/`` holding

    config.yaml        the full config (``--resume RUN_DIR`` reads it back)
    checkpoint.pt      field, background, occupancy, optimiser(s), critic, step (atomic, every N steps)
    validation/        orbit renders every ``validate_every`` steps
    turntable.gif      (+ turntable.mp4 when an ffmpeg writer is installed)
    mesh.glb, mesh.obj (+ mesh.mtl), mesh.ply
    metrics.json       r_precision, view_consistency (toy teachers), seconds, steps, mesh statistics
    eval.json          ``dreamdistill eval RUN_DIR``: the metrics re-scored from checkpoint.pt

Every step draws its randomness (cameras, shading, timesteps, noise, critic) from a generator seeded by
(seed, step), so a resumed run replays the same streams as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import math
import os
import re
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from dreamdistill.config import load_config, read_yaml, save_yaml
from dreamdistill.errors import DreamDistillError
from dreamdistill.export import EmptySceneError, ExportConfig, export_meshes, write_turntable
from dreamdistill.fileio import save_image_atomic, torch_save_atomic, write_json_atomic
from dreamdistill.guidance.sds import SDS, GuidanceConfig
from dreamdistill.guidance.vsd import VSD, CriticConfig
from dreamdistill.render.cameras import CameraRanges, Cameras, orbit_cameras, sample_cameras
from dreamdistill.render.config import RenderConfig
from dreamdistill.render.lights import camera_light
from dreamdistill.render.occupancy import OccupancyGrid
from dreamdistill.render.volume import Shading, render
from dreamdistill.scene.background import Background
from dreamdistill.scene.config import SceneConfig
from dreamdistill.scene.field import Field
from dreamdistill.scene.hashgrid import HashGrid

Method = Literal["sds", "vsd"]
DEFAULT_METHOD: Method = "sds"
CONFIG_NAME, CHECKPOINT_NAME, METRICS_NAME = "config.yaml", "checkpoint.pt", "metrics.json"
EVAL_NAME = "eval.json"
ORBIT_ELEVATION = 15.0
"""Elevation (degrees) of the orbit cameras of validation renders, turntables and metrics."""


# ---- configuration ------------------------------------------------------------------------------------


@dataclass
class OptimConfig:
    """Adam on the scene."""

    grid_learning_rate: float = 1e-2
    """Learning rate of the hash-grid tables."""
    mlp_learning_rate: float = 1e-3
    """Learning rate of the MLP and the learned background."""
    final_learning_rate_factor: float = 0.1
    """Exponential decay to this factor of the start over the run."""


@dataclass
class RegularizerConfig:
    """Regularisers, as per-pixel sums per image counted in teacher pixels (the surrogate loss's scale; a render
    larger than the teacher's image size weighs each of its pixels by (image size / resolution)²)."""

    opacity_sparsity: float = 0.0
    """Weight of Σ opacity (shrinks floaters and the frame-filling blob)."""
    opacity_target: float = 0.0
    """Mean image opacity allowed before ``opacity_sparsity`` applies (0: it always applies)."""
    opacity_entropy: float = 0.0
    """Weight of the binary entropy of opacity (pushes pixels to empty or solid)."""
    opacity_entropy_from: float = 0.0
    """Fraction of the run after which the entropy weight ramps linearly from 0 to ``opacity_entropy`` at the end
    (0: full weight throughout); a late ramp lets the shape form before it is made solid."""
    orientation: float = 0.0
    """Weight of opacity-weighted max(0, n·d)² on composited normals (DreamFusion's orientation loss)."""


@dataclass
class LiftConfig:
    """Everything a text-to-3D run needs (written to RUN_DIR/config.yaml)."""

    prompt: str = ""
    """What to make."""
    teacher: str = "toy"
    """toy, a teacher folder, or a cached hub id."""
    method: Method = DEFAULT_METHOD
    """sds or vsd."""
    steps: int = 600
    """Optimisation steps."""
    seed: int = 0
    """Seed of the initialisation and of every step's random stream."""
    device: str | None = None
    """cpu, cuda, cuda:N (None: cuda when available)."""
    checkpoint_every: int = 100
    """Steps between checkpoints."""
    validate_every: int = 200
    """Steps between validation renders (0: only at the end)."""
    scene: SceneConfig = field(default_factory=SceneConfig)
    cameras: CameraRanges = field(default_factory=CameraRanges)
    render: RenderConfig = field(default_factory=RenderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    regularizers: RegularizerConfig = field(default_factory=RegularizerConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    turntable_frames: int = 24
    """Frames of turntable.gif."""
    view_resolution: int = 64
    """Resolution of validation, turntable and metric renders."""
    metric_views: int = 8
    """Orbit renders (elevation 15°) scored for R-precision and view consistency."""


def configs_dir() -> Path:
    """The shipped presets (configs/ in the source tree)."""
    return Path(__file__).resolve().parent.parent / "configs"


def default_preset(teacher: str, method: str) -> Path | None:
    """configs/toy-METHOD.yaml for pixel-space teachers, configs/sd-METHOD.yaml otherwise (None if absent)."""
    from dreamdistill.diffusion.teacher import TEACHER_CONFIG_NAME, resolve_teacher_path

    kind = "toy" if (resolve_teacher_path(teacher) / TEACHER_CONFIG_NAME).is_file() else "sd"
    path = configs_dir() / f"{kind}-{method}.yaml"
    return path if path.is_file() else None


def config_from_args(args: argparse.Namespace) -> LiftConfig:
    """Preset (``--config`` or the default for the teacher and method) <- ``--set`` <- explicit flags."""
    teacher = args.teacher or "toy"
    preset = args.config or default_preset(teacher, args.guidance or DEFAULT_METHOD)
    config = load_config(LiftConfig, preset, list(args.overrides))
    flags = {"prompt": args.prompt, "teacher": args.teacher, "method": args.guidance, "steps": args.steps,
             "seed": args.seed, "device": args.device}
    return dataclasses.replace(config, **{k: v for k, v in flags.items() if v is not None})


def check_config(config: LiftConfig) -> None:
    """Reject settings that cannot run, with one line each (before anything is written)."""
    if not config.prompt.strip():
        raise DreamDistillError('empty prompt: pass what to make, e.g. dreamdistill "a red chair"')
    for name, value in (("steps", config.steps), ("render.batch_size", config.render.batch_size),
                        ("checkpoint_every", config.checkpoint_every), ("export.resolution", config.export.resolution),
                        ("view_resolution", config.view_resolution), ("metric_views", config.metric_views)):
        if value < 1:
            raise DreamDistillError(f"{name} must be at least 1, got {value}")
    from dreamdistill.export import FORMATS
    from dreamdistill.texture import check_texture_size

    for fmt in config.export.formats:
        if fmt not in FORMATS:
            raise DreamDistillError(f"unknown mesh format {fmt!r} in export.formats; choose from {', '.join(FORMATS)}")
    check_texture_size(config.export.texture_size)


def check_resolution(resolution: int, image_size: int, name: str = "render.resolution") -> None:
    """Renders must be 8 px or more and at most 4× the teacher's image size (it resizes them to its own)."""
    low, high = 8, 4 * image_size
    if not low <= resolution <= high:
        raise DreamDistillError(f"{name}={resolution} cannot be taken by this teacher (image size "
                                f"{image_size}): use a resolution between {low} and {high}")


# ---- pure helpers -------------------------------------------------------------------------------------


def step_seed(seed: int, step: int) -> int:
    """Seed of step ``step``'s random stream (independent of how the run was interrupted)."""
    return (seed * 1_000_003 + step * 7_919 + 12_345) % (2**63 - 1)


def resolution_at(config: RenderConfig, progress: float) -> int:
    """The resolution schedule."""
    if config.resolution_start is not None and progress < config.resolution_switch:
        return config.resolution_start
    return config.resolution


def pick_shading(config: RenderConfig, progress: float, generator: torch.Generator) -> Shading:
    """albedo during warm-up, then diffuse / textureless / albedo with the configured chances."""
    draw = float(torch.rand(1, generator=generator))
    if progress < config.albedo_warmup:
        return "albedo"
    if draw < config.diffuse_probability:
        return "diffuse"
    if draw < config.diffuse_probability + config.textureless_probability:
        return "textureless"
    return "albedo"


def ramp_weight(weight: float, start: float, progress: float) -> float:
    """``weight`` scaled by a linear ramp from 0 at ``start`` to 1 at the end of the run (1 when start = 0)."""
    if start <= 0:
        return weight
    return weight * min(max((progress - start) / (1 - start), 0.0), 1.0)


def active_levels(scene: SceneConfig, progress: float) -> float | None:
    """The coarse-to-fine level schedule: ``levels_start`` growing linearly to all levels at ``levels_full_at``."""
    if scene.levels_start <= 0 or scene.levels_start >= scene.levels:
        return None
    fraction = min(progress / scene.levels_full_at, 1.0) if scene.levels_full_at > 0 else 1.0
    return scene.levels_start + (scene.levels - scene.levels_start) * fraction


def sparsity_penalty(opacity: torch.Tensor, target: float) -> torch.Tensor:
    """Σ over images of H·W·max(0, mean opacity − target) for opacity [B, 1, H, W] (Σ opacity when target = 0)."""
    pixels = opacity.shape[-1] * opacity.shape[-2]
    return (opacity.flatten(1).mean(1) - target).clamp(min=0).sum() * pixels


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """−p log p − (1 − p) log(1 − p), elementwise, with p clamped away from 0 and 1."""
    p = p.clamp(1e-5, 1 - 1e-5)
    return -(p * p.log() + (1 - p) * (1 - p).log())


def orientation_penalty(normal: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """max(0, N·d)² per pixel [B, H, W] for composited normals N [B, 3, H, W] and ray directions d [B, H, W, 3]."""
    return (normal.permute(0, 2, 3, 1) * directions).sum(-1).clamp(min=0).pow(2)


def slugify(prompt: str, limit: int = 40) -> str:
    """'A red chair!' -> 'a-red-chair'."""
    return re.sub(r"[^a-z0-9]+", "-", prompt.lower()).strip("-")[:limit].strip("-") or "run"


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """[B, 3, H, W] in [0, 1] -> [B, H, W, 3] uint8."""
    return (images.detach().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255 + 0.5).astype(np.uint8)


def build_field(s: SceneConfig) -> Field:
    """The hash-grid field of a scene config (parameters drawn from the global RNG)."""
    grid = HashGrid(levels=s.levels, features_per_level=s.features_per_level, log2_table_size=s.log2_table_size,
                    base_resolution=s.base_resolution, max_resolution=s.max_resolution, backend=s.backend)
    return Field(grid, hidden_dim=s.hidden_dim, hidden_layers=s.hidden_layers, blob_density=s.blob_density,
                 blob_radius=s.blob_radius)


def marching_step(config: RenderConfig) -> float:
    """Marching step size: the box diagonal (2√3) over ``step_divisions``."""
    return 2 * math.sqrt(3) / config.step_divisions


def build_scene(config: LiftConfig, device: torch.device | str = "cpu"
                ) -> tuple[Field, Background, OccupancyGrid | None]:
    """Field, background and occupancy grid (None when ``occupancy_resolution`` is 0) on ``device``, from the
    global RNG."""
    r = config.render
    field_ = build_field(config.scene).to(device)
    background = Background(r.background, r.background_color).to(device)
    occupancy = None
    if r.occupancy_resolution > 0:
        occupancy = OccupancyGrid(r.occupancy_resolution, r.occupancy_threshold, warmup_steps=r.occupancy_warmup,
                                  update_every=r.occupancy_update_every).to(device)
    return field_, background, occupancy


def load_scene(config: LiftConfig, checkpoint: dict,
               device: torch.device) -> tuple[Field, Background, OccupancyGrid | None]:
    """:func:`build_scene` with a checkpoint's field (and its background and occupancy when it has them), on
    ``device``, in eval mode."""
    field_, background, occupancy = build_scene(config, device)
    field_.load_state_dict(checkpoint["field"])
    if checkpoint.get("background") is not None:
        background.load_state_dict(checkpoint["background"])
    if occupancy is not None and checkpoint.get("occupancy") is not None:
        occupancy.load_state_dict(checkpoint["occupancy"])
    field_.eval()
    background.eval()
    return field_, background, occupancy


@torch.no_grad()
def render_orbit(field_: Field, background: Background, occupancy: OccupancyGrid | None, config: RenderConfig,
                 cameras: Cameras, resolution: int, shading: Shading = "diffuse") -> torch.Tensor:
    """Deterministic renders [B, 3, H, W] (on the CPU) with the training light (the teacher's look): the
    validation, turntable and metric renders of a run, and ``dreamdistill eval``. Puts the modules in eval mode."""
    field_.eval()
    background.eval()
    images = []
    for part in range(0, len(cameras), 4):
        sub = Cameras(*(t[part:part + 4] for t in (cameras.azimuth, cameras.elevation, cameras.distance,
                                                   cameras.fov)))
        out = render(field_, background, sub, resolution, shading=shading, light=camera_light(sub, config),
                     occupancy=occupancy, step_size=marching_step(config), stratified=False)
        images.append(out.image.cpu())
    return torch.cat(images)


NO_METRICS: dict[str, float | None] = {"r_precision": None, "view_consistency": None}


def score_orbit(render_views: Callable[[Cameras], torch.Tensor], views: int, prompt: str,
                vocabulary: dict | None, explain: bool = False) -> dict[str, float | None]:
    """R-precision and view consistency of ``views`` orbit renders at elevation 15°, classified by the toy
    evaluator. Both None when the teacher has no toy ``vocabulary``, the prompt names no toy category (a one-line
    note on stderr when ``explain``) or the evaluator is missing (always a one-line warning)."""
    from dreamdistill.metrics import r_precision, view_consistency
    from dreamdistill.toyworld.captions import CATEGORIES, is_in_vocabulary

    if not vocabulary or not is_in_vocabulary(prompt):
        if explain:
            why = ("the teacher is not a toy-world teacher" if not vocabulary else
                   f"the prompt names no toy-world category ({', '.join(CATEGORIES)})")
            print(f"note: metrics are null: {why}", file=sys.stderr)
        return dict(NO_METRICS)
    from dreamdistill.toyworld.evaluator import Evaluator

    try:
        evaluator = Evaluator.load()
    except DreamDistillError as error:
        print(f"warning: metrics skipped: {error}", file=sys.stderr)
        return dict(NO_METRICS)
    cameras = orbit_cameras(views, elevation=ORBIT_ELEVATION)
    predicted = evaluator.classify(render_views(cameras))
    return {"r_precision": r_precision(predicted, prompt),
            "view_consistency": view_consistency(predicted["view"], cameras.view_labels(), prompt)}


# ---- the optimisation state ---------------------------------------------------------------------------


class Lifter:
    """Field, background, occupancy grid, optimiser and guidance for one prompt; one :meth:`step` per update."""

    def __init__(self, config: LiftConfig, teacher):
        self.config, self.teacher = config, teacher
        self.device = teacher.device
        torch.manual_seed(config.seed)
        self.field, self.background, self.occupancy = build_scene(config, self.device)
        self.step_size = marching_step(config.render)
        o = config.optim
        groups = [{"params": list(self.field.grid.parameters()), "lr": o.grid_learning_rate},
                  {"params": list(self.field.mlp.parameters()) + list(self.background.parameters()),
                   "lr": o.mlp_learning_rate}]
        for group in groups:
            group["initial_lr"] = group["lr"]
        self.optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)
        if config.method == "vsd":
            self.guidance = VSD(teacher, config.prompt, config.guidance, config.critic)
        else:
            self.guidance = SDS(teacher, config.prompt, config.guidance)

    # -- one update
    def step(self, step: int) -> dict[str, float]:
        """One scene update (and, for VSD, the critic's updates) at ``step`` of ``config.steps``."""
        config, r = self.config, self.config.render
        progress = step / max(config.steps, 1)
        generator = torch.Generator().manual_seed(step_seed(config.seed, step))
        torch.manual_seed(step_seed(config.seed, step))  # global draws (e.g. a random background)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * config.optim.final_learning_rate_factor**progress
        self.field.train()
        self.field.active_levels = active_levels(config.scene, progress)
        self.background.train()
        if self.occupancy is not None:
            self.occupancy.update(self.field.density, self.step_size, step=step, generator=generator)
        cameras = sample_cameras(r.batch_size, config.cameras, generator)
        shading = pick_shading(r, progress, generator)
        light = camera_light(cameras, r, generator)
        resolution = resolution_at(r, progress)
        regs = config.regularizers
        out = render(self.field, self.background, cameras, resolution, shading=shading, light=light,
                     occupancy=self.occupancy, step_size=self.step_size, stratified=True, generator=generator,
                     return_normals=regs.orientation > 0)
        views = cameras.view_labels()
        result = self.guidance(out.image, views, progress, generator, camera=cameras.embedding())
        # Regularisers are per-pixel sums counted in the teacher's pixels (the surrogate's scale) at any
        # render resolution: a 64 px render for a 32 px teacher weighs each render pixel a quarter.
        per_image = (self.teacher.image_size / resolution) ** 2 / out.image.shape[0]
        loss = result["loss"]
        if regs.opacity_sparsity:
            loss = loss + regs.opacity_sparsity * sparsity_penalty(out.opacity, regs.opacity_target) * per_image
        entropy_weight = ramp_weight(regs.opacity_entropy, regs.opacity_entropy_from, progress)
        if entropy_weight:
            loss = loss + entropy_weight * binary_entropy(out.opacity).sum() * per_image
        if regs.orientation and out.normal is not None:
            from dreamdistill.render.cameras import generate_rays

            _, directions = generate_rays(cameras.to(self.device), resolution)
            loss = loss + regs.orientation * orientation_penalty(out.normal, directions).sum() * per_image
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        stats = {"loss": float(loss.detach()), "grad_norm": float(result["grad_norm"]),
                 "opacity": float(out.opacity.detach().mean())}
        stats.update(self.guidance.after_step(result, generator))
        return stats

    # -- views
    def render_views(self, cameras: Cameras, resolution: int, shading: Shading = "diffuse") -> torch.Tensor:
        """Deterministic renders [B, 3, H, W] with the training light (:func:`render_orbit`)."""
        return render_orbit(self.field, self.background, self.occupancy, self.config.render, cameras, resolution,
                            shading)

    # -- checkpoints
    def state_dict(self) -> dict:
        state = {"field": self.field.state_dict(), "background": self.background.state_dict(),
                 "optimizer": self.optimizer.state_dict(),
                 "occupancy": self.occupancy.state_dict() if self.occupancy is not None else None}
        return {**state, **self.guidance.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.field.load_state_dict(state["field"])
        self.background.load_state_dict(state["background"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.occupancy is not None and state.get("occupancy") is not None:
            self.occupancy.load_state_dict(state["occupancy"])
        self.guidance.load_state_dict(state)

    def close(self) -> None:
        """Undo the guidance's changes to the shared teacher (VSD's adapter and hook)."""
        self.guidance.close()


# ---- the run ------------------------------------------------------------------------------------------


def create_run_dir(out: Path, prompt: str) -> Path:
    """A new ``OUT/<slug>-<YYYYmmdd-HHMMSS>`` folder (suffixed when taken)."""
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    base = Path(out) / f"{slugify(prompt)}-{stamp}"
    path, n = base, 1
    while path.exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    path.mkdir(parents=True)
    return path


def load_run(run_dir: str | Path) -> tuple[Path, LiftConfig, dict | None]:
    """The config and the checkpoint (None before the first one) of an existing run folder."""
    run_dir = Path(run_dir)
    if not (run_dir / CONFIG_NAME).is_file():
        raise DreamDistillError(f"{run_dir} is not a text-to-3D run: it has no {CONFIG_NAME} "
                                "(pass a folder made by `dreamdistill PROMPT`, e.g. runs/a-red-chair-...)")
    from dreamdistill.config import from_dict

    config = from_dict(LiftConfig, read_yaml(run_dir / CONFIG_NAME))
    checkpoint = None
    if (run_dir / CHECKPOINT_NAME).is_file():
        checkpoint = torch.load(run_dir / CHECKPOINT_NAME, map_location="cpu", weights_only=False)
    return run_dir, config, checkpoint


def teacher_image_size(name_or_path: str) -> int | None:
    """The image size a teacher folder takes, read from its config files (None when they do not say)."""
    import json

    from dreamdistill.diffusion.teacher import TEACHER_CONFIG_NAME, resolve_teacher_path

    path = resolve_teacher_path(name_or_path)
    try:
        if (path / TEACHER_CONFIG_NAME).is_file():
            return int(json.loads((path / TEACHER_CONFIG_NAME).read_text())["image_size"])
        unet = json.loads((path / "unet" / "config.json").read_text())
        vae = json.loads((path / "vae" / "config.json").read_text())
        return int(unet["sample_size"]) * 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, KeyError, ValueError, TypeError):
        return None


def teacher_vocabulary(name_or_path: str) -> dict | None:
    """A toy teacher's vocabulary, read from its folder without loading it (None for other or missing teachers)."""
    import json

    from dreamdistill.diffusion.teacher import TEACHER_CONFIG_NAME, resolve_teacher_path

    try:
        return json.loads((resolve_teacher_path(name_or_path) / TEACHER_CONFIG_NAME).read_text()).get("vocabulary")
    except (DreamDistillError, OSError, ValueError, AttributeError):
        return None


def check_resolutions(config: LiftConfig, image_size: int) -> None:
    """Both ends of the resolution schedule against the teacher's image size."""
    check_resolution(config.render.resolution, image_size)
    if config.render.resolution_start is not None:
        check_resolution(config.render.resolution_start, image_size, "render.resolution_start")


def quiet_libraries() -> None:
    """No progress bars or info/warning chatter from transformers and diffusers while loading models."""
    import diffusers
    import transformers

    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    diffusers.utils.logging.set_verbosity_error()
    diffusers.utils.logging.disable_progress_bar()


def load_teacher(config: LiftConfig):
    """The teacher, with the render resolutions checked against it (before loading when the folder says)."""
    from dreamdistill.diffusion.teacher import Teacher

    size = teacher_image_size(config.teacher)
    if size is not None:
        check_resolutions(config, size)
    quiet_libraries()
    teacher = Teacher.from_pretrained(config.teacher, device=config.device)
    check_resolutions(config, teacher.image_size)
    return teacher


def save_checkpoint(lifter: Lifter, run_dir: Path, step: int, seconds: float) -> None:
    torch_save_atomic(run_dir / CHECKPOINT_NAME, {"step": step, "seconds": seconds, **lifter.state_dict()})


def save_validation(lifter: Lifter, run_dir: Path, step: int) -> Path:
    """Four orbit renders side by side: validation/step-NNNNNN.png."""
    images = lifter.render_views(orbit_cameras(4, elevation=ORBIT_ELEVATION), lifter.config.view_resolution)
    strip = np.concatenate(list(to_uint8(images)), axis=1)
    return save_image_atomic(run_dir / "validation" / f"step-{step:06d}.png", strip)


def evaluate(lifter: Lifter, prompt: str) -> dict[str, float | None]:
    """R-precision and view consistency of ``metric_views`` orbit renders (:func:`score_orbit`; toy teachers)."""
    config = lifter.config
    return score_orbit(lambda cameras: lifter.render_views(cameras, config.view_resolution), config.metric_views,
                       prompt, lifter.teacher.info.vocabulary)


def finish(lifter: Lifter, run_dir: Path, steps: int, seconds: float) -> dict:
    """Turntable, meshes (an empty scene gives a warning and no mesh) and metrics.json after the last step."""
    config = lifter.config
    save_validation(lifter, run_dir, steps)
    cameras = orbit_cameras(config.turntable_frames, elevation=ORBIT_ELEVATION)
    written = write_turntable(to_uint8(lifter.render_views(cameras, config.view_resolution)),
                              run_dir / "turntable.gif")
    try:
        mesh_files, mesh = export_meshes(lifter.field, config.export, run_dir, lifter.device, lifter.step_size)
        mesh_stats = mesh.stats()
    except EmptySceneError as error:
        print(f"warning: no mesh written: {error}", file=sys.stderr)
        mesh_files, mesh_stats = [], None
    metrics = {**evaluate(lifter, config.prompt), "seconds": round(seconds, 1), "steps": steps,
               "method": config.method, "prompt": config.prompt, "mesh": mesh_stats}
    written += mesh_files + [write_json_atomic(run_dir / METRICS_NAME, metrics)]
    return {"run_dir": run_dir, "files": written, "metrics": metrics}


def optimise(lifter: Lifter, run_dir: Path, checkpoint: dict | None = None, stop_after: int | None = None,
             progress_bar: bool = True) -> dict | None:
    """Run (or continue) the loop with checkpoints and validation, then :func:`finish`.

    ``stop_after`` ends the loop after that step without finishing (used to test resuming); returns None then.
    """
    from tqdm import tqdm

    config = lifter.config
    start, seconds = 0, 0.0
    if checkpoint is not None:
        lifter.load_state_dict(checkpoint)
        start, seconds = int(checkpoint["step"]), float(checkpoint["seconds"])
    bar = tqdm(range(start, config.steps), initial=start, total=config.steps, desc=config.method,
               unit="step", disable=not progress_bar, dynamic_ncols=True, file=sys.stderr)
    began = time.perf_counter() - seconds
    for step in bar:
        stats = lifter.step(step)
        bar.set_postfix(loss=f"{stats['loss']:.3g}", opacity=f"{stats['opacity']:.2f}", refresh=False)
        done = step + 1
        if done % config.checkpoint_every == 0 or done == config.steps:
            save_checkpoint(lifter, run_dir, done, time.perf_counter() - began)
        if config.validate_every and done % config.validate_every == 0 and done < config.steps:
            save_validation(lifter, run_dir, done)
        if stop_after is not None and done >= stop_after:
            bar.close()
            return None
    bar.close()
    return finish(lifter, run_dir, config.steps, time.perf_counter() - began)


def summary_line(result: dict) -> str:
    """One line: the run folder, the files written and the metrics."""
    metrics = result["metrics"]

    def fmt(value):
        return "n/a" if value is None else f"{value:.2f}"

    names = ", ".join(sorted({p.name for p in result["files"]}))
    return (f"done: {result['run_dir']} ({names}); r_precision {fmt(metrics['r_precision'])}, "
            f"view_consistency {fmt(metrics['view_consistency'])}, {metrics['steps']} steps in "
            f"{metrics['seconds']:.0f} s")


def main(args: argparse.Namespace) -> int:
    """``dreamdistill PROMPT`` and ``dreamdistill PROMPT --resume RUN_DIR``."""
    checkpoint = None
    if args.resume:
        if args.config or args.overrides:
            raise DreamDistillError("--resume continues a run with its own config.yaml; drop --config and --set")
        run_dir, config, checkpoint = load_run(args.resume)
        changes = {k: v for k, v in (("steps", args.steps), ("device", args.device)) if v is not None}
        config = dataclasses.replace(config, **changes)
    else:
        config = config_from_args(args)
        run_dir = None
    check_config(config)
    teacher = load_teacher(config)
    warning = teacher.vocabulary_warning(config.prompt)
    if warning:
        print(warning, file=sys.stderr)
    lifter = Lifter(config, teacher)
    if run_dir is None:
        run_dir = create_run_dir(Path(args.out), config.prompt)
    save_yaml(config, run_dir / CONFIG_NAME)
    print(f"{config.method} on {config.teacher!r}: {config.prompt!r} -> {run_dir}", file=sys.stderr)
    result = optimise(lifter, run_dir, checkpoint)
    print(summary_line(result))
    return 0


def export_run(run_dir: str | Path, formats: list[str], resolution: int | None = None,
               threshold: float | None = None, device: str | None = None,
               texture_size: int | None = None) -> list[Path]:
    """``dreamdistill export RUN_DIR``: meshes from a run's checkpoint (without loading the teacher).
    ``texture_size`` None keeps the run's ``export.texture_size``."""
    from dreamdistill.texture import check_texture_size

    run_dir, config, checkpoint = load_run(run_dir)
    if checkpoint is None:
        raise DreamDistillError(f"{run_dir} has no {CHECKPOINT_NAME} yet: nothing to export")
    export = dataclasses.replace(config.export, formats=formats, threshold=threshold,
                                 resolution=resolution or config.export.resolution,
                                 texture_size=config.export.texture_size if texture_size is None else texture_size)
    if export.resolution < 8:
        raise DreamDistillError(f"--resolution must be at least 8, got {export.resolution}")
    check_texture_size(export.texture_size, "--texture-size")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    field_, _, _ = load_scene(config, checkpoint, device)
    written, _ = export_meshes(field_, export, run_dir, device, marching_step(config.render))
    return written


def eval_run(run_dir: str | Path, views: int | None = None, resolution: int | None = None,
             device: str | None = None) -> dict:
    """``dreamdistill eval RUN_DIR``: the metrics of ``views`` orbit renders of a run's checkpoint, written to
    RUN_DIR/eval.json (without loading the teacher). ``views`` and ``resolution`` default to the run's
    ``metric_views`` and ``view_resolution``, which reproduces metrics.json."""
    for name, value in (("--views", views), ("--resolution", resolution)):
        if value is not None and value < 1:
            raise DreamDistillError(f"{name} must be at least 1, got {value}")
    run_dir, config, checkpoint = load_run(run_dir)
    views = views or config.metric_views
    resolution = resolution or config.view_resolution
    if checkpoint is None:
        raise DreamDistillError(f"{run_dir} has no {CHECKPOINT_NAME} yet: nothing to evaluate")
    if not os.access(run_dir, os.W_OK):
        raise DreamDistillError(f"cannot write {EVAL_NAME} into {run_dir}: it is not writable")
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    field_, background, occupancy = load_scene(config, checkpoint, device)

    def render_views(cameras: Cameras) -> torch.Tensor:
        return render_orbit(field_, background, occupancy, config.render, cameras, resolution)

    metrics = score_orbit(render_views, views, config.prompt, teacher_vocabulary(config.teacher), explain=True)
    result = {**metrics, "views": views, "resolution": resolution, "step": int(checkpoint["step"]),
              "prompt": config.prompt}
    write_json_atomic(run_dir / EVAL_NAME, result)
    return result
