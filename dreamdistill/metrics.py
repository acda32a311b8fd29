"""Quality metrics scored with the toy-world evaluator: prompt fidelity, R-precision, view consistency."""

from __future__ import annotations

import torch

from dreamdistill.toyworld.captions import parse_prompt
from dreamdistill.toyworld.world import CATEGORIES, COLOURS, FRONTED_CATEGORIES, VIEWS


def prompt_labels(prompts: list[str]) -> dict[str, torch.Tensor]:
    """Category / colour / view indices named by toy-world prompts (−1 where a prompt names none)."""
    parsed = [parse_prompt(p) for p in prompts]

    def index(words, vocabulary):
        return torch.tensor([vocabulary.index(w) if w in vocabulary else -1 for w in words])

    colour, category, view = zip(*parsed)
    return {"category": index(category, CATEGORIES), "colour": index(colour, COLOURS), "view": index(view, VIEWS)}


def prompt_fidelity(predicted: dict[str, torch.Tensor], wanted: dict[str, torch.Tensor]) -> dict[str, float]:
    """Share of images whose predicted category / colour / view equals the prompt's.

    View is scored only on categories that have a front (a symmetric object's view cannot be seen)
    and only where the prompt names a view.
    """
    result = {}
    for key in ("category", "colour"):
        named = wanted[key] >= 0
        result[key] = float((predicted[key][named] == wanted[key][named]).float().mean()) if named.any() else None
    fronted = torch.tensor([CATEGORIES[c] in FRONTED_CATEGORIES if c >= 0 else False
                            for c in wanted["category"].tolist()], dtype=torch.bool)
    scored = fronted & (wanted["view"] >= 0)
    view_ok = predicted["view"][scored] == wanted["view"][scored]
    result["view"] = float(view_ok.float().mean()) if scored.any() else None
    return result


def r_precision(predicted: dict[str, torch.Tensor], prompt: str) -> float | None:
    """Share of renders classified as the prompt's category and colour (a missing word is not checked).

    None when the prompt names no toy-world category.
    """
    wanted = prompt_labels([prompt])
    category, colour = int(wanted["category"][0]), int(wanted["colour"][0])
    if category < 0:
        return None
    hit = predicted["category"] == category
    if colour >= 0:
        hit = hit & (predicted["colour"] == colour)
    return float(hit.float().mean())


def view_consistency(predicted_views: torch.Tensor, camera_views: list[str], prompt: str) -> float | None:
    """Share of renders whose predicted view equals the camera's view label (the multi-face "Janus" test).

    Scored only for categories with a front; None otherwise.
    """
    category = int(prompt_labels([prompt])["category"][0])
    if category < 0 or CATEGORIES[category] not in FRONTED_CATEGORIES:
        return None
    expected = torch.tensor([VIEWS.index(v) for v in camera_views])
    return float((predicted_views.cpu() == expected).float().mean())
