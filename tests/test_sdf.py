"""The sdf geometry (VolSDF density of a signed distance): its density, initial sphere, eikonal term, export
level set and the run's β schedule, against values computed independently of the code under test."""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import pytest
import torch

from dreamdistill.lift3d.schedules import sdf_beta_at
from dreamdistill.render.cameras import Cameras
from dreamdistill.render.volume import render
from dreamdistill.scene.config import SceneConfig
from dreamdistill.scene.field import Field, laplace_density
from dreamdistill.scene.hashgrid import HashGrid


def sdf_field(radius: float = 0.6, beta: float = 0.05) -> Field:
    torch.manual_seed(0)
    grid = HashGrid(levels=4, log2_table_size=12, base_resolution=8, max_resolution=64, backend="torch")
    return Field(grid=grid, hidden_dim=16, hidden_layers=1, blob_radius=radius, geometry="sdf", beta=beta)


def test_laplace_density_is_the_laplace_cdf_over_beta():
    """σ = Ψ_β(−d)/β with Ψ_β the CDF of Laplace(0, β) (VolSDF Eq. 2-3), from torch.distributions."""
    beta = 0.03
    d = torch.linspace(-0.3, 0.3, 601, dtype=torch.float64)
    expected = torch.distributions.Laplace(0.0, beta).cdf(-d) / beta
    torch.testing.assert_close(laplace_density(d, beta), expected)
    assert float(laplace_density(torch.zeros(1), beta)) == pytest.approx(1 / (2 * beta))  # the surface level


class Scaled(torch.nn.Module):
    """An exact sphere SDF scaled by ``scale`` (|∇d| = scale) with a learnable offset, rendered as VolSDF."""

    def __init__(self, scale: float, radius: float = 0.5, beta: float = 0.05):
        super().__init__()
        self.scale, self.radius, self.beta = scale, radius, beta
        self.offset = torch.nn.Parameter(torch.zeros(()))

    def sdf(self, x):
        return self.scale * (x.norm(dim=-1) - self.radius) + self.offset

    def density_logit(self, x):
        return -self.sdf(x)

    def density(self, x):
        return laplace_density(self.sdf(x), self.beta)

    def __call__(self, x):
        return self.density(x), torch.full((x.shape[0], 3), 0.5)

    def logit_gradient(self, x):
        return -self.scale * torch.nn.functional.normalize(x, dim=-1)

    def normals(self, x):
        return torch.nn.functional.normalize(x, dim=-1)


def test_eikonal_penalty_is_the_weighted_squared_gradient_excess():
    """Per ray Σ_i sg(w_i)(|∇d_i| − 1)²: zero for a true distance, opacity · (s − 1)² for an SDF scaled by s, and no
    gradient through the weights (the offset moves only the weights)."""
    cameras = Cameras(torch.tensor([0.0]), torch.tensor([10.0]), torch.tensor([3.0]), torch.tensor([40.0]))
    for scale in (1.0, 2.0, 0.5):
        field = Scaled(scale)
        out = render(field, None, cameras, 16, shading="diffuse", stratified=False, return_eikonal=True,
                     step_size=0.01)
        expected = out.opacity * (scale - 1) ** 2
        torch.testing.assert_close(out.eikonal, expected, atol=2e-4, rtol=1e-3)  # samples under w 1e-4 skip it
        assert out.opacity.max() > 0.9
        assert out.opacity.requires_grad and not out.eikonal.requires_grad  # the weights are detached


def test_sdf_field_starts_as_the_sphere_with_unit_gradient():
    field = sdf_field(radius=0.6, beta=0.05)
    directions = torch.nn.functional.normalize(torch.randn(32, 3), dim=-1)
    on_surface = directions * 0.6
    torch.testing.assert_close(field.density(on_surface), torch.full((32,), 10.0), rtol=1e-4, atol=1e-4)
    assert field.surface_density() == pytest.approx(10.0)
    assert float(field.density(torch.zeros(1, 3) + 0.1).detach()) == pytest.approx(20.0, rel=1e-3)  # 1/β deep inside
    assert float(field.density(directions[:1] * 0.95).detach()) < 0.02
    gradient = field.logit_gradient(directions * 0.4)
    # the tetrahedron stencil's error is eps · curvature (0.01 / 0.4 here)
    torch.testing.assert_close(gradient.norm(dim=-1), torch.ones(32), atol=0.03, rtol=0)
    assert (field.normals(directions * 0.4) * directions).sum(-1).min() > 0.999  # outwards


def test_eikonal_reaches_the_grid_and_the_mlp():
    field = sdf_field()
    cameras = Cameras(torch.tensor([0.0, 90.0]), torch.tensor([10.0, 30.0]), torch.full((2,), 3.0),
                      torch.full((2,), 40.0))
    field.train()
    for parameter in field.parameters():  # move off the initial sphere, where the penalty is zero
        parameter.data.add_(0.05 * torch.randn_like(parameter))
    out = render(field, None, cameras, 12, shading="diffuse", return_eikonal=True)
    assert out.eikonal.sum() > 0
    out.eikonal.sum().backward()
    assert field.grid.params.grad.abs().sum() > 0 and field.mlp[0].weight.grad.abs().sum() > 0


def test_sdf_export_is_the_zero_level_set():
    """An sdf field exports its surface d = 0: the initial sphere of radius 0.6 comes back with that radius."""
    from dreamdistill.export import ExportConfig, export_meshes, extract_mesh

    field = sdf_field(radius=0.6, beta=0.02)
    config = ExportConfig(resolution=48, coarse_resolution=24, formats=["ply"])
    with torch.no_grad(), tempfile.TemporaryDirectory() as folder:
        _, mesh = export_meshes(field, config, Path(folder), "cpu", step_size=0.05)
    radii = np.linalg.norm(mesh.vertices, axis=-1)
    assert mesh.threshold == pytest.approx(25.0)
    assert abs(radii.mean() - 0.6) < 0.01 and radii.std() < 0.01
    # the automatic (NeRF) threshold would be σ with 1 − exp(−σ·0.05) = 0.5: a different level set
    auto = extract_mesh(field.density, lambda x: field(x)[1], config, step_size=0.05)
    assert abs(np.linalg.norm(auto.vertices, axis=-1).mean() - 0.6) > 0.005


def test_beta_schedule_is_geometric_between_its_ends():
    scene = SceneConfig(geometry="sdf", sdf_beta=0.1, sdf_beta_end=0.01)
    assert sdf_beta_at(scene, 0.0) == pytest.approx(0.1)
    assert sdf_beta_at(scene, 0.5) == pytest.approx(math.sqrt(0.1 * 0.01))
    assert sdf_beta_at(scene, 1.0) == pytest.approx(0.01)
    assert sdf_beta_at(scene, 2.0) == pytest.approx(0.01)
