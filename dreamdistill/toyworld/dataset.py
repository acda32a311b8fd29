"""Rendered, captioned toy-world data sets (deterministic given a seed)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from dreamdistill.render.cameras import CameraRanges, Cameras, sample_cameras
from dreamdistill.toyworld.captions import caption
from dreamdistill.toyworld.raytrace import Rendered, pack, render_objects, render_packed, single_thread
from dreamdistill.toyworld.shapes import ToyObject, make_object, object_rng
from dreamdistill.toyworld.world import CATEGORIES, COLOURS, DATASET_CAMERAS, FRONTED_CATEGORIES, VIEWS

__all__ = ["ToyBatch", "render_dataset", "render_objects", "sample_objects", "sample_scene", "Rendered"]


@dataclass
class ToyBatch:
    """N rendered toy objects with their captions and labels."""

    images: torch.Tensor  # [N, 3, H, W] uint8 on white
    captions: list[str]
    category: torch.Tensor  # [N] long, index into CATEGORIES
    colour: torch.Tensor  # [N] long, index into COLOURS
    view: torch.Tensor  # [N] long, index into VIEW_LABELS
    fronted: torch.Tensor  # [N] bool, whether the category has a front
    cameras: Cameras

    def __len__(self) -> int:
        return len(self.captions)

    def float_images(self) -> torch.Tensor:
        """Images as float in [0, 1]."""
        return self.images.float() / 255.0


def sample_objects(count: int, seed: int) -> list[ToyObject]:
    """``count`` random objects; category and colour are uniform; object i depends on (seed, i) only."""
    objects = []
    for index in range(count):
        rng = object_rng(seed, index)
        category, colour = int(rng.integers(len(CATEGORIES))), int(rng.integers(len(COLOURS)))
        objects.append(make_object(category, colour, rng))
    return objects


def sample_scene(count: int, seed: int, ranges: CameraRanges = DATASET_CAMERAS) -> tuple[list[ToyObject], Cameras]:
    """Objects and training cameras of the data set ``seed`` (what ``render_dataset`` renders)."""
    generator = torch.Generator().manual_seed(seed)
    cameras = sample_cameras(count, ranges, generator)  # azimuth stratified in index order: shuffle it
    order = torch.randperm(count, generator=generator)
    cameras = Cameras(*(x[order] for x in (cameras.azimuth, cameras.elevation, cameras.distance, cameras.fov)))
    return sample_objects(count, seed), cameras


def labels(
    objects: list[ToyObject], cameras: Cameras
) -> tuple[list[str], torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Captions and (category, colour, view, fronted) label tensors."""
    views = cameras.view_labels()
    captions = [caption(o.colour_name, o.category_name, v) for o, v in zip(objects, views)]
    category = torch.tensor([o.category for o in objects], dtype=torch.long)
    colour = torch.tensor([o.colour for o in objects], dtype=torch.long)
    view = torch.tensor([VIEWS.index(v) for v in views], dtype=torch.long)
    fronted = torch.tensor([o.category_name in FRONTED_CATEGORIES for o in objects], dtype=torch.bool)
    return captions, category, colour, view, fronted


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """Float [0, 1] images to uint8 (rounded)."""
    return (images * 255.0).round().clamp(0, 255).to(torch.uint8)


def render_dataset(
    count: int,
    seed: int,
    resolution: int = 32,
    chunk_size: int = 16,
    progress: bool = False,
    ranges: CameraRanges = DATASET_CAMERAS,
) -> ToyBatch:
    """Render ``count`` captioned toy objects from random cameras; identical bytes for the same seed.

    Objects are rendered grouped by category (so primitives need no padding) in small chunks
    (small tensors stay in cache); neither choice changes any pixel.
    """
    objects, cameras = sample_scene(count, seed, ranges)
    images = torch.empty(count, 3, resolution, resolution, dtype=torch.uint8)
    order = sorted(range(count), key=lambda i: objects[i].category)
    with single_thread(), tqdm(total=count, desc="rendering toy world", unit="img", disable=not progress) as bar:
        start = 0
        while start < count:
            category = objects[order[start]].category
            stop = start + 1
            while stop < min(count, start + chunk_size) and objects[order[stop]].category == category:
                stop += 1
            index = torch.tensor(order[start:stop])
            part = Cameras(*(x[index] for x in (cameras.azimuth, cameras.elevation, cameras.distance, cameras.fov)))
            rendered = render_packed(pack([objects[i] for i in order[start:stop]]), part, resolution)
            images[index] = to_uint8(rendered.images)
            bar.update(stop - start)
            start = stop
    captions, category, colour, view, fronted = labels(objects, cameras)
    return ToyBatch(images, captions, category, colour, view, fronted, cameras)
