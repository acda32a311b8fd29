"""Volume renderer: geometry of an analytic sphere, compositing, occupancy skipping, shading, gradients."""

from __future__ import annotations

import math

import pytest
import torch

from dreamdistill.render.cameras import Cameras, generate_rays, orbit_cameras
from dreamdistill.render.occupancy import OccupancyGrid
from dreamdistill.render.volume import (
    DEFAULT_STEP_SIZE,
    Light,
    exclusive_transmittance,
    march,
    ray_box_intersection,
    render,
    sample_lights,
)
from dreamdistill.scene.analytic import AnalyticField, AnalyticScene, Sphere, default_scene
from dreamdistill.scene.background import Background
from dreamdistill.scene.field import Field
from dreamdistill.scene.hashgrid import HashGrid

RADIUS = 0.5


def sphere_scene() -> AnalyticScene:
    return AnalyticScene([Sphere(center=(0.0, 0.0, 0.0), radius=RADIUS, color=(0.8, 0.4, 0.2))])


def cameras() -> Cameras:
    return Cameras(
        azimuth=torch.tensor([0.0, 90.0, -135.0]),
        elevation=torch.tensor([15.0, 70.0, -10.0]),
        distance=torch.tensor([3.3, 3.0, 3.6]),
        fov=torch.tensor([40.0, 36.0, 44.0]),
    )


def test_ray_box_intersection():
    origins = torch.tensor([[-3.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.0, 5.0, 0.0]])
    directions = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
    near, far = ray_box_intersection(origins, directions)
    assert near.tolist()[:2] == [2.0, 0.0] and far.tolist()[:2] == [4.0, 1.0]
    assert far[2] <= near[2]  # a miss


def test_sphere_silhouette_and_depth():
    scene, cams, resolution = sphere_scene(), cameras(), 32
    out = render(AnalyticField(scene, density=1000.0), None, cams, resolution)
    _, mask, depth = scene.render(cams, resolution)
    assert out.image.shape == (3, 3, resolution, resolution) and out.opacity.shape == (3, 1, resolution, resolution)
    silhouette = out.opacity > 0.5
    agreement = (silhouette == (mask > 0.5)).float().mean()
    assert agreement > 0.99
    hit = (mask > 0.5) & (out.opacity > 0.99)
    assert hit.sum() > 0.8 * mask.sum()
    expected_depth = depth[hit]
    rendered_depth = (out.depth / out.opacity.clamp(min=1e-6))[hit]
    assert (rendered_depth - expected_depth).abs().max() < DEFAULT_STEP_SIZE
    # the sphere's albedo shows where it is hit, black background elsewhere
    assert torch.allclose(out.image[:, :, hit[0, 0]][0].T, torch.tensor([0.8, 0.4, 0.2]), atol=0.02)
    assert out.image[~silhouette.expand_as(out.image)].abs().max() < 1e-3


def test_transmittance_matches_nerfacc_batched_scan():
    nerfacc = pytest.importorskip("nerfacc")
    generator = torch.Generator().manual_seed(0)
    sigmas = torch.rand(5, 9, generator=generator) * 20 * (torch.rand(5, 9, generator=generator) > 0.3)
    t_starts = torch.arange(9.0).expand(5, 9) * 0.1
    weights, _, _ = nerfacc.render_weight_from_density(t_starts, t_starts + 0.1, sigmas)
    rays, columns = torch.nonzero(torch.ones(5, 9), as_tuple=True)
    sigma_delta = sigmas[rays, columns] * 0.1
    ours = exclusive_transmittance(sigma_delta, rays, columns, 5, 9) * (1 - torch.exp(-sigma_delta))
    torch.testing.assert_close(ours, weights[rays, columns], rtol=1e-5, atol=1e-6)


def test_occupancy_skips_empty_space_without_changing_the_image():
    torch.manual_seed(0)
    scene, cams = default_scene(), orbit_cameras(2)
    field = AnalyticField(scene)
    grid = OccupancyGrid(resolution=32)
    assert grid.occupied_fraction == 1.0  # nothing skipped before the first update
    grid.update(field.density, DEFAULT_STEP_SIZE)
    assert 0.02 < grid.occupied_fraction < 0.3
    sphere = scene.primitives[0]
    cell_diagonal = 2 / 32 * math.sqrt(3)  # cells wholly inside the sphere must be occupied
    points = torch.nn.functional.normalize(torch.randn(2000, 3), dim=-1) * torch.rand(2000, 1)
    points = points * (sphere.radius - cell_diagonal) + torch.tensor(sphere.center)
    assert grid.occupied(points).all()
    assert not grid.occupied(torch.tensor([[0.9, -0.9, 0.9], [-0.9, -0.9, -0.9]])).any()
    full = render(field, torch.ones(3), cams, 24, prune=False)
    skipped = render(field, torch.ones(3), cams, 24, occupancy=grid, prune=False)
    assert skipped.samples < 0.5 * full.samples
    # A cell is probed at one random point per update, so a thin sliver of surface can be missed now and then
    # (nerfacc's grid shares this); dilation keeps that rare: at least 99% of pixels are unchanged.
    unchanged = ((skipped.image - full.image).abs() <= 0.02).all(dim=1)
    assert unchanged.float().mean() >= 0.99


def test_pruned_training_render_matches_the_full_one_with_a_tenth_of_the_samples():
    """Skipping samples of step opacity < SKIP_OPACITY and transmittance < EARLY_STOP (while autograd records)
    changes the image and the field's gradients by little, and evaluates far fewer samples."""
    torch.manual_seed(0)
    field = Field(HashGrid(levels=4, log2_table_size=12, max_resolution=32), hidden_dim=16, hidden_layers=1,
                  blob_density=8.0, blob_radius=0.5)
    cams = orbit_cameras(2)
    outputs, grads = [], []
    for prune in (False, True):
        field.zero_grad()
        out = render(field, torch.ones(3), cams, 16, stratified=False, prune=prune)
        (out.image * torch.linspace(0, 1, 16)).sum().backward()
        outputs.append(out)
        grads.append(torch.cat([p.grad.flatten() for p in field.parameters()]))
    full, pruned = outputs
    assert pruned.samples < 0.5 * full.samples
    assert (pruned.image - full.image).abs().max() < 5e-3
    assert torch.nn.functional.cosine_similarity(grads[0], grads[1], dim=0) > 0.999
    with torch.no_grad():  # without autograd only samples behind opaque ones are skipped (field_until_opaque)
        stopped = render(field, torch.ones(3), cams, 16, stratified=False)
    assert pruned.samples < stopped.samples <= full.samples
    assert (stopped.image - full.image).abs().max() < 1e-3


def test_visible_cells_render_the_same_image_from_fewer_samples():
    """A grid still remembering a large blob (a short run's training grid) marches most of the box; its
    visible_cells grid drops cells below 1e-4 step opacity, and the samples it keeps sit where they were, so
    the image is unchanged to within what the dropped samples could add."""
    torch.manual_seed(0)
    scene, cams = default_scene(), orbit_cameras(2)
    field = AnalyticField(scene)
    stale = OccupancyGrid(resolution=32)  # never updated: every cell occupied
    visible = stale.visible_cells(field.density, DEFAULT_STEP_SIZE)
    assert visible.occupied_fraction < 0.5 * stale.occupied_fraction
    with torch.no_grad():
        full = render(field, torch.ones(3), cams, 24, occupancy=stale, stratified=False)
        tight = render(field, torch.ones(3), cams, 24, occupancy=visible, stratified=False)
    assert tight.samples < 0.5 * full.samples
    assert (tight.image - full.image).abs().max() < 1e-3
    again = stale.visible_cells(field.density, DEFAULT_STEP_SIZE)
    assert torch.equal(again.mask, visible.mask)  # seeded: metric renders are reproducible
    origins, directions = (t.reshape(-1, 3) for t in generate_rays(cams, 24))
    step = 0.05
    rays_all, t_all, _, _ = march(origins, directions, step, stale)
    rays_kept, t_kept, _, _ = march(origins, directions, step, visible)
    assert len(t_kept) < len(t_all)
    everywhere = {(int(r), round(float(t) / step, 3)) for r, t in zip(rays_all, t_all)}
    assert all((int(r), round(float(t) / step, 3)) in everywhere for r, t in zip(rays_kept, t_kept))


def test_march_is_sorted_and_inside_the_box():
    origins, directions = (t.reshape(-1, 3) for t in generate_rays(orbit_cameras(1), 8))
    rays, t, columns, steps = march(origins, directions, 0.05, stratified=True)
    assert (rays[1:] >= rays[:-1]).all()
    same_ray = rays[1:] == rays[:-1]
    assert (t[1:][same_ray] > t[:-1][same_ray]).all() and (columns < steps).all()
    points = origins[rays] + t[:, None] * directions[rays]
    assert points.abs().max() <= 1.0 + 1e-5


def test_shading_modes_on_a_sphere():
    scene, cams, resolution = sphere_scene(), orbit_cameras(1), 32
    field = AnalyticField(scene, density=1000.0)
    headlight = Light(position=cams.positions * 2, ambient=torch.tensor([0.1]))
    plain = render(field, None, cams, resolution, shading="textureless", light=headlight)
    centre = plain.image[0, :, resolution // 2, resolution // 2]
    assert torch.allclose(centre, torch.ones(3), atol=0.05)  # facing the light
    row = plain.image[0, 0, resolution // 2]
    edge = row[plain.opacity[0, 0, resolution // 2] > 0.99][0]
    assert 0.1 <= edge < 0.6  # grazing light at the silhouette
    diffuse = render(field, None, cams, resolution, shading="diffuse", light=headlight, return_normals=True)
    albedo = render(field, None, cams, resolution)
    torch.testing.assert_close(diffuse.image, albedo.image * plain.image, atol=2e-3, rtol=0)
    assert diffuse.normal is not None and diffuse.normal.shape == (1, 3, resolution, resolution)
    lights = sample_lights(orbit_cameras(4), torch.Generator().manual_seed(0))
    assert lights.position.shape == (4, 3) and (lights.position.norm(dim=-1) > 1.5).all()


def test_gradients_reach_grid_and_mlp():
    torch.manual_seed(0)
    grid = HashGrid(levels=4, log2_table_size=12, base_resolution=8, max_resolution=64)
    field, background = Field(grid=grid, hidden_dim=32), Background("learned")
    field.train()
    out = render(field, background, orbit_cameras(1), 16, shading="diffuse", light=sample_lights(orbit_cameras(1)))
    assert out.image.shape == (1, 3, 16, 16) and 0 <= out.image.min() and out.image.max() <= 1
    assert out.opacity.mean() > 0.05  # the initial blob is visible
    out.image.mean().backward()
    assert field.grid.params.grad is not None and field.grid.params.grad.abs().sum() > 0
    for parameter in list(field.mlp.parameters()) + list(background.parameters()):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0


def test_a_textureless_render_trains_the_geometry_and_not_the_albedo():
    """Textureless shading (the toy presets' 20 %: a white part on the white background shows only by its
    shading, so the red chair's white seat needs renders where colour cannot explain it) paints every sample
    white: the density row of the MLP's output gets a gradient, the three albedo rows get exactly none."""
    torch.manual_seed(0)
    grid = HashGrid(levels=4, log2_table_size=12, base_resolution=8, max_resolution=64)
    field = Field(grid=grid, hidden_dim=32)
    field.train()
    cameras = orbit_cameras(1)
    out = render(field, None, cameras, 16, shading="textureless", light=sample_lights(cameras))
    out.image.mean().backward()
    output = field.mlp[-1]
    assert output.weight.grad[0].abs().sum() > 0 and output.bias.grad[0] != 0
    assert output.weight.grad[1:].abs().sum() == 0 and output.bias.grad[1:].abs().sum() == 0


def test_a_geometry_render_shows_the_diffuse_image_and_trains_only_the_geometry():
    """Geometry shading is the diffuse render with the albedo detached: the same image (the teacher sees the
    object's colours), the same gradient on the density row of the MLP's output as the diffuse render's, and
    exactly none on the three albedo rows (which the diffuse render does train)."""
    torch.manual_seed(0)
    grid = HashGrid(levels=4, log2_table_size=12, base_resolution=8, max_resolution=64)
    field = Field(grid=grid, hidden_dim=32)
    field.train()
    cameras = orbit_cameras(1)
    light = sample_lights(cameras, torch.Generator().manual_seed(0))
    grads = {}
    for shading in ("diffuse", "geometry"):
        field.zero_grad()
        out = render(field, None, cameras, 16, shading=shading, light=light, stratified=False)
        (out.image * torch.linspace(0, 1, 16)).mean().backward()
        grads[shading] = (out.image.detach(), field.mlp[-1].weight.grad.clone(), field.mlp[-1].bias.grad.clone())
    (image_d, weight_d, bias_d), (image_g, weight_g, bias_g) = grads["diffuse"], grads["geometry"]
    torch.testing.assert_close(image_g, image_d, atol=0, rtol=0)
    torch.testing.assert_close(weight_g[0], weight_d[0])
    torch.testing.assert_close(bias_g[0], bias_d[0])
    assert weight_d[1:].abs().sum() > 0 and weight_d[0].abs().sum() > 0
    assert weight_g[1:].abs().sum() == 0 and bias_g[1:].abs().sum() == 0


def test_empty_field_shows_the_background():
    class Empty:
        def __call__(self, x):
            return torch.zeros(x.shape[0]), torch.zeros_like(x)

        def density(self, x):
            return torch.zeros(x.shape[0])

        def normals(self, x):
            return torch.zeros_like(x)

    out = render(Empty(), torch.tensor([0.1, 0.2, 0.3]), orbit_cameras(2), 8)
    assert torch.allclose(out.image, torch.tensor([0.1, 0.2, 0.3])[None, :, None, None].expand(2, 3, 8, 8))
    assert out.opacity.abs().max() == 0 and math.isclose(float(out.depth.abs().max()), 0.0)


def test_orientation_penalty_is_per_sample_with_detached_weights():
    """Σ_i sg(w_i) max(0, n_i·d)²: opposite normals on one ray do not cancel (0.5·1 + 0.3·0, not (0.5 − 0.3)²),
    and the penalty cannot fall by lowering the weights (no gradient reaches them); the normals get one."""
    from dreamdistill.render.volume import orientation_penalty

    weights = torch.tensor([0.5, 0.3], requires_grad=True)
    normals = torch.tensor([[0.0, 0.6, 0.8], [0.0, 0.0, -1.0]], requires_grad=True)
    direction = torch.tensor([[0.0, 0.0, 1.0]]).expand(2, 3)
    penalty = orientation_penalty(weights, normals, direction)
    torch.testing.assert_close(penalty, torch.tensor([0.5 * 0.8**2, 0.0]))
    penalty.sum().backward()
    assert weights.grad is None
    torch.testing.assert_close(normals.grad, torch.tensor([[0.0, 0.0, 2 * 0.5 * 0.8], [0.0, 0.0, 0.0]]))


@pytest.mark.parametrize("window", [0, 1, 3, 20])
def test_distortion_penalty_matches_the_double_sum(window):
    """Σ_{i,j} w_i w_j |t_i − t_j| + δ/3 Σ w_i², per ray, against the plain double loop in float64 (rays with
    gaps in their step indices, an empty ray, a one-sample ray); its gradient too. With a window k > 0 only
    the pairs at most k steps apart count."""
    from dreamdistill.render.volume import distortion_penalty, positions_along_rays

    generator = torch.Generator().manual_seed(3)
    rays = torch.tensor([0, 0, 0, 0, 2, 2, 3])
    columns = torch.tensor([0, 2, 3, 7, 1, 4, 5])  # pruned marching leaves gaps
    t = 0.4 + 0.05 * columns.double()
    weights = torch.rand(7, generator=generator, dtype=torch.float64).requires_grad_()
    step = 0.05
    penalty = distortion_penalty(weights, t, rays, columns, 4, 8, step, window)
    expected = []
    for ray in range(4):
        w, s, c = weights[rays == ray], t[rays == ray], columns[rays == ray]
        expected.append(sum(w[i] * w[j] * abs(s[i] - s[j]) for i in range(len(w)) for j in range(len(w))
                            if window == 0 or abs(int(c[i] - c[j])) <= window)
                        + step / 3 * (w**2).sum())
    expected = torch.stack([torch.as_tensor(e, dtype=torch.float64) for e in expected])
    torch.testing.assert_close(penalty, expected)
    (grad,) = torch.autograd.grad(penalty.sum(), weights)
    (expected_grad,) = torch.autograd.grad(expected.sum(), weights)
    torch.testing.assert_close(grad, expected_grad)
    packed_columns, longest = positions_along_rays(rays, 4)
    assert packed_columns.tolist() == [0, 1, 2, 3, 0, 1, 0] and longest == 4
    if window == 0:
        torch.testing.assert_close(distortion_penalty(weights, t, rays, packed_columns, 4, longest, step), penalty)


def test_render_distortion_is_small_for_a_surface_and_large_for_a_haze():
    """The rendered per-ray distortion: an opaque sphere concentrates each ray's weight near its surface, a
    faint sphere of the same size spreads it through the volume (about a third of the chord)."""
    camera = Cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([30.0]))

    def distortion(density: float) -> float:
        out = render(AnalyticField(sphere_scene(), density), None, camera, 4, return_distortion=True)
        centre = out.distortion[0, 0, 1:3, 1:3]
        return float(centre.mean() / out.opacity[0, 0, 1:3, 1:3].mean() ** 2)

    assert distortion(1000.0) < DEFAULT_STEP_SIZE
    assert distortion(0.5) > 0.2


def test_supersampling_and_pixel_jitter_approach_the_pixel_area_average():
    """Opacity at a sphere's rim: the pixel's true coverage is the 8 × 8 supersampled render. A 2 × 2 supersampled
    render is closer to it than the pixel-centre render, and so is the mean of many pixel-jittered renders; the
    centre-offset jitter reproduces the plain render exactly."""
    field = AnalyticField(sphere_scene(), 1e4)
    camera = Cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([3.0]), torch.tensor([30.0]))
    coverage = render(field, None, camera, 8, supersample=8).opacity
    centre = render(field, None, camera, 8).opacity
    generator = torch.Generator().manual_seed(0)
    jittered = torch.stack([render(field, None, camera, 8, pixel_jitter=True, generator=generator).opacity
                            for _ in range(64)]).mean(0)
    error = {name: float((image - coverage).abs().sum()) for name, image in
             (("centre", centre), ("2x2", render(field, None, camera, 8, supersample=2).opacity),
              ("jitter", jittered))}
    assert error["2x2"] < 0.6 * error["centre"] and error["jitter"] < 0.6 * error["centre"], error
    origins, directions = generate_rays(camera, 8, torch.full((1, 8, 8, 2), 0.5))
    torch.testing.assert_close(directions, generate_rays(camera, 8)[1])


def test_renders_without_gradients_stop_each_ray_once_opaque():
    """Without autograd, rays stop being evaluated once their transmittance is below EARLY_STOP: the image
    moves by less than that, and an opaque sphere's interior and far half are never evaluated."""
    from dreamdistill.render.volume import EARLY_STOP

    class Counting(AnalyticField):
        evaluated = 0

        def __call__(self, x):
            Counting.evaluated += x.shape[0]
            return super().__call__(x)

    field = Counting(sphere_scene(), 500.0)
    camera = Cameras(torch.tensor([30.0]), torch.tensor([20.0]), torch.tensor([3.0]), torch.tensor([18.0]))
    with torch.no_grad():
        full = render(field, torch.ones(3), camera, 24, shading="diffuse", prune=False)
        everything, Counting.evaluated = Counting.evaluated, 0
        stopped = render(field, torch.ones(3), camera, 24, shading="diffuse")
    assert Counting.evaluated < 0.5 * everything, (Counting.evaluated, everything)
    assert float((stopped.image - full.image).abs().max()) <= EARLY_STOP
    assert float((stopped.opacity - full.opacity).abs().max()) <= EARLY_STOP
