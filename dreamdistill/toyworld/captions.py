"""Captions "a {colour} {category}, {view} view" and a forgiving prompt parser."""

from __future__ import annotations

import re

from dreamdistill.toyworld.world import CATEGORIES, COLOURS, VIEWS

_COLOUR_SYNONYMS = {"grey": "gray", "violet": "purple"}
_VIEW_SYNONYMS = {"top": "overhead", "above": "overhead", "rear": "back", "lateral": "side", "frontal": "front"}
_CATEGORY_SYNONYMS = {"cup": "mug", "automobile": "car", "snow man": "snowman", "snow-man": "snowman"}


def caption(colour: str, category: str, view: str) -> str:
    """The training caption of one render."""
    return f"a {colour} {category}, {view} view"


def _find(text: str, words: tuple[str, ...], synonyms: dict[str, str], suffix: str = "") -> str | None:
    """First (leftmost) vocabulary word or synonym in ``text``; plural 's' accepted."""
    best: tuple[int, str] | None = None
    candidates = {w: w for w in words} | synonyms
    for word, canonical in candidates.items():
        match = re.search(rf"\b{re.escape(word)}s?\b{suffix}", text)
        if match and (best is None or match.start() < best[0]):
            best = (match.start(), canonical)
    return None if best is None else best[1]


def parse_prompt(text: str) -> tuple[str | None, str | None, str | None]:
    """(colour, category, view) words found in a prompt; ``None`` for each that is missing.

    The view word counts only when followed by "view" (so "the back of a car" is not a view),
    except the exact caption form. Matching is case-insensitive and accepts a few synonyms.
    """
    lowered = text.lower()
    colour = _find(lowered, COLOURS, _COLOUR_SYNONYMS)
    category = _find(lowered, CATEGORIES, _CATEGORY_SYNONYMS)
    view = _find(lowered, VIEWS, _VIEW_SYNONYMS, suffix=r"\s*(?:-\s*)?view")
    return colour, category, view


def is_in_vocabulary(text: str) -> bool:
    """True when the prompt names a known category (colour and view are optional)."""
    return parse_prompt(text)[1] is not None
