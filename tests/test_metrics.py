"""R-precision and view consistency from evaluator predictions."""

import torch

from dreamdistill.metrics import r_precision, view_consistency
from dreamdistill.toyworld.world import CATEGORIES, COLOURS, VIEWS


def test_r_precision_counts_category_and_colour():
    chair, red, blue = CATEGORIES.index("chair"), COLOURS.index("red"), COLOURS.index("blue")
    predicted = {"category": torch.tensor([chair, chair, chair, 0 if chair else 1]),
                 "colour": torch.tensor([red, blue, red, red])}
    assert r_precision(predicted, "a red chair") == 0.5
    assert r_precision(predicted, "a chair") == 0.75  # no colour named: category only
    assert r_precision(predicted, "a giraffe") is None


def test_view_consistency_only_for_fronted_categories():
    views = ["front", "side", "back", "side"]
    predicted = torch.tensor([VIEWS.index(v) for v in ("front", "side", "front", "front")])
    assert view_consistency(predicted, views, "a red chair") == 0.5
    assert view_consistency(predicted, views, "a red table") is None  # symmetric: view cannot be seen
    assert view_consistency(predicted, views, "a giraffe") is None
