"""The prompts of amortised training: the toy vocabulary's colour × category pairs, a fixed held-out split,
and each step's draw of training prompts (pure functions)."""

from __future__ import annotations

import torch

from dreamdistill.toyworld.world import CATEGORIES, COLOURS

HELD_OUT_PAIRS: tuple[tuple[str, str], ...] = (
    ("red", "chair"), ("orange", "chair"),
    ("orange", "table"), ("purple", "table"),
    ("blue", "mug"), ("yellow", "mug"),
    ("pink", "lamp"), ("brown", "lamp"),
    ("green", "car"), ("red", "car"),
    ("yellow", "house"), ("blue", "house"),
    ("gray", "snowman"), ("pink", "snowman"),
    ("purple", "bed"), ("gray", "bed"),
)
"""(colour, category) pairs never drawn in training: two per category. The first of each pair is the prompt of
``benchmarks/results/text_to_3d.json`` (the per-prompt default's 8 prompts), so instant and per-prompt results
compare on prompts the generator never saw; the second is a different colour, chosen so no colour is held out
for more than two categories (every colour is still trained on six or more)."""


def prompt_of(colour: str, category: str) -> str:
    """"a red chair", "an orange table": the toy world's object phrase with its article."""
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {category}"


def all_prompts() -> list[str]:
    """Every colour × category prompt (72), category-major in the vocabulary's order."""
    return [prompt_of(colour, category) for category in CATEGORIES for colour in COLOURS]


def held_out_prompts(pairs: tuple[tuple[str, str], ...] = HELD_OUT_PAIRS) -> list[str]:
    """The held-out prompts, in the order of ``pairs``."""
    return [prompt_of(colour, category) for colour, category in pairs]


def training_prompts(pairs: tuple[tuple[str, str], ...] = HELD_OUT_PAIRS) -> list[str]:
    """Every prompt but the held-out ones (56 with the default split), in :func:`all_prompts` order."""
    held_out = set(held_out_prompts(pairs))
    return [prompt for prompt in all_prompts() if prompt not in held_out]


def draw_prompts(prompts: list[str], count: int, generator: torch.Generator) -> list[str]:
    """``count`` distinct prompts drawn uniformly without replacement from ``prompts`` (with replacement only
    when ``count`` exceeds their number), from ``generator``."""
    if count <= len(prompts):
        order = torch.randperm(len(prompts), generator=generator)[:count]
    else:
        order = torch.randint(len(prompts), (count,), generator=generator)
    return [prompts[i] for i in order.tolist()]
