"""Field (density blob, albedo, normals) and background."""

from __future__ import annotations

import torch

from dreamdistill.scene.background import Background, direction_encoding
from dreamdistill.scene.field import Field, finite_difference_gradient, trunc_exp
from dreamdistill.scene.hashgrid import HashGrid


def small_field(**kwargs) -> Field:
    grid = HashGrid(levels=4, log2_table_size=12, base_resolution=8, max_resolution=64, backend="torch")
    return Field(grid=grid, hidden_dim=32, **kwargs)


def test_field_outputs_and_blob():
    torch.manual_seed(0)
    field = small_field()
    x = torch.rand(100, 3) * 2 - 1
    density, albedo = field(x)
    assert density.shape == (100,) and albedo.shape == (100, 3)
    assert (density >= 0).all() and ((albedo > 0) & (albedo < 1)).all()
    centre, corner = field.density(torch.zeros(1, 3)), field.density(torch.ones(1, 3) * 0.9)
    assert centre > 1000 * corner  # the blob: dense in the middle, empty outside
    soft = small_field(activation="softplus")
    assert soft.density(torch.zeros(1, 3)) > 5 > 0.1 > soft.density(torch.ones(1, 3) * 0.9)


def test_trunc_exp_gradient_is_clamped():
    x = torch.tensor([0.0, 20.0], requires_grad=True)
    trunc_exp(x).sum().backward()
    assert torch.allclose(x.grad, torch.exp(torch.tensor([0.0, 15.0])))


def test_finite_difference_gradient_of_a_quadratic():
    x = torch.rand(10, 3, dtype=torch.float64)

    def quadratic(p: torch.Tensor) -> torch.Tensor:
        return (p * p * torch.tensor([1.0, 2.0, 3.0], dtype=p.dtype)).sum(-1) + p[:, 0] * 0.5  # no mixed terms

    expected = 2 * x * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64) + torch.tensor([0.5, 0.0, 0.0])
    torch.testing.assert_close(finite_difference_gradient(quadratic, x, 1e-3), expected)


def test_normals_point_outwards_from_the_blob():
    torch.manual_seed(0)
    directions = torch.nn.functional.normalize(torch.randn(64, 3), dim=-1)
    x = directions * 0.4
    for method in ("finite_difference", "analytic"):
        field = small_field(normal_method=method)
        normals = field.normals(x)
        assert torch.allclose(normals.norm(dim=-1), torch.ones(64), atol=1e-5)
        assert (normals * directions).sum(-1).min() > 0.99, method


def test_finite_difference_normals_are_differentiable():
    field = small_field()
    field.normals(torch.rand(16, 3) - 0.5).sum().backward()
    assert field.grid.params.grad is not None and field.grid.params.grad.abs().sum() > 0
    assert all(p.grad is not None for p in field.mlp.parameters())


def test_background_modes():
    directions = torch.nn.functional.normalize(torch.randn(2, 4, 4, 3), dim=-1)
    learned = Background("learned", color=(0.2, 0.4, 0.6))
    colors = learned(directions)
    assert colors.shape == (2, 4, 4, 3)
    assert torch.allclose(colors, torch.tensor([0.2, 0.4, 0.6]), atol=0.1)
    colors.sum().backward()
    assert all(p.grad is not None for p in learned.parameters())
    fixed = Background("fixed", color=(1.0, 0.0, 0.0))
    assert torch.equal(fixed(directions), torch.tensor([1.0, 0.0, 0.0]).expand(2, 4, 4, 3))
    random = Background("random")
    colors = random(directions, generator=torch.Generator().manual_seed(0))
    assert torch.equal(colors[0], colors[0, :1, :1].expand(4, 4, 3))  # one colour per image
    assert not torch.equal(colors[0, 0, 0], colors[1, 0, 0])
    assert torch.equal(random.eval()(directions), torch.ones(2, 4, 4, 3))
    assert direction_encoding(directions, 3).shape == (2, 4, 4, 21)


def test_level_mask_coarse_to_fine():
    from dreamdistill.scene.field import level_mask

    torch.testing.assert_close(level_mask(4, 2, 2.5), torch.tensor([1.0, 1, 1, 1, 0.5, 0.5, 0, 0]))
    torch.testing.assert_close(level_mask(3, 1, 3.0), torch.ones(3))


def test_active_levels_schedule():
    from dreamdistill.lift3d import SceneConfig, active_levels

    scene = SceneConfig(levels=8, levels_start=2, levels_full_at=0.5)
    assert active_levels(scene, 0.0) == 2 and active_levels(scene, 0.25) == 5 and active_levels(scene, 0.9) == 8
    assert active_levels(SceneConfig(levels=8), 0.1) is None
