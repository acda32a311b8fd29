"""The names of the files in a text-to-3D run folder ``runs/<slug>-<time>/``, in one place.

The loop (:mod:`dreamdistill.lift3d.run`) writes them, the page (:mod:`dreamdistill.report`) and the web app
(:mod:`dreamdistill.app`) read them; all three import the names from here, and this module imports nothing of
the project, so none of them needs another's module for a file name.
"""

from __future__ import annotations

DEFAULT_OUT = "runs"
"""Parent folder of new run folders (``--out``)."""
CONFIG_NAME = "config.yaml"
"""The full config (``dreamdistill --resume RUN_DIR`` reads it back)."""
CHECKPOINT_NAME = "checkpoint.pt"
LOG_NAME = "log.jsonl"
"""One JSON line per step: step, loss, grad_norm, opacity, t, residual_rms, regularisers, critic_loss (VSD)."""
METRICS_NAME = "metrics.json"
EVAL_NAME = "eval.json"
REPORT_NAME = "report.html"
TURNTABLE_NAME = "turntable.gif"
VALIDATION_FOLDER = "validation"
"""Orbit renders side by side, one PNG per validation step (:func:`validation_name`)."""
MESH_STEM = "mesh"
"""The exported meshes are ``mesh.glb``, ``mesh.obj`` (+ ``mesh.mtl``) and ``mesh.ply``."""
MESH_NAME = f"{MESH_STEM}.ply"
"""The mesh the page shows and ``dreamdistill eval`` scores (it keeps the vertex colours)."""


def validation_name(step: int) -> str:
    """The validation strip of a step: ``step-000120.png``."""
    return f"step-{step:06d}.png"


VALIDATION_PATTERN = "step-*.png"
"""Glob of :func:`validation_name`; sorted by name is sorted by step."""
