"""Scores of a run's orbit renders by the toy evaluator: R-precision and view consistency."""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

from dreamdistill.errors import DreamDistillError
from dreamdistill.lift3d.lifter import Lifter
from dreamdistill.render.cameras import Cameras, orbit_cameras

ORBIT_ELEVATION = 15.0
"""Elevation (degrees) of the orbit cameras of validation renders, turntables and metrics."""
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


def evaluate(lifter: Lifter, prompt: str) -> dict[str, float | None]:
    """R-precision and view consistency of ``metric_views`` orbit renders (:func:`score_orbit`; toy teachers)."""
    config = lifter.config
    return score_orbit(lambda cameras: lifter.render_views(cameras, config.view_resolution), config.metric_views,
                       prompt, lifter.teacher.info.vocabulary)


def shape_score(vertices, faces, prompt: str, vocabulary: dict | None) -> dict | None:
    """Nearest-real IoU (K = 64 true objects of the prompt's category, 48³ voxels, same frame), the surface against
    that nearest true object (normal consistency, area ratio) and mesh health of
    an exported mesh; None unless the teacher is a toy-world teacher and the prompt names a toy category."""
    from dreamdistill.toyworld.captions import is_in_vocabulary, parse_prompt
    from dreamdistill.toyworld.shape_fidelity import score_mesh

    if not vocabulary or not is_in_vocabulary(prompt) or vertices is None or len(faces) == 0:
        return None
    _, category, _ = parse_prompt(prompt)
    return score_mesh(vertices, faces, category)
