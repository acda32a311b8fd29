"""Shape ground truth: voxels of meshes and of true toy objects, nearest-real IoU, diversity, mesh health,
component filtering."""

import numpy as np
import pytest
import torch
import trimesh

from dreamdistill.export import drop_small_components
from dreamdistill.shape import (
    diversity,
    face_components,
    iou,
    ious_against,
    mesh_health,
    voxel_centres,
    voxel_points,
    voxelise_mesh,
)
from dreamdistill.toyworld import raytrace
from dreamdistill.toyworld.shape_fidelity import (
    category_index,
    clear_reference_cache,
    nearest_real_iou,
    object_mesh,
    object_occupancy,
    reference_iou,
    reference_occupancies,
    score_mesh,
    true_object,
)
from dreamdistill.toyworld.shapes import ToyObject, box, sphere
from dreamdistill.toyworld.world import CATEGORIES

K = 24
"""References per category in these tests (the metric's default is 64)."""


def box_mesh(low, high):
    """A closed axis-aligned box mesh (trimesh's, moved to [low, high])."""
    low, high = np.asarray(low, float), np.asarray(high, float)
    mesh = trimesh.creation.box(extents=high - low)
    mesh.apply_translation((low + high) / 2)
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


def union(*meshes):
    vertices, faces, offset = [], [], 0
    for v, f in meshes:
        vertices.append(v)
        faces.append(f + offset)
        offset += len(v)
    return np.concatenate(vertices), np.concatenate(faces)


def centres_inside(low, high, resolution):
    """Oracle: occupancy of an axis-aligned box by direct comparison of the voxel centres."""
    points = voxel_points(resolution)
    return np.all((points > low) & (points < high), axis=-1)


# ---- voxelising meshes ---------------------------------------------------------------------------------


def test_box_mesh_voxels_are_exactly_the_centres_inside():
    low, high = np.array([-0.63, -0.2, -0.91]), np.array([0.47, 0.71, 0.3])
    vertices, faces = box_mesh(low, high)
    for axes in ((0, 1, 2), (2,), (0,)):
        occupancy = voxelise_mesh(vertices, faces, 20, axes=axes)
        assert occupancy.shape == (20, 20, 20)
        np.testing.assert_array_equal(occupancy, centres_inside(low, high, 20), err_msg=str(axes))


def test_open_box_voxels_have_no_streak():
    """A box without its top face: the z columns through it cross once; the x and y rays still decide."""
    low, high = np.array([-0.5, -0.5, -0.5]), np.array([0.5, 0.5, 0.2])
    vertices, faces = box_mesh(low, high)
    normals = trimesh.Trimesh(vertices, faces).face_normals
    open_faces = faces[normals[:, 2] < 0.9]  # drop the two triangles of the top
    occupancy = voxelise_mesh(vertices, open_faces, 16)
    expected = centres_inside(low, high, 16)
    assert not occupancy[:, :, -1].any()  # nothing above the box
    assert iou(occupancy, expected) > 0.9
    only_z = voxelise_mesh(vertices, open_faces, 16, axes=(2,))
    assert not only_z.any()  # z alone abstains on every open column: no streak up to the box's ceiling


def test_iou_of_two_spheres_matches_the_closed_form_lens():
    """Golden value: two spheres of radius r at distance d; lens volume π(4r + d)(2r − d)²/12."""
    r, d = 0.5, 0.4
    lens = np.pi * (4 * r + d) * (2 * r - d) ** 2 / 12
    exact = lens / (2 * 4 / 3 * np.pi * r**3 - lens)
    a = ToyObject(0, 0, (sphere((-d / 2, 0.0, 0.0), r, (1, 0, 0)),))
    b = ToyObject(0, 0, (sphere((d / 2, 0.0, 0.0), r, (1, 0, 0)),))
    assert iou(object_occupancy(a, 48), object_occupancy(b, 48)) == pytest.approx(exact, abs=0.01)
    ball = trimesh.creation.icosphere(subdivisions=4, radius=r)
    left, right = (voxelise_mesh(ball.vertices + [s * d / 2, 0, 0], ball.faces, 48) for s in (-1, 1))
    assert iou(left, right) == pytest.approx(exact, abs=0.01)
    assert ious_against(left, np.stack([left, right, ~left])) == pytest.approx([1.0, iou(left, right), 0.0])


# ---- true objects --------------------------------------------------------------------------------------


def test_analytic_solid_is_the_one_the_renderer_draws():
    """Along rays of the ray tracer, just past each hit is inside the object and just before it outside;
    rays that miss never pass through it."""
    generator = torch.Generator().manual_seed(0)
    for category in range(len(CATEGORIES)):
        obj = true_object(category, 0)
        scene = raytrace.pack([obj])
        origin = torch.tensor([[2.2, 1.3, 1.1]])
        targets = torch.rand(1, 400, 3, generator=generator) * 1.8 - 0.9
        dirs = torch.nn.functional.normalize(targets - origin[:, None], dim=-1)
        hits = [kind(scene, origin, dirs)[0] for kind in (raytrace._ellipsoids, raytrace._boxes,
                                                          raytrace._polytopes, raytrace._frusta)]
        t = torch.stack(hits, -1).amin(-1)[0].double().numpy()  # [N]
        o, d = origin[0].double().numpy(), dirs[0].double().numpy()
        hit = np.isfinite(t)
        assert 50 < hit.sum() < 400, CATEGORIES[category]
        after = obj.inside(o + (t[hit, None] + 2e-3) * d[hit])
        before = obj.inside(o + (t[hit, None] - 2e-3) * d[hit])
        assert after.mean() > 0.98 and not before.any(), CATEGORIES[category]
        along = o + np.linspace(0.0, 6.0, 600)[:, None, None] * d[~hit]  # [600, misses, 3]
        assert not obj.inside(along).any(), CATEGORIES[category]


def test_true_mug_mesh_scores_like_its_exact_voxels():
    mug = true_object("mug", K)  # held out: not among the K references
    exact = object_occupancy(mug)
    vertices, faces = object_mesh(mug, 96)
    assert mesh_health(vertices, faces) == {"components": 1, "largest_area_share": 1.0, "watertight": True}
    meshed = voxelise_mesh(vertices, faces)
    assert iou(meshed, exact) > 0.95
    scored, ceiling = nearest_real_iou(meshed, "mug", K), nearest_real_iou(exact, "mug", K)
    assert scored.best > 0.9 and scored.best == pytest.approx(ceiling.best, abs=0.03)
    assert scored.argmax == ceiling.argmax and scored.mean < scored.best and len(scored.ious) == K


def test_chair_scores_drop_when_turned_round_or_seatless_and_a_blob_scores_low():
    chair = true_object("chair", K + 1)
    vertices, faces = object_mesh(chair, 96)
    upright = nearest_real_iou(voxelise_mesh(vertices, faces), "a red chair", K).best
    turned = vertices * np.array([-1, -1, 1], np.float32)  # 180° about z: the backrest faces +x
    assert nearest_real_iou(voxelise_mesh(turned, faces), "chair", K).best < upright - 0.25
    seatless = ToyObject(chair.category, 0, chair.primitives[1:6] + chair.primitives[7:])  # no seat, no cushion
    assert nearest_real_iou(object_occupancy(seatless), "chair", K).best < upright - 0.25
    ball = trimesh.creation.icosphere(subdivisions=3, radius=0.6)
    assert nearest_real_iou(voxelise_mesh(ball.vertices, ball.faces), "chair", K).best < 0.3
    report = score_mesh(vertices, faces, "a red chair, front view", k=K)
    assert report["category"] == "chair" and report["iou"]["best"] == pytest.approx(upright, abs=1e-4)
    assert report["components"] == 1 and report["watertight"]


def test_reference_ceiling_and_real_diversity():
    result = reference_iou("mug", k=K, n=2, resolution=32, mesh_resolution=64)
    assert set(result) >= {"analytic", "mesh", "self"}
    assert 0.85 < result["mesh"]["mean"] <= 1.0 and 0.85 < result["analytic"]["mean"] <= 1.0
    assert result["self"]["min"] > 0.9


def test_reference_cache_in_memory_and_on_disk(tmp_path):
    clear_reference_cache()
    first = reference_occupancies("lamp", 4, 16, cache_dir=tmp_path)
    assert reference_occupancies(3, 4, 16) is first  # same key (name or index): the cached array
    assert not first.flags.writeable
    (path,) = tmp_path.glob("shape_refs_lamp_k4_r16_s*.npz")
    clear_reference_cache()
    np.testing.assert_array_equal(reference_occupancies("lamp", 4, 16, cache_dir=tmp_path), first)
    np.testing.assert_array_equal(first[2], object_occupancy(true_object("lamp", 2), 16))
    assert nearest_real_iou(first[2], "lamp", 4).best == 1.0
    left_out = nearest_real_iou(first[2], "lamp", 4, exclude=2)
    assert left_out.argmax != 2 and left_out.best < 1.0 and len(left_out.ious) == 3
    clear_reference_cache()


def test_category_from_name_index_or_prompt():
    assert category_index("a blue cup, side view") == CATEGORIES.index("mug")
    assert category_index(0) == 0 and category_index("snowman") == CATEGORIES.index("snowman")
    with pytest.raises(ValueError, match="names no toy-world category"):
        category_index("a teapot")


# ---- diversity, health, components ---------------------------------------------------------------------


def test_diversity():
    a = object_occupancy(true_object("car", 0), 24)
    b = object_occupancy(true_object("car", 1), 24)
    assert diversity(np.stack([a, a, a])) == 0.0
    assert diversity(np.stack([a, b])) == pytest.approx(1 - iou(a, b))
    assert diversity(np.stack([a, ~a])) == 1.0
    with pytest.raises(ValueError):
        diversity(a[None])


def test_health_of_a_two_component_mesh():
    big = box_mesh([-0.5, -0.5, -0.5], [0.5, 0.5, 0.5])  # area 6, 12 faces
    small = box_mesh([0.7, 0.7, 0.7], [0.9, 0.9, 0.9])  # area 0.24, 12 faces
    vertices, faces = union(small, big)
    assert mesh_health(vertices, faces) == {"components": 2, "largest_area_share": round(6 / 6.24, 4),
                                            "watertight": True}
    ball = trimesh.creation.icosphere(subdivisions=1, radius=0.1)  # 80 faces
    ball_vertices, ball_faces = union(small, (ball.vertices, ball.faces))
    labels = face_components(ball_faces, len(ball_vertices))
    assert (labels[:12] == 1).all() and (labels[12:] == 0).all()  # label 0: the component with most faces
    assert not mesh_health(vertices, faces[1:])["watertight"]
    assert mesh_health(np.zeros((0, 3)), np.zeros((0, 3), int))["components"] == 0


def test_component_filter_drops_a_speck_and_keeps_a_large_part():
    body = trimesh.creation.icosphere(subdivisions=4, radius=0.5)  # 5120 faces
    leg = trimesh.creation.icosphere(subdivisions=2, radius=0.2)  # 320 faces: 6 % of the body's
    speck = box_mesh([0.8, 0.8, 0.8], [0.82, 0.82, 0.82])  # 12 faces: 0.2 %
    vertices, faces = union((body.vertices, body.faces), (leg.vertices + [0, 0, -0.8], leg.faces), speck)
    kept_vertices, kept_faces, report = drop_small_components(vertices, faces, 0.01)
    assert report["components_before"] == 3 and report["components_after"] == 2 and report["faces_dropped"] == 12
    assert 0 < report["area_share_dropped"] < 0.001
    assert len(kept_faces) == 5120 + 320 and len(kept_vertices) == len(body.vertices) + len(leg.vertices)
    assert kept_vertices.max() < 0.6  # the speck's corner at 0.82 is gone
    np.testing.assert_allclose(kept_vertices[kept_faces[-1]], vertices[faces[5120 + 319]])  # faces remapped
    assert drop_small_components(vertices, faces, 0.0)[2]["faces_dropped"] == 0


def test_voxel_centres():
    np.testing.assert_allclose(voxel_centres(4), [-0.75, -0.25, 0.25, 0.75])
    assert voxel_points(3)[2, 0, 1].tolist() == pytest.approx([2 / 3, -2 / 3, 0.0])


def test_box_primitive_occupancy_matches_the_oracle():
    low, high = (-0.31, -0.57, 0.13), (0.64, 0.22, 0.71)  # no voxel centre on a face
    obj = ToyObject(0, 0, (box(low, high, (1, 0, 0)),))
    np.testing.assert_array_equal(object_occupancy(obj, 20), centres_inside(np.array(low), np.array(high), 20))
