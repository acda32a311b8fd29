"""An overview picture of the toy world: ``python -m dreamdistill.toyworld.overview --grid PATH``."""

from __future__ import annotations

import argparse

import torch
from PIL import Image

from dreamdistill.render.cameras import Cameras
from dreamdistill.toyworld.dataset import to_uint8
from dreamdistill.toyworld.raytrace import render_objects
from dreamdistill.toyworld.shapes import make_object, object_rng
from dreamdistill.toyworld.world import CATEGORIES, COLOURS

OVERVIEW_VIEWS: tuple[tuple[float, float], ...] = ((0.0, 15.0), (90.0, 15.0), (180.0, 15.0), (30.0, 70.0))
"""(azimuth, elevation) of the front, side, back and overhead columns of ``overview_grid``."""


def overview_grid(resolution: int = 64, seed: int = 0) -> torch.Tensor:
    """A uint8 [H, W, 3] picture: one row per category, its four views in two colours per row."""
    rows = []
    for category in range(len(CATEGORIES)):
        cells = []
        for colour in (category % len(COLOURS), (category + 4) % len(COLOURS)):
            obj = make_object(category, colour, object_rng(seed, category * len(COLOURS) + colour))
            azimuth, elevation = (torch.tensor(v) for v in zip(*OVERVIEW_VIEWS))
            count = len(OVERVIEW_VIEWS)
            cameras = Cameras(azimuth, elevation, torch.full((count,), 3.3), torch.full((count,), 40.0))
            cells.append(render_objects([obj], cameras, resolution).images)
        rows.append(torch.cat(cells))  # [8, 3, H, W]
    grid = torch.stack(rows)  # [rows, cols, 3, H, W]
    n_rows, n_cols = grid.shape[:2]
    grid = grid.permute(0, 3, 1, 4, 2).reshape(n_rows * resolution, n_cols * resolution, 3)
    return to_uint8(grid)


def main(argv: list[str] | None = None) -> None:
    """``python -m dreamdistill.toyworld.overview --grid assets/toy-world-grid.png``: save the overview picture."""
    parser = argparse.ArgumentParser(description="Toy-world overview picture")
    parser.add_argument("--grid", type=str, default="assets/toy-world-grid.png")
    parser.add_argument("--resolution", type=int, default=64)
    args = parser.parse_args(argv)
    Image.fromarray(overview_grid(args.resolution).numpy()).save(args.grid, optimize=True)
    print(f"wrote {args.grid}")


if __name__ == "__main__":
    main()
