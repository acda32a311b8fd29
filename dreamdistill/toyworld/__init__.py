"""The toy world: procedural objects, their renderer, captions, data sets and the evaluator."""

from dreamdistill.toyworld.captions import caption, parse_prompt
from dreamdistill.toyworld.dataset import ToyBatch, render_dataset, render_objects, sample_objects
from dreamdistill.toyworld.world import (
    CATEGORIES,
    COLOUR_RGB,
    COLOURS,
    DATASET_CAMERAS,
    FRONTED_CATEGORIES,
    SYMMETRIC_CATEGORIES,
    VIEWS,
)

__all__ = [
    "CATEGORIES",
    "COLOURS",
    "COLOUR_RGB",
    "DATASET_CAMERAS",
    "FRONTED_CATEGORIES",
    "SYMMETRIC_CATEGORIES",
    "VIEWS",
    "ToyBatch",
    "caption",
    "parse_prompt",
    "render_dataset",
    "render_objects",
    "sample_objects",
]
