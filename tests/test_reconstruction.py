"""A shortened NeRF fit of an analytic scene: held-out PSNR must rise (the full run is a benchmark)."""

from __future__ import annotations

import torch

from dreamdistill.render.cameras import orbit_cameras
from dreamdistill.scene.analytic import default_scene
from dreamdistill.scene.field import Field
from dreamdistill.scene.hashgrid import HashGrid
from dreamdistill.scene.reconstruct import evaluate_psnr, fit_field, psnr


def test_psnr():
    assert psnr(torch.zeros(3, 4, 4), torch.zeros(3, 4, 4)) >= 100
    assert abs(psnr(torch.full((3, 4, 4), 0.1), torch.zeros(3, 4, 4)) - 20.0) < 1e-4


def test_fit_raises_held_out_psnr():
    scene, resolution = default_scene(), 32
    train, held_out = orbit_cameras(8, elevation=20.0), orbit_cameras(2, elevation=30.0, start_azimuth=22.5)
    train_images, _, _ = scene.render(train, resolution)
    held_out_images, _, _ = scene.render(held_out, resolution)
    torch.manual_seed(0)
    field = Field(grid=HashGrid(levels=6, log2_table_size=14, base_resolution=8, max_resolution=64), hidden_dim=32)
    before = evaluate_psnr(field, held_out_images, held_out)
    result = fit_field(train_images, train, steps=60, rays_per_step=1024, field=field, final_learning_rate_factor=1.0)
    after = evaluate_psnr(result.field, held_out_images, held_out, result.occupancy)
    assert result.steps == 60
    assert sum(result.losses[-10:]) < 0.5 * sum(result.losses[:10])
    assert min(after) > max(before) + 3.0, (before, after)
