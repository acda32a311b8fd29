"""UV texture baking: the rasteriser's barycentric identity, a baked colour function read back at the vertices,
the textured OBJ loading back in trimesh, and the error without xatlas."""

import sys

import numpy as np
import pytest
import torch
import trimesh

from dreamdistill import cli
from dreamdistill.errors import DreamDistillError
from dreamdistill.export import Mesh, normals_of, write_textured_obj
from dreamdistill.texture import bake_texture, rasterize_uv, unwrap


def position_colour(points: np.ndarray, normals: np.ndarray) -> np.ndarray:
    """Colour = position mapped from [-1, 1] to [0, 255]."""
    return ((points + 1) / 2 * 255 + 0.5).clip(0, 255).astype(np.uint8)


def sample_bilinear(texture: np.ndarray, uvs: np.ndarray) -> np.ndarray:
    """Texture [H, W, C] at UVs [N, 2] (OBJ convention: v = 0 is the bottom row), bilinear, as float."""
    h, w = texture.shape[:2]
    x, y = uvs[:, 0] * w - 0.5, (1 - uvs[:, 1]) * h - 0.5
    x0, y0 = np.clip(np.floor(x).astype(int), 0, w - 2), np.clip(np.floor(y).astype(int), 0, h - 2)
    fx, fy = np.clip(x - x0, 0, 1)[:, None], np.clip(y - y0, 0, 1)[:, None]
    t = texture.astype(np.float64)
    return ((t[y0, x0] * (1 - fx) + t[y0, x0 + 1] * fx) * (1 - fy)
            + (t[y0 + 1, x0] * (1 - fx) + t[y0 + 1, x0 + 1] * fx) * fy)


def test_rasterizer_barycentrics_reproduce_texel_centres():
    uvs = np.array([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]], np.float32)
    faces = np.array([[0, 1, 2], [1, 3, 2]])
    size = 16
    face, bary = rasterize_uv(uvs, faces, size)
    assert (face >= 0).all()  # two triangles tile the square: every texel centre is covered
    assert np.allclose(bary.sum(-1), 1, atol=1e-6) and (bary >= -1e-6).all()
    centre = (bary[..., None] * uvs[faces[face]]).sum(-2)
    rows, cols = np.mgrid[:size, :size]
    assert np.allclose(centre[..., 0], (cols + 0.5) / size, atol=1e-5)
    assert np.allclose(centre[..., 1], 1 - (rows + 0.5) / size, atol=1e-5)
    # the lower-left triangle (u + v < 1) owns the texels below the diagonal
    assert (face[cols < rows] == 0).all() and (face[cols > rows] == 1).all()
    small, _ = rasterize_uv(np.array([[0.1, 0.1], [0.6, 0.1], [0.1, 0.6]], np.float32), faces[:1], size)
    assert abs((small >= 0).mean() - 0.125) < 0.03  # area 0.125 of the unit square


def test_baked_position_colours_match_at_the_vertices():
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.8)
    vertices, faces = np.asarray(sphere.vertices, np.float32), np.asarray(sphere.faces, np.int64)
    vmapping, uv_faces, uvs = unwrap(vertices, faces, 128)
    assert len(uv_faces) == len(faces) and np.array_equal(vertices[vmapping][uv_faces], vertices[faces])
    texture, coverage = bake_texture(vertices[vmapping], normals_of(vertices, faces)[vmapping], uv_faces, uvs, 128,
                                     position_colour)
    assert texture.shape == (128, 128, 3) and texture.dtype == np.uint8 and coverage > 0.4
    expected = position_colour(vertices[vmapping], None).astype(np.float64)
    error = np.abs(sample_bilinear(texture, uvs) - expected)
    assert error.mean() < 2 and error.max() < 12, (error.mean(), error.max())  # of 255; a texel spans ~8


def test_textured_obj_loads_back_with_its_texture(tmp_path):
    sphere = trimesh.creation.icosphere(subdivisions=2, radius=0.5)
    vertices, faces = np.asarray(sphere.vertices, np.float32), np.asarray(sphere.faces, np.int64)
    mesh = Mesh(vertices, faces, np.zeros((len(vertices), 3), np.uint8), 1.0, ([-0.5] * 3, [0.5] * 3), inset=0.01)

    def albedo(x):
        return torch.stack([(x[:, 0] > 0).float(), torch.full_like(x[:, 0], 0.5), torch.zeros_like(x[:, 0])], -1)

    paths = write_textured_obj(mesh, albedo, tmp_path, 64)
    assert [p.name for p in paths] == ["mesh_textured.obj", "mesh_textured.mtl", "mesh_textured.png"]
    assert "map_Kd mesh_textured.png" in (tmp_path / "mesh_textured.mtl").read_text()
    loaded = trimesh.load(tmp_path / "mesh_textured.obj", force="mesh")
    assert loaded.visual.kind == "texture" and loaded.visual.material.image.size == (64, 64)
    assert len(loaded.faces) == len(faces)
    texture = np.asarray(loaded.visual.material.image.convert("RGB"))
    colours = sample_bilinear(texture, np.asarray(loaded.visual.uv))
    right = loaded.vertices[:, 0] > 0.1  # away from the colour edge at x = 0
    left = loaded.vertices[:, 0] < -0.1
    assert np.abs(colours[right] - [255, 128, 0]).max() < 2 and np.abs(colours[left] - [0, 128, 0]).max() < 2


def test_missing_xatlas_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "xatlas", None)  # makes `import xatlas` raise ImportError
    sphere = trimesh.creation.icosphere(subdivisions=1)
    mesh = Mesh(np.asarray(sphere.vertices, np.float32), np.asarray(sphere.faces, np.int64),
                np.zeros((len(sphere.vertices), 3), np.uint8), 1.0, ([-1] * 3, [1] * 3))
    with pytest.raises(DreamDistillError, match="pip install xatlas") as raised:
        write_textured_obj(mesh, lambda x: torch.zeros(len(x), 3), tmp_path, 64)
    assert "\n" not in str(raised.value)
    assert not list(tmp_path.iterdir())


def test_export_command_texture_size(tmp_path, capsys):
    from dreamdistill.config import save_yaml
    from dreamdistill.lift3d import LiftConfig, SceneConfig, build_field

    config = LiftConfig(prompt="a red chair", scene=SceneConfig(levels=4, log2_table_size=10, max_resolution=32))
    save_yaml(config, tmp_path / "config.yaml")
    torch.manual_seed(0)
    torch.save({"step": 0, "field": build_field(config.scene).state_dict()}, tmp_path / "checkpoint.pt")
    assert cli.main(["export", str(tmp_path), "--format", "ply", "--resolution", "24", "--texture-size", "32"]) == 0
    assert {p.name for p in tmp_path.glob("mesh*")} == {"mesh.ply", "mesh_textured.obj", "mesh_textured.mtl",
                                                        "mesh_textured.png"}
    loaded = trimesh.load(tmp_path / "mesh_textured.obj", force="mesh")
    assert len(loaded.faces) == len(trimesh.load(tmp_path / "mesh.ply").faces)
    assert cli.main(["export", str(tmp_path), "--texture-size", "4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--texture-size must be 0" in err[0]
