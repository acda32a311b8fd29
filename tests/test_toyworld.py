"""Toy world: captions and view thresholds, determinism, prompt parsing, renderer geometry."""

from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from dreamdistill.render.cameras import Cameras, focal_length, orbit_cameras
from dreamdistill.toyworld import (
    CATEGORIES,
    COLOURS,
    FRONTED_CATEGORIES,
    SYMMETRIC_CATEGORIES,
    VIEWS,
    parse_prompt,
    render_dataset,
    render_objects,
)
from dreamdistill.toyworld.dataset import labels, sample_objects
from dreamdistill.toyworld.shapes import ToyObject, box, cylinder, make_object, sphere
from dreamdistill.toyworld.world import COLOUR_RGB


def _cameras(azimuth: list[float], elevation: list[float], distance: float = 3.3, fov: float = 40.0) -> Cameras:
    n = len(azimuth)
    return Cameras(torch.tensor(azimuth), torch.tensor(elevation), torch.full((n,), distance), torch.full((n,), fov))


def test_vocabulary() -> None:
    assert len(CATEGORIES) >= 8 and len(COLOURS) >= 8
    assert len(FRONTED_CATEGORIES) >= 6 and len(SYMMETRIC_CATEGORIES) >= 1
    assert set(FRONTED_CATEGORIES) | set(SYMMETRIC_CATEGORIES) == set(CATEGORIES)
    assert "white" not in COLOURS
    rgb = np.array([COLOUR_RGB[c] for c in COLOURS])
    gaps = np.linalg.norm(rgb[:, None] - rgb[None], axis=-1) + np.eye(len(COLOURS))
    assert gaps.min() > 0.25  # well separated


@pytest.mark.parametrize(
    ("azimuth", "elevation", "view"),
    [
        (0, 10, "front"),
        (44, 10, "front"),
        (-44, 59, "front"),
        (46, 10, "side"),
        (-46, 10, "side"),
        (134, 0, "side"),
        (136, 0, "back"),
        (-136, 0, "back"),
        (180, 30, "back"),
        (90, 61, "overhead"),
        (0, 61, "overhead"),
        (180, 79, "overhead"),
    ],
)
def test_caption_view_thresholds(azimuth: float, elevation: float, view: str) -> None:
    objects = [make_object(CATEGORIES.index("car"), COLOURS.index("red"), np.random.default_rng(0))]
    captions, _, _, view_index, fronted = labels(objects, _cameras([azimuth], [elevation]))
    assert captions == [f"a red car, {view} view"]
    assert VIEWS[int(view_index[0])] == view and bool(fronted[0])


def test_dataset_captions_and_labels_agree() -> None:
    batch = render_dataset(24, seed=3)
    pattern = re.compile(rf"^a ({'|'.join(COLOURS)}) ({'|'.join(CATEGORIES)}), ({'|'.join(VIEWS)}) view$")
    assert batch.images.shape == (24, 3, 32, 32) and batch.images.dtype == torch.uint8
    for i, text in enumerate(batch.captions):
        match = pattern.match(text)
        assert match, text
        assert match.groups() == (COLOURS[batch.colour[i]], CATEGORIES[batch.category[i]], VIEWS[batch.view[i]])
        assert bool(batch.fronted[i]) == (CATEGORIES[batch.category[i]] in FRONTED_CATEGORIES)
    assert batch.cameras.elevation.min() >= -10 and batch.cameras.elevation.max() <= 80


def test_determinism_independent_of_chunking() -> None:
    a = render_dataset(20, seed=11, chunk_size=16)
    b = render_dataset(20, seed=11, chunk_size=3)
    assert torch.equal(a.images, b.images) and a.captions == b.captions
    assert not torch.equal(a.images, render_dataset(20, seed=12).images)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a red chair, front view", ("red", "chair", "front")),
        ("A Grey Car, TOP VIEW", ("gray", "car", "overhead")),
        ("two blue mugs", ("blue", "mug", None)),
        ("the back of a house", (None, "house", None)),
        ("a snowman, back view", (None, "snowman", "back")),
        ("a photo of a dog", (None, None, None)),
    ],
)
def test_parse_prompt(text: str, expected: tuple) -> None:
    assert parse_prompt(text) == expected


def test_render_objects_broadcasts_one_object() -> None:
    obj = sample_objects(1, seed=0)[0]
    images, opacity = render_objects([obj], orbit_cameras(4), 24)
    assert images.shape == (4, 3, 24, 24) and opacity.shape == (4, 1, 24, 24)
    assert 0.0 <= float(images.min()) and float(images.max()) <= 1.0
    background = opacity == 0
    assert torch.all(images.masked_select(background.expand_as(images)) == 1.0)  # plain white
    coverage = opacity.mean(dim=(1, 2, 3))
    assert torch.all(coverage > 0.05) and torch.all(coverage < 0.9)


def _single(primitive) -> list[ToyObject]:
    return [ToyObject(0, 0, (primitive,))]


def test_sphere_silhouette_matches_projection() -> None:
    radius, distance, res = 0.8, 3.3, 64
    _, opacity = render_objects(_single(sphere((0, 0, 0), radius, (1, 0, 0))), _cameras([20.0], [30.0], distance), res)
    # A sphere projects to a disc of radius f tan(asin(r / d)).
    disc = float(focal_length(torch.tensor(40.0), res)) * math.tan(math.asin(radius / distance))
    assert float(opacity.sum()) == pytest.approx(math.pi * disc**2, rel=0.02)


def test_box_and_cylinder_silhouettes() -> None:
    half, distance, res = 0.5, 3.3, 64
    focal = float(focal_length(torch.tensor(40.0), res))
    _, opacity = render_objects(_single(box((-half,) * 3, (half,) * 3, (0, 1, 0))), _cameras([0.0], [0.0]), res)
    side = 2 * focal * half / (distance - half)  # the front face, seen head-on
    assert float(opacity.sum()) == pytest.approx(side**2, rel=0.03)
    top = cylinder((0, 0, 0), 0.6, 0.3, (0, 0, 1))
    _, opacity = render_objects(_single(top), _cameras([0.0], [89.999]), res)
    disc = focal * 0.6 / (distance - 0.3)  # the top cap, seen from straight above
    assert float(opacity.sum()) == pytest.approx(math.pi * disc**2, rel=0.03)


def _rendered(category: str, colour: str, azimuth: float, elevation: float = 10.0) -> torch.Tensor:
    obj = make_object(CATEGORIES.index(category), COLOURS.index(colour), np.random.default_rng(1))
    return render_objects([obj], _cameras([azimuth], [elevation]), 32).images[0]


def _fraction_near(image: torch.Tensor, rgb: tuple[float, float, float], tolerance: float = 0.2) -> float:
    return float(((image - torch.tensor(rgb)[:, None, None]).abs().amax(dim=0) < tolerance).float().mean())


def test_fronts_face_plus_x() -> None:
    # Mug handle at +y: on the image's right in the front view, on the left from the back. Objects are
    # centred on their bounding box, so the heavy body sits on the side opposite the thin handle.
    for azimuth, handle_right in ((0.0, True), (180.0, False)):
        ink = 1.0 - _rendered("mug", "blue", azimuth, elevation=0.0).mean(dim=0)
        centre = float((ink.sum(dim=0) * torch.arange(32)).sum() / ink.sum())
        assert (centre < 15.5) == handle_right
    # Car: yellow headlights seen from the front only, red tail lights from the back only.
    front, back = _rendered("car", "blue", 0.0), _rendered("car", "blue", 180.0)
    assert _fraction_near(front, (0.85, 0.8, 0.3), 0.25) > _fraction_near(back, (0.85, 0.8, 0.3), 0.25) + 0.003
    assert _fraction_near(back, (0.7, 0.0, 0.0), 0.25) > _fraction_near(front, (0.7, 0.0, 0.0), 0.25) + 0.003
    # Snowman: the dark eyes and buttons face +x.
    front, back = _rendered("snowman", "yellow", 0.0), _rendered("snowman", "yellow", 180.0)
    assert _fraction_near(front, (0.1, 0.1, 0.1), 0.25) > _fraction_near(back, (0.1, 0.1, 0.1), 0.25) + 0.003
    # Symmetric controls look the same from every azimuth.
    for category in SYMMETRIC_CATEGORIES:
        assert (_rendered(category, "green", 0.0) - _rendered(category, "green", 120.0)).abs().max() < 0.05
