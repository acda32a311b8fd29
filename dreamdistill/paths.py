"""Where shipped assets live (the repository's assets/ folder, or $DREAMDISTILL_ASSETS)."""

from __future__ import annotations

import os
from pathlib import Path


def assets_dir() -> Path:
    """The folder holding toy-teacher/ and toy-evaluator/."""
    override = os.environ.get("DREAMDISTILL_ASSETS")
    return Path(override) if override else Path(__file__).resolve().parent.parent / "assets"
