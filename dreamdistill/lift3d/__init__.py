"""Text-to-3D: a hash-grid field rendered from random cameras, driven by SDS or VSD (see :mod:`.run`).

Modules, importing one way: config -> schedules, regularizers, scene -> lifter -> evaluate -> run.
"""

from dreamdistill.lift3d.config import (
    DEFAULT_METHOD,
    LiftConfig,
    Method,
    OptimConfig,
    RegularizerConfig,
    check_config,
    check_resolution,
    check_resolutions,
    config_from_args,
    configs_dir,
    default_preset,
)
from dreamdistill.lift3d.evaluate import NO_METRICS, ORBIT_ELEVATION, evaluate, score_orbit
from dreamdistill.lift3d.lifter import Lifter, make_guidance
from dreamdistill.lift3d.regularizers import binary_entropy, regularizer_losses, sparsity_penalty
from dreamdistill.lift3d.run import (
    CHECKPOINT_NAME,
    CONFIG_NAME,
    EVAL_NAME,
    METRICS_NAME,
    create_run_dir,
    eval_run,
    export_run,
    finish,
    load_run,
    load_teacher,
    main,
    optimise,
    slugify,
    summary_line,
    teacher_image_size,
    teacher_vocabulary,
)
from dreamdistill.lift3d.scene import build_field, build_scene, load_scene, marching_step, render_orbit, to_uint8
from dreamdistill.lift3d.schedules import (
    active_levels,
    learning_rate_factor,
    pick_shading,
    ramp_weight,
    resolution_at,
    step_seed,
)
from dreamdistill.render.config import RenderConfig
from dreamdistill.render.lights import camera_light
from dreamdistill.scene.config import SceneConfig

__all__ = [
    "CHECKPOINT_NAME", "CONFIG_NAME", "DEFAULT_METHOD", "EVAL_NAME", "METRICS_NAME", "NO_METRICS", "ORBIT_ELEVATION",
    "LiftConfig", "Lifter", "Method", "OptimConfig", "RegularizerConfig", "RenderConfig", "SceneConfig",
    "active_levels", "binary_entropy", "build_field", "build_scene", "camera_light", "check_config",
    "check_resolution", "check_resolutions", "config_from_args", "configs_dir", "create_run_dir", "default_preset",
    "eval_run", "evaluate", "export_run", "finish", "learning_rate_factor", "load_run", "load_scene", "load_teacher",
    "main", "make_guidance", "marching_step", "optimise", "pick_shading", "ramp_weight",
    "regularizer_losses", "render_orbit", "resolution_at", "score_orbit", "slugify", "sparsity_penalty", "step_seed",
    "summary_line", "teacher_image_size", "teacher_vocabulary", "to_uint8",
]
