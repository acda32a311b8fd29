"""The toy world's vocabulary, palette and camera ranges (defined once, used everywhere)."""

from __future__ import annotations

from dreamdistill.render.cameras import VIEW_LABELS, CameraRanges

CATEGORIES: tuple[str, ...] = ("chair", "table", "mug", "lamp", "car", "house", "snowman", "bed")
"""All object categories, in class-index order."""

SYMMETRIC_CATEGORIES: tuple[str, ...] = ("table", "lamp")
"""Rotationally symmetric controls: their view cannot be seen."""

FRONTED_CATEGORIES: tuple[str, ...] = tuple(c for c in CATEGORIES if c not in SYMMETRIC_CATEGORIES)
"""Categories with an unambiguous front (facing +x)."""

COLOURS: tuple[str, ...] = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "gray")
"""Body colour words, in class-index order (no white: the background is white)."""

COLOUR_RGB: dict[str, tuple[float, float, float]] = {
    "red": (0.86, 0.08, 0.08),
    "orange": (1.00, 0.50, 0.00),
    "yellow": (0.96, 0.86, 0.10),
    "green": (0.10, 0.62, 0.16),
    "blue": (0.10, 0.25, 0.90),
    "purple": (0.52, 0.16, 0.74),
    "pink": (1.00, 0.50, 0.78),
    "brown": (0.50, 0.29, 0.11),
    "gray": (0.55, 0.55, 0.55),
}
"""Linear-ish display RGB in [0, 1] of each body colour."""

VIEWS: tuple[str, ...] = tuple(VIEW_LABELS)
"""View words, in class-index order (the same order as ``render.cameras.VIEW_LABELS``)."""

DATASET_CAMERAS = CameraRanges(elevation=(-10.0, 80.0), azimuth=(-180.0, 180.0), distance=(3.0, 3.6), fov=(36.0, 44.0))
"""Camera ranges of every toy-world data set (teacher data, evaluator data); covers overhead views."""

BACKGROUND: tuple[float, float, float] = (1.0, 1.0, 1.0)
"""Plain white background."""


def is_fronted(category: str) -> bool:
    """Whether the category has a visible front (so its view can be scored)."""
    return category in FRONTED_CATEGORIES
