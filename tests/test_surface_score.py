"""Surface scores: area-uniform surface samples, normal consistency (both ways, orientation-free), area ratio,
and their wiring into the toy world's shape score (the nearest true object's surface)."""

import numpy as np
import pytest
import trimesh

from dreamdistill.shape import (
    face_normals,
    normal_consistency,
    one_way_normal_consistency,
    sample_surface,
    surface_score,
    voxelise_mesh,
)
from dreamdistill.toyworld.shape_fidelity import (
    nearest_real_iou,
    nearest_real_surface,
    object_mesh,
    reference_iou,
    score_mesh,
    true_object,
)

K = 24
"""References per category in these tests (the metric's default is 64)."""


def cube(side=1.0):
    mesh = trimesh.creation.box(extents=(side,) * 3)
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


def square(corners):
    """Two triangles spanning the 4 corners [4, 3] (in order round the square)."""
    return np.asarray(corners, float), np.array([[0, 1, 2], [0, 2, 3]])


FLOOR = square([[-1, -1, 0], [1, -1, 0], [1, 1, 0], [-1, 1, 0]])
"""The square [-1, 1]² in the plane z = 0 (normal ±z, area 4)."""
WALL = square([[-1, 0, -1], [1, 0, -1], [1, 0, 1], [-1, 0, 1]])
"""FLOOR turned 90° about x: the square in the plane y = 0 (normal ±y, area 4)."""


def test_sample_surface_is_uniform_in_area_with_face_normals():
    # two triangles, areas 1 and 3: a quarter of the points on the first; a sample's mean is its triangle's centroid
    vertices = np.array([[0, 0, 0], [2, 0, 0], [0, 1, 0], [0, 0, 1], [0, 3, 1], [0, 0, 3]], float)
    faces = np.array([[0, 1, 2], [3, 4, 5]])  # z = 0 (normal +z, area 1) and x = 0 (normal +x or -x, area 3)
    points, normals = sample_surface(vertices, faces, 40_000, seed=1)
    first = points[:, 2] == 0
    assert first.mean() == pytest.approx(0.25, abs=0.01)
    np.testing.assert_allclose(points[first].mean(0), [2 / 3, 1 / 3, 0], atol=0.02)
    np.testing.assert_allclose(points[~first].mean(0), [0, 1, 5 / 3], atol=0.02)
    np.testing.assert_allclose(np.abs(normals[first]), np.tile([0, 0, 1], (first.sum(), 1)))
    np.testing.assert_allclose(np.abs(normals[~first]), np.tile([1, 0, 0], ((~first).sum(), 1)))
    assert np.all(points[first][:, 0] / 2 + points[first][:, 1] <= 1 + 1e-12)  # inside the triangle
    np.testing.assert_array_equal(sample_surface(vertices, faces, 100, seed=1)[0],
                                  sample_surface(vertices, faces, 100, seed=1)[0])  # seeded


def test_face_normals_unit_and_zero_for_degenerate():
    vertices = np.array([[0, 0, 0], [3, 0, 0], [0, 2, 0], [6, 0, 0]], float)
    np.testing.assert_allclose(face_normals(vertices, np.array([[0, 1, 2], [0, 2, 1], [0, 1, 3]])),
                               [[0, 0, 1], [0, 0, -1], [0, 0, 0]])


def test_cube_against_itself_and_scaled():
    v, f = cube()
    assert surface_score(v, f, v, f) == {"normal_consistency": 1.0, "area_ratio": 1.0}
    other = sample_surface(v, f, seed=7)  # another sample of the same cube: only points near the edges miss
    assert normal_consistency(*sample_surface(v, f), *other) > 0.98
    bigger = surface_score(2 * v, f, v, f)
    assert bigger["area_ratio"] == pytest.approx(4.0, rel=1e-12)  # result / true, not the other way round
    assert surface_score(v, f, 2 * v, f)["area_ratio"] == pytest.approx(0.25, rel=1e-12)


def test_perpendicular_planes_score_zero_and_the_same_plane_one():
    assert surface_score(*WALL, *FLOOR) == {"normal_consistency": pytest.approx(0.0, abs=1e-12), "area_ratio": 1.0}
    assert surface_score(*FLOOR, 2 * FLOOR[0], FLOOR[1]) == {"normal_consistency": 1.0, "area_ratio": 0.25}


def test_orientation_does_not_count():
    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.4)
    a, b = sample_surface(ball.vertices, ball.faces, 2000), sample_surface(*cube(), 2000)
    signs = np.where(np.arange(2000) % 3 == 0, -1.0, 1.0)[:, None]  # a third of the normals flipped
    same = normal_consistency(*a, *b)
    assert normal_consistency(a[0], -a[1], b[0], signs * b[1]) == pytest.approx(same, abs=1e-12)
    # flipped faces (reversed winding: the same triangles, other sample points)
    v, f = cube()
    flipped = f[:, ::-1]
    half = np.where(np.arange(len(f))[:, None] % 2 == 0, f, flipped)  # every other face flipped
    assert surface_score(v, flipped, v, f)["normal_consistency"] > 0.98  # like two samples of one cube
    reference = surface_score(ball.vertices, ball.faces, v, f)["normal_consistency"]
    assert surface_score(ball.vertices, ball.faces[:, ::-1], v, half)["normal_consistency"] == pytest.approx(
        reference, abs=0.005)


def test_both_directions_count():
    # true = FLOOR + a wall far away (same area): every result point has a parallel neighbour (1), but half the
    # true points (the wall's) have a perpendicular one (0): NC = ½ (1 + ½) = 0.75 whichever side is which
    far_wall = (WALL[0] + [0, 10, 0], WALL[1])
    both = (np.concatenate([FLOOR[0], far_wall[0]]), np.concatenate([FLOOR[1], far_wall[1] + 4]))
    forward = surface_score(*FLOOR, *both)
    backward = surface_score(*both, *FLOOR)
    assert forward["normal_consistency"] == pytest.approx(0.75, abs=0.01)
    assert backward["normal_consistency"] == pytest.approx(0.75, abs=0.01)
    assert forward["area_ratio"] == 0.5 and backward["area_ratio"] == 2.0
    one_way = one_way_normal_consistency(*sample_surface(*FLOOR), *sample_surface(*both))
    assert one_way == 1.0


def test_sphere_in_cube_matches_the_integrals():
    # Concentric sphere inside a cube of half-side a. Cube -> sphere: the nearest sphere point of p is radial,
    # |cos| = a / |p|: on a face (a, a u, a v), mean of (1 + u² + v²)^-½ over [-1, 1]². Sphere -> cube: from
    # direction d the nearest face is the one of the largest |d_i|, |cos| = max |d_i|; with d = (1, u, v) / √(1 +
    # u² + v²) (dΩ = (1 + u² + v²)^-3/2 du dv, 6 faces) that is (6 / 4π) ∫∫ (1 + u² + v²)^-2 du dv.
    m = 2000
    u = (np.arange(m) + 0.5) / m * 2 - 1
    s = 1 + u[:, None] ** 2 + u[None, :] ** 2
    cell = (2 / m) ** 2
    cube_to_sphere = (s**-0.5).sum() * cell / 4
    sphere_to_cube = (s**-2).sum() * cell * 6 / (4 * np.pi)
    assert (s**-1.5).sum() * cell * 6 == pytest.approx(4 * np.pi, rel=1e-5)  # the map covers the sphere once
    radius, half = 0.5, 0.8
    ball = trimesh.creation.icosphere(subdivisions=5, radius=radius)
    box_v, box_f = cube(2 * half)
    score = surface_score(ball.vertices, ball.faces, box_v, box_f)
    assert score["normal_consistency"] == pytest.approx((cube_to_sphere + sphere_to_cube) / 2, abs=0.004)  # 0.8123
    assert score["area_ratio"] == pytest.approx(4 * np.pi * radius**2 / (6 * (2 * half) ** 2), rel=0.003)


def test_score_mesh_uses_the_nearest_true_objects_surface():
    # a reference object's own mesh: its IoU argmax is itself, so its surface is the same mesh (score exactly 1)
    vertices, faces = object_mesh(true_object("mug", 5))
    report = score_mesh(vertices, faces, "a blue mug", k=K)
    assert report["iou"]["argmax"] == 5
    assert report["surface"] == {"normal_consistency": 1.0, "area_ratio": 1.0}
    # a held-out one: its nearest reference, not the first one
    held_out = object_mesh(true_object("mug", K + 3))
    report = score_mesh(*held_out, "mug", k=K)
    best = nearest_real_iou(voxelise_mesh(*held_out), "mug", K).argmax
    assert report["iou"]["argmax"] == best
    assert report["surface"] == nearest_real_surface(*held_out, "mug", best)
    assert report["surface"] != nearest_real_surface(*held_out, "mug", (best + 1) % K)
    assert 0.8 < report["surface"]["normal_consistency"] < 1.0


def test_reference_reports_surface_scores():
    result = reference_iou("mug", k=K, n=2, resolution=32, mesh_resolution=64, points=4000)
    assert 0.8 < result["normal_consistency"]["min"] <= result["normal_consistency"]["mean"] < 1.0
    assert 0.7 < result["area_ratio"]["min"] <= result["area_ratio"]["max"] < 1.3
