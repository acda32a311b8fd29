"""The text-to-3D run's config (LiftConfig and its sections), the presets, and the checks made before a run."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

from dreamdistill.config import Device, Range, Seed, load_config, validate
from dreamdistill.errors import DreamDistillError
from dreamdistill.export import ExportConfig
from dreamdistill.guidance.sds import GuidanceConfig
from dreamdistill.guidance.vsd import CriticConfig
from dreamdistill.paths import configs_dir
from dreamdistill.render.cameras import CameraRanges
from dreamdistill.render.config import RenderConfig
from dreamdistill.scene.config import SceneConfig
from dreamdistill.texture import check_texture_size

Method = Literal["sds", "vsd"]
LEARNING_RATE = Range(0, 1, open_low=True)
"""Adam learning rates: above 0, at most 1 (the presets use 1e-3 to 3e-2)."""
DEFAULT_METHOD: Method = "sds"


@dataclass
class OptimConfig:
    """Adam on the scene."""

    grid_learning_rate: Annotated[float, LEARNING_RATE] = 1e-2
    """Learning rate of the hash-grid tables."""
    mlp_learning_rate: Annotated[float, LEARNING_RATE] = 1e-3
    """Learning rate of the MLP and the learned background."""
    final_learning_rate_factor: Annotated[float, Range(0, 1, open_low=True)] = 0.1
    """Exponential decay to this factor of the start over the run."""


@dataclass
class RegularizerConfig:
    """Regularisers, as per-pixel sums per image rescaled to the teacher's model elements (3·32² for the toy
    teacher, 4·64² latents for SD: the surrogate loss's scale), so a weight means the same for both teachers
    and at any render resolution."""

    opacity_sparsity: Annotated[float, Range(0, 1e6)] = 0.0
    """Weight of Σ opacity (shrinks floaters and the frame-filling blob)."""
    opacity_target: Annotated[float, Range(0, 1)] = 0.0
    """Mean image opacity allowed before ``opacity_sparsity`` applies (0: it always applies)."""
    opacity_entropy: Annotated[float, Range(0, 1e6)] = 0.0
    """Weight of the binary entropy of opacity (pushes pixels to empty or solid)."""
    opacity_entropy_from: Annotated[float, Range(0, 1, open_high=True)] = 0.0
    """Fraction of the run after which the entropy weight ramps linearly from 0 to ``opacity_entropy`` at the end
    (0: full weight throughout); a late ramp lets the shape form before it is made solid."""
    orientation: Annotated[float, Range(0, 1e6)] = 0.0
    """Weight of Σ_i sg(w_i) max(0, n_i·d)² per ray (DreamFusion / Ref-NeRF orientation loss, per sample)."""
    normal_smoothness: Annotated[float, Range(0, 1e6)] = 0.0
    """Weight of the rendered normal map's smoothness: Σ over each pixel's right and lower neighbour of
    sg(|N_u| |N_v|) |n̂_u − n̂_v|², N the composited normal Σ_i w_i n_i and n̂ = N / |N| (a 2D normal smoothness,
    like threestudio's ``normal_smoothness_2d``, weighted): it flattens the ripples a hash grid's fine levels leave
    on a surface. The weight spares silhouettes and hazy rays (small |N|) and bounds the gradient. A sum of
    neighbour differences: on curvature the render resolves, its strength falls as 1/resolution² (4× weaker after
    a 32 → 64 px switch); on ripples under a pixel it does not."""
    normal_smoothness_from: Annotated[float, Range(0, 1, open_high=True)] = 0.0
    """Fraction of the run after which the normal-smoothness weight ramps linearly from 0 to its value at the end
    (0: full weight throughout), so thin parts form before the surface is smoothed."""
    distortion: Annotated[float, Range(0, 1e6)] = 0.0
    """Weight of the per-ray distortion Σ_ij w_i w_j |t_i − t_j| + δ/3 Σ w_i² (Mip-NeRF 360; world units):
    gathers each ray's weight into one short interval, so hazy shells become sharp, opaque surfaces."""
    distortion_from: Annotated[float, Range(0, 1, open_high=True)] = 0.0
    """Fraction of the run after which the distortion weight ramps linearly from 0 to ``distortion`` at the end
    (0: full weight throughout). From the first step it removed the red chair's backrest and seat while they
    were still translucent."""
    distortion_window: Annotated[float, Range(0, 4)] = 0.0
    """Count only the distortion's pairs of samples at most this far apart along the ray (world units; 0: all
    pairs). Over all pairs, two surfaces on one ray pay for the gap between them. Measured once, it did not save
    the red chair: window 0.15 at weight 4 from the first step left only its posts by step 400; the late ramp
    (``distortion_from``) is what kept the backrest and the seat."""
    distortion_normalised: bool = False
    """Divide each ray's distortion by (its opacity² + 0.01): the penalty becomes (nearly) invariant to the ray's
    total weight, so it gathers a haze into a surface instead of also paying it to fade away (the raw term is
    quadratic in the weights, so a vanishing object is one of its minima)."""

    eikonal: Annotated[float, Range(0, 1e6)] = 0.0
    """Weight of Σ_i sg(w_i) (|∇d_i| − 1)² per ray (the eikonal term; for ``scene.geometry: sdf``, where it keeps d
    a signed distance, so β sets the surface's sharpness everywhere)."""

    @property
    def needs_normals(self) -> bool:
        """Whether a training render must composite normals (also on albedo renders): a normal term is weighted."""
        return self.orientation > 0 or self.normal_smoothness > 0


@dataclass
class LiftConfig:
    """Everything a text-to-3D run needs (written to RUN_DIR/config.yaml)."""

    prompt: str = ""
    """What to make."""
    teacher: str = "toy"
    """toy, a teacher folder, or a cached hub id."""
    method: Method = DEFAULT_METHOD
    """sds or vsd."""
    steps: Annotated[int, Range(1, 10**7)] = 600
    """Optimisation steps."""
    seed: Seed = 0
    """Seed of the initialisation and of every step's random stream."""
    device: Device = None
    """cpu, cuda, cuda:N (None: cuda when available)."""
    checkpoint_every: Annotated[int, Range(1, None)] = 100
    """Steps between checkpoints."""
    validate_every: Annotated[int, Range(0, None)] = 200
    """Steps between validation renders (0: only at the end)."""
    scene: SceneConfig = field(default_factory=SceneConfig)
    cameras: CameraRanges = field(default_factory=CameraRanges)
    render: RenderConfig = field(default_factory=RenderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    critic: CriticConfig = field(default_factory=CriticConfig)
    regularizers: RegularizerConfig = field(default_factory=RegularizerConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    turntable_frames: Annotated[int, Range(1, 1000)] = 24
    """Frames of turntable.gif / turntable.mp4."""
    turntable_resolution: Annotated[int, Range(8, 2048)] = 256
    """Resolution of the turntable (the field renders at any resolution)."""
    view_resolution: Annotated[int, Range(8, 1024)] = 64
    """Resolution of validation, turntable and metric renders."""
    metric_views: Annotated[int, Range(1, 360)] = 8
    """Orbit renders (elevation 15°) scored for R-precision and view consistency."""


def default_preset(teacher: str, method: str) -> Path | None:
    """configs/toy-METHOD.yaml for pixel-space teachers, configs/toy-sd-METHOD.yaml for a latent teacher of the toy
    world (toy-sd: its dreamdistill.json carries the toy vocabulary), configs/sd-METHOD.yaml otherwise (None if
    absent)."""
    from dreamdistill.diffusion.teacher import TEACHER_CONFIG_NAME, read_folder_notes, resolve_teacher_path

    folder = resolve_teacher_path(teacher)
    if (folder / TEACHER_CONFIG_NAME).is_file():
        kind = "toy"
    else:
        kind = "toy-sd" if read_folder_notes(folder).get("vocabulary") else "sd"
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
    validate(config)
    chances = [(name, chance) for name, chance in config.render.shading_chances() if chance > 0]
    shading = sum(chance for _, chance in chances)
    if shading > 1 + 1e-9:
        named = " + ".join(f"render.{name}_probability" for name, _ in chances)
        raise DreamDistillError(f"{named} = {shading:g} is over 1 "
                                "(they are chances of one draw; the rest is albedo): lower one of them")
    check_texture_size(config.export.texture_size)


def check_resolution(resolution: int, image_size: int, name: str = "render.resolution") -> None:
    """Renders must be 8 px or more and at most 4× the teacher's image size (it resizes them to its own)."""
    low, high = 8, 4 * image_size
    if not low <= resolution <= high:
        raise DreamDistillError(f"{name}={resolution} cannot be taken by this teacher (image size "
                                f"{image_size}): use a resolution between {low} and {high}")


def check_resolutions(config: LiftConfig, image_size: int) -> None:
    """Both ends of the resolution schedule against the teacher's image size."""
    check_resolution(config.render.resolution, image_size)
    if config.render.resolution_start is not None:
        check_resolution(config.render.resolution_start, image_size, "render.resolution_start")
