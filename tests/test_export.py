"""Mesh export: tight box, automatic threshold, floaters removed, files that load back; the export command."""

import numpy as np
import pytest
import torch
import trimesh

from dreamdistill import cli
from dreamdistill.export import ExportConfig, extract_mesh, otsu_threshold, write_mesh, write_turntable

RADIUS = 0.4


def sphere_density(x):
    """A solid sphere of radius 0.4 at (0.2, 0, 0) (density 100 inside) plus a tiny floater in a corner."""
    sphere = 100.0 * torch.sigmoid(((x - torch.tensor([0.2, 0.0, 0.0])).norm(dim=-1) - RADIUS) * -60)
    floater = 50.0 * ((x - torch.tensor([-0.8, -0.8, 0.8])).norm(dim=-1) < 0.06).float()
    return sphere + floater


def red(x):
    return torch.tensor([1.0, 0.0, 0.0]).expand(x.shape[0], 3)


def test_sphere_mesh_is_tight_clean_and_coloured(tmp_path):
    mesh = extract_mesh(sphere_density, red, ExportConfig(resolution=48, coarse_resolution=32))
    low, high = (np.array(b) for b in mesh.bounds)
    assert np.all(low > np.array([-0.42, -0.62, -0.62])) and np.all(high < np.array([0.82, 0.62, 0.62]))
    distance = np.linalg.norm(mesh.vertices - np.array([0.2, 0.0, 0.0]), axis=1)
    assert abs(distance.mean() - RADIUS) < 0.03 and distance.max() < RADIUS + 0.05  # the floater is gone
    assert (mesh.colors == [255, 0, 0]).all()
    stats = mesh.stats()
    assert stats["components"] == stats["components_after"] == 1 and stats["watertight"]
    assert stats["largest_area_share"] == 1.0 and stats["faces_dropped"] == 0
    paths = write_mesh(mesh, tmp_path, ["glb", "obj", "ply"])
    assert {p.name for p in paths} == {"mesh.glb", "mesh.obj", "mesh.mtl", "mesh.ply"}
    for fmt in ("glb", "obj", "ply"):
        loaded = trimesh.load(tmp_path / f"mesh.{fmt}", force="mesh")
        assert len(loaded.vertices) == len(mesh.vertices), fmt
    assert trimesh.load(tmp_path / "mesh.ply").is_watertight
    glb, ply = (trimesh.load(tmp_path / f"mesh.{fmt}", force="mesh") for fmt in ("glb", "ply"))
    x, y, z = ply.vertices.T  # glTF is y-up: the scene's up (+z) is the glb's +y, its +y the glb's −z
    np.testing.assert_allclose(glb.vertices, np.stack([x, z, -y], axis=1), atol=1e-5)
    assert "mtllib mesh.mtl" in (tmp_path / "mesh.obj").read_text()


def test_threshold_override_and_empty_scene():
    loose = extract_mesh(sphere_density, red, ExportConfig(resolution=32, coarse_resolution=24, threshold=90.0))
    tight = extract_mesh(sphere_density, red, ExportConfig(resolution=32, coarse_resolution=24, threshold=10.0))
    assert loose.threshold == 90.0 and loose.stats()["area"] < tight.stats()["area"]
    from dreamdistill.errors import DreamDistillError

    with pytest.raises(DreamDistillError, match="the scene is empty"):
        extract_mesh(lambda x: torch.zeros(x.shape[0]), red, ExportConfig(resolution=16, coarse_resolution=8))


def test_otsu_splits_two_modes():
    values = np.concatenate([np.random.default_rng(0).normal(0, 0.1, 500), np.random.default_rng(1).normal(5, 0.1, 50)])
    assert 0.3 < otsu_threshold(values) < 4.7


def test_turntable_gif(tmp_path):
    import imageio.v3 as iio

    frames = (np.random.default_rng(0).random((3, 16, 16, 3)) * 255).astype(np.uint8)
    paths = write_turntable(frames, tmp_path / "turntable.gif")
    assert paths[0].name == "turntable.gif" and iio.imread(paths[0], index=None).shape[0] == 3


def test_export_command_on_a_run(tmp_path, capsys):
    from dreamdistill.config import save_yaml
    from dreamdistill.lift3d import LiftConfig, SceneConfig, build_field

    config = LiftConfig(prompt="a red chair", scene=SceneConfig(levels=4, log2_table_size=10, max_resolution=32))
    save_yaml(config, tmp_path / "config.yaml")
    torch.manual_seed(0)
    torch.save({"step": 0, "field": build_field(config.scene).state_dict()}, tmp_path / "checkpoint.pt")
    assert cli.main(["export", str(tmp_path), "--format", "obj,ply", "--resolution", "32"]) == 0
    assert (tmp_path / "mesh.obj").is_file() and (tmp_path / "mesh.ply").is_file()
    assert not (tmp_path / "mesh.glb").exists()
    loaded = trimesh.load(tmp_path / "mesh.ply")
    extent = loaded.vertices.max(0) - loaded.vertices.min(0)
    assert np.all(extent > 0.3) and np.all(extent < 1.2)  # the initial density blob


@pytest.mark.parametrize("argv,message", [
    (["--format", "stl"], "choose from glb, obj, ply"),
    ([], "is not a text-to-3D run"),
])
def test_export_bad_input(argv, message, tmp_path, capsys):
    assert cli.main(["export", str(tmp_path), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_detached_chair_legs_are_kept_and_a_speck_is_dropped():
    """A chair whose legs float 0.06 below the seat (each leg ~3 % of the volume, ~6 % of the area): every
    leg is a real part and stays; a speck beside it goes."""
    from dreamdistill.toyworld.shape_fidelity import true_object
    from dreamdistill.toyworld.shapes import ToyObject

    chair = true_object("chair", 3)
    legs = tuple(p.translated(np.array([0.0, 0.0, -0.06])) for p in chair.primitives[1:5])
    detached = ToyObject(0, 0, chair.primitives[:1] + legs + chair.primitives[5:])

    def density(x):
        inside = -detached.signed_distance(x.double().numpy()) * 80
        speck = 50.0 * ((x - torch.tensor([0.8, 0.8, 0.8])).norm(dim=-1) < 0.03).float()
        return 100 * torch.sigmoid(torch.from_numpy(inside)).float() + speck

    mesh = extract_mesh(density, red, ExportConfig(resolution=64, coarse_resolution=48))
    stats = mesh.stats()
    assert stats["components"] == 5 and 0.6 < stats["largest_area_share"] < 0.9  # seat-and-back + 4 legs
    assert mesh.vertices[:, 2].min() < detached.primitives[1].low[2] + 0.02  # the legs reach the floor
    assert np.linalg.norm(mesh.vertices - [0.8, 0.8, 0.8], axis=1).min() > 0.2  # the speck is gone
