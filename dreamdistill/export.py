"""Mesh export of a density field: chunked density grid, marching cubes, clean-up, OBJ/PLY/GLB; turntables.

Pipeline (:func:`extract_mesh`):
1. a coarse density grid over the scene box [-1, 1]^3 (evaluated in chunks, no autograd);
2. the threshold: the override, else (an sdf field, in :func:`export_meshes`) the density on its level set
   d = 0, else :func:`auto_threshold`: the density at which one marching step of the renderer is half opaque
   (what the renders show as surface), lowered for faint scenes;
3. the tight bounding box of the coarse cells above the threshold that belong to large connected components,
   grown by a margin of coarse cells;
4. a fine grid over that box (``resolution`` samples along its longest side, cubic voxels), zero-padded so
   the surface closes; small connected components (below ``min_component_fraction`` of the largest) zeroed;
5. marching cubes (scikit-image, Lewiner) at the threshold;
6. threestudio's outlier removal on the final mesh (:func:`drop_small_components`): connected components
   with fewer faces than ``min_component_face_fraction`` of the largest one's are dropped (voxel components
   can still fall apart into separate surface pieces, and thin sheets have many faces but few voxels);
   :meth:`Mesh.stats` records what was dropped and the mesh's health (:func:`dreamdistill.shape.mesh_health`);
7. vertex colours: the field's albedo sampled half a voxel inside the surface.

Files load back in trimesh with the same vertex count (vertices are merged before writing).
With ``texture_size`` > 0, :func:`write_textured_obj` also writes ``mesh_textured.obj`` (+ .mtl, .png): the
same faces, UV-unwrapped by xatlas (seams duplicate vertices), the albedo baked into a texture
(:mod:`dreamdistill.texture`).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Literal

import numpy as np
import torch

from dreamdistill.config import Range
from dreamdistill.errors import DreamDistillError
from dreamdistill.fileio import save_image_atomic, write_text_atomic
from dreamdistill.render.volume import DEFAULT_STEP_SIZE
from dreamdistill.shape import face_areas, face_components, mesh_health

if TYPE_CHECKING:
    from dreamdistill.scene.field import Field

MeshFormat = Literal["glb", "obj", "ply"]
FORMATS: tuple[MeshFormat, ...] = ("glb", "obj", "ply")
MAX_EXPORT_RESOLUTION = 512
"""Marching-cubes samples along the longest side at most (512³ densities ≈ 0.5 GB as float32)."""
SURFACE_OPACITY = 0.5
"""Opacity of one render step at the automatic threshold."""

DensityFn = Callable[[torch.Tensor], torch.Tensor]
AlbedoFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class ExportConfig:
    """Mesh extraction settings."""

    formats: list[MeshFormat] = field(default_factory=lambda: list(FORMATS))
    """Files to write: any of glb, obj (with a .mtl material), ply."""
    resolution: Annotated[int, Range(8, MAX_EXPORT_RESOLUTION)] = 128
    """Marching-cubes samples along the longest side of the tight bounding box."""
    coarse_resolution: Annotated[int, Range(8, 256)] = 48
    """Samples per side of the coarse grid over the whole box (finds the bounding box and the threshold)."""
    threshold: Annotated[float | None, Range(0, None, open_low=True)] = None
    """Density level of the surface; None picks it automatically (half opacity per render step)."""
    min_component_fraction: Annotated[float, Range(0, 1)] = 0.01
    """Connected components with fewer voxels than this fraction of the largest are removed (coarse and fine
    grids). Not more: a chair leg is 3-5 % of a chair's volume, and at 0.05 a leg that the field left
    detached from the seat by a hair was deleted with the floaters."""
    min_component_face_fraction: Annotated[float, Range(0, 1)] = 0.01
    """On the final mesh, connected components (faces sharing a vertex) with fewer faces than this fraction of
    the largest component's are dropped (threestudio's ``isosurface_outlier_n_faces_threshold``); 0 keeps all.
    Real parts stay: a chair's leg has about 10 % of the seat-and-back's faces, a speck far below 1 %."""
    margin: Annotated[int, Range(0, 64)] = 2
    """Coarse cells added around the tight bounding box."""
    chunk: Annotated[int, Range(1024, 1 << 24)] = 1 << 16
    """Points per field evaluation."""
    texture_size: Annotated[int, Range(0, 8192)] = 0
    """0: vertex colours only. N > 0: also a textured OBJ (mesh_textured.obj/.mtl + an N×N PNG of the albedo,
    UV-unwrapped with xatlas: pip install xatlas), whatever ``formats`` says."""


class EmptySceneError(DreamDistillError):
    """No surface at the density threshold: there is nothing to mesh."""


@dataclass
class Mesh:
    """A triangle mesh with per-vertex colours."""

    vertices: np.ndarray  # [V, 3] float32, world units
    faces: np.ndarray  # [F, 3] int64
    colors: np.ndarray  # [V, 3] uint8
    threshold: float
    bounds: tuple[list[float], list[float]]  # tight box used for the fine grid
    inset: float = 0.0  # distance inside the surface at which the albedo was sampled
    cleanup: dict = field(default_factory=dict)  # what drop_small_components removed (see its report)

    def stats(self) -> dict:
        """Vertex/face counts, threshold, extent and surface area (for metrics.json)."""
        extent = (self.vertices.max(0) - self.vertices.min(0)).tolist() if len(self.vertices) else [0.0] * 3
        triangles = self.vertices[self.faces] if len(self.faces) else np.zeros((0, 3, 3), np.float32)
        area = 0.5 * np.linalg.norm(np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0]),
                                    axis=-1).sum()
        return {"vertices": int(len(self.vertices)), "faces": int(len(self.faces)), "threshold": float(self.threshold),
                "extent": [round(float(e), 4) for e in extent], "area": round(float(area), 4),
                **mesh_health(self.vertices, self.faces), **self.cleanup}


# ---- pure helpers -------------------------------------------------------------------------------------


def grid_points(low: np.ndarray, high: np.ndarray, shape: tuple[int, int, int]) -> torch.Tensor:
    """Sample positions [X*Y*Z, 3] of a grid spanning [low, high] with ``shape`` samples per axis (x-major)."""
    axes = [torch.linspace(float(lo), float(hi), n) for lo, hi, n in zip(low, high, shape)]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, 3)


@torch.no_grad()
def density_grid(density_fn: DensityFn, low: np.ndarray, high: np.ndarray, shape: tuple[int, int, int],
                 chunk: int = 1 << 16, device: torch.device | str = "cpu") -> np.ndarray:
    """Density [X, Y, Z] (float32) at the grid samples, evaluated ``chunk`` points at a time."""
    points = grid_points(low, high, shape)
    values = [density_fn(part.to(device)).float().cpu() for part in points.split(chunk)]
    return torch.cat(values).reshape(shape).numpy()


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold of a 1-D sample: the split maximising the between-class variance."""
    values = np.asarray(values, dtype=np.float64).ravel()
    if values.size == 0 or values.max() == values.min():
        return float(values.max()) if values.size else 0.0
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(edges[1:][np.argmax(between)])


def auto_threshold(density: np.ndarray, step_size: float) -> float:
    """σ with 1 − exp(−σ δ) = SURFACE_OPACITY for the render step δ; for a scene that never gets that dense,
    exp(Otsu(log σ)) over the cells with σ > 1 % of the peak (still below the peak)."""
    level = -np.log(1 - SURFACE_OPACITY) / step_size
    peak = float(density.max())
    if peak > level:
        return float(level)
    body = density[density > 0.01 * peak]
    return min(float(np.exp(otsu_threshold(np.log(body)))), 0.5 * peak) if body.size else 0.5 * peak


def keep_large_components(mask: np.ndarray, min_fraction: float) -> np.ndarray:
    """Boolean grid with connected components (26-connectivity) smaller than ``min_fraction`` × largest removed."""
    from skimage.measure import label

    labels = label(mask, connectivity=3)
    if labels.max() == 0:
        return mask
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    keep = sizes >= max(min_fraction * sizes.max(), 1)
    keep[0] = False
    return keep[labels]


def tight_bounds(mask: np.ndarray, low: np.ndarray, high: np.ndarray, margin: int) -> tuple[np.ndarray, np.ndarray]:
    """World box around the True samples of ``mask`` (a grid over [low, high]) grown by ``margin`` samples."""
    spacing = (high - low) / (np.array(mask.shape) - 1)
    cells = np.argwhere(mask)
    first, last = cells.min(0) - margin, cells.max(0) + margin
    return np.maximum(low + first * spacing, low), np.minimum(low + last * spacing, high)


# ---- extraction ---------------------------------------------------------------------------------------


def extract_mesh(density_fn: DensityFn, albedo_fn: AlbedoFn, config: ExportConfig = ExportConfig(),
                 device: torch.device | str = "cpu", bound: float = 1.0, step_size: float = DEFAULT_STEP_SIZE) -> Mesh:
    """Marching-cubes mesh of the field's density level set with albedo vertex colours (see module doc).

    ``step_size`` is the renderer's marching step (it sets the automatic threshold)."""
    from skimage.measure import marching_cubes

    low, high = np.full(3, -bound), np.full(3, bound)
    coarse_shape = (config.coarse_resolution,) * 3
    coarse = density_grid(density_fn, low, high, coarse_shape, config.chunk, device)
    threshold = config.threshold if config.threshold is not None else auto_threshold(coarse, step_size)
    mask = keep_large_components(coarse > threshold, config.min_component_fraction)
    if not mask.any():
        raise EmptySceneError(
            f"the scene is empty at density threshold {threshold:.3g} (max density {coarse.max():.3g}); "
            "pass a lower threshold (--threshold, or export.threshold)"
        )
    box_low, box_high = tight_bounds(mask, low, high, config.margin)
    voxel = float((box_high - box_low).max()) / (config.resolution - 1)
    shape = tuple(int(np.ceil((h - lo) / voxel)) + 1 for lo, h in zip(box_low, box_high))
    box_high = box_low + voxel * (np.array(shape) - 1)
    fine = density_grid(density_fn, box_low, box_high, shape, config.chunk, device)
    fine = np.where(keep_large_components(fine > threshold, config.min_component_fraction), fine,
                    np.minimum(fine, threshold * 0.5))
    fine = np.pad(fine, 1, constant_values=0.0)  # closes surfaces cut by the box
    vertices, faces, normals, _ = marching_cubes(fine, level=threshold, spacing=(voxel,) * 3)
    vertices = vertices + (box_low - voxel)  # undo the padding offset
    vertices, faces = merge_vertices(vertices.astype(np.float32), faces.astype(np.int64))
    vertices, faces, cleanup = drop_small_components(vertices, faces, config.min_component_face_fraction)
    colors = vertex_colors(albedo_fn, vertices, normals_of(vertices, faces), 0.5 * voxel, config.chunk, device)
    return Mesh(vertices, faces, colors, float(threshold), (box_low.tolist(), box_high.tolist()), 0.5 * voxel,
                cleanup)


def drop_small_components(vertices: np.ndarray, faces: np.ndarray,
                          min_fraction: float) -> tuple[np.ndarray, np.ndarray, dict]:
    """Drop connected components (faces sharing a vertex) with fewer faces than ``min_fraction`` × the largest
    component's (threestudio's outlier removal), then the vertices no face uses.

    Returns (vertices, faces, report): components before and after, faces dropped and their share of the
    surface area."""
    labels = face_components(faces, len(vertices))
    sizes = np.bincount(labels) if len(labels) else np.zeros(0, np.int64)
    keep_component = sizes >= min_fraction * (sizes.max() if len(sizes) else 0)
    keep = keep_component[labels] if len(labels) else np.zeros(0, bool)
    areas = face_areas(vertices, faces)
    report = {"components_before": int(len(sizes)), "components_after": int(keep_component.sum()),
              "faces_dropped": int((~keep).sum()),
              "area_share_dropped": round(float(areas[~keep].sum() / max(areas.sum(), 1e-30)), 6)}
    used = np.zeros(len(vertices), bool)
    used[faces[keep].ravel()] = True
    new_index = np.cumsum(used) - 1
    return vertices[used], new_index[faces[keep]], report


def merge_vertices(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Merge duplicate positions, drop degenerate faces and unreferenced vertices (trimesh's processing)."""
    import trimesh

    mesh = trimesh.Trimesh(vertices, faces, process=True, validate=True)
    return np.asarray(mesh.vertices, dtype=np.float32), np.asarray(mesh.faces, dtype=np.int64)


def normals_of(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted outward vertex normals [V, 3] (marching cubes with 'descent' orients faces outwards)."""
    triangles = vertices[faces]
    face_normals = np.cross(triangles[:, 1] - triangles[:, 0], triangles[:, 2] - triangles[:, 0])
    normals = np.zeros_like(vertices)
    for corner in range(3):
        np.add.at(normals, faces[:, corner], face_normals)
    return normals / np.maximum(np.linalg.norm(normals, axis=-1, keepdims=True), 1e-12)


@torch.no_grad()
def vertex_colors(albedo_fn: AlbedoFn, vertices: np.ndarray, normals: np.ndarray, inset: float, chunk: int,
                  device: torch.device | str) -> np.ndarray:
    """uint8 RGB [V, 3]: albedo sampled ``inset`` inside the surface (against the outward normal)."""
    points = torch.from_numpy(vertices - inset * normals).float()
    if len(points) == 0:
        return np.zeros((0, 3), np.uint8)
    albedo = torch.cat([albedo_fn(part.to(device)).float().cpu() for part in points.split(chunk)])
    return (albedo.clamp(0, 1).numpy() * 255 + 0.5).astype(np.uint8)


# ---- files --------------------------------------------------------------------------------------------


def write_bytes_atomic(path: Path, data: bytes) -> Path:
    """Write bytes to a temporary sibling, then rename over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def obj_text(mesh: Mesh, material_file: str) -> str:
    """Wavefront OBJ with a material library and per-vertex colours ("v x y z r g b")."""
    lines = [f"mtllib {material_file}", "o mesh", "usemtl albedo"]
    colors = mesh.colors.astype(np.float32) / 255
    lines += [f"v {x:.6f} {y:.6f} {z:.6f} {r:.4f} {g:.4f} {b:.4f}"
              for (x, y, z), (r, g, b) in zip(mesh.vertices.tolist(), colors.tolist())]
    lines += [f"f {a} {b} {c}" for a, b, c in (mesh.faces + 1).tolist()]
    return "\n".join(lines) + "\n"


Z_UP_TO_Y_UP = np.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0], [0.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, 1.0]])
"""(x, y, z) -> (x, z, −y): the scene's z-up frame into glTF's y-up one (a rotation of −90° about x). glTF fixes
+Y as up, so viewers show a z-up glb lying on its back; OBJ and PLY have no convention and stay in the scene's frame
(as the cameras and the shape scores use it)."""

MTL_TEXT = "newmtl albedo\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nillum 1\n"
"""A white diffuse material: the colour comes from the vertices."""


def write_mesh(mesh: Mesh, folder: Path, formats: list[str], stem: str = "mesh") -> list[Path]:
    """Write ``stem.{glb,obj,ply}`` (and ``stem.mtl`` with OBJ) into ``folder``, atomically; returns the paths.
    The glb is turned y-up (:data:`Z_UP_TO_Y_UP`), the others keep the scene's z-up frame."""
    import trimesh

    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise DreamDistillError(f"unknown mesh format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    folder = Path(folder)
    rgba = np.concatenate([mesh.colors, np.full((len(mesh.colors), 1), 255, np.uint8)], axis=1)
    tri = trimesh.Trimesh(mesh.vertices, mesh.faces, vertex_colors=rgba, process=False)
    written = []
    for fmt in formats:
        path = folder / f"{stem}.{fmt}"
        if fmt == "obj":
            written.append(write_text_atomic(folder / f"{stem}.mtl", MTL_TEXT))
            write_text_atomic(path, obj_text(mesh, f"{stem}.mtl"))
        elif fmt == "glb":
            write_bytes_atomic(path, tri.copy().apply_transform(Z_UP_TO_Y_UP).export(file_type=fmt))
        else:
            write_bytes_atomic(path, tri.export(file_type=fmt))
        written.append(path)
    return written


TEXTURED_MTL_TEXT = "newmtl textured\nKa 0 0 0\nKd 1 1 1\nKs 0 0 0\nillum 1\nmap_Kd {image}\n"
"""A white diffuse material modulated by the baked albedo texture."""


def textured_obj_text(vertices: np.ndarray, uvs: np.ndarray, faces: np.ndarray, material_file: str) -> str:
    """Wavefront OBJ with one texture coordinate per vertex ("f a/a b/b c/c")."""
    lines = [f"mtllib {material_file}", "o mesh", "usemtl textured"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in vertices.tolist()]
    lines += [f"vt {u:.6f} {v:.6f}" for u, v in uvs.tolist()]
    lines += [f"f {a}/{a} {b}/{b} {c}/{c}" for a, b, c in (faces + 1).tolist()]
    return "\n".join(lines) + "\n"


def write_textured_obj(mesh: Mesh, albedo_fn: AlbedoFn, folder: Path, size: int, chunk: int = 1 << 16,
                       device: torch.device | str = "cpu", stem: str = "mesh") -> list[Path]:
    """``stem_textured.{png,mtl,obj}``: the mesh unwrapped by xatlas with the albedo baked into a ``size``²
    texture (sampled ``mesh.inset`` inside the surface, like the vertex colours), written atomically (the OBJ
    last). Returns the paths."""
    from dreamdistill.texture import bake_texture, check_texture_size, unwrap

    check_texture_size(size, "texture_size")
    vmapping, faces, uvs = unwrap(mesh.vertices, mesh.faces, size)
    vertices, normals = mesh.vertices[vmapping], normals_of(mesh.vertices, mesh.faces)[vmapping]
    texture, _ = bake_texture(vertices, normals, faces, uvs, size,
                              lambda p, n: vertex_colors(albedo_fn, p, n, mesh.inset, chunk, device))
    folder = Path(folder)
    image = save_image_atomic(folder / f"{stem}_textured.png", texture)
    material = write_text_atomic(folder / f"{stem}_textured.mtl", TEXTURED_MTL_TEXT.format(image=image.name))
    obj = write_text_atomic(folder / f"{stem}_textured.obj", textured_obj_text(vertices, uvs, faces, material.name))
    return [obj, material, image]


def export_meshes(field_: Field, config: ExportConfig, folder: Path, device: torch.device | str,
                  step_size: float) -> tuple[list[Path], Mesh]:
    """A field's meshes in ``folder``: :func:`extract_mesh`, then ``mesh.{formats}`` (:func:`write_mesh`) and,
    with ``texture_size`` > 0, the textured OBJ (:func:`write_textured_obj`). Returns the paths and the mesh;
    raises :class:`EmptySceneError` when there is no surface."""
    def albedo(x: torch.Tensor) -> torch.Tensor:
        return field_(x)[1]

    if config.threshold is None and field_.surface_density() is not None:  # an sdf: its level set d = 0
        config = replace(config, threshold=field_.surface_density())
    mesh = extract_mesh(field_.density, albedo, config, device, step_size=step_size)
    written = write_mesh(mesh, folder, config.formats)
    if config.texture_size:
        written += write_textured_obj(mesh, albedo, folder, config.texture_size, config.chunk, device)
    return written, mesh


def write_turntable(frames: np.ndarray, path: Path, fps: int = 12) -> list[Path]:
    """``frames`` [N, H, W, 3] uint8 -> an endlessly looping GIF at ``path`` (+ an .mp4 when ffmpeg is there)."""
    import imageio.v3 as iio

    path = Path(path)
    write_bytes_atomic(path, iio.imwrite("<bytes>", list(frames), extension=".gif", duration=1000 / fps, loop=0))
    written = [path]
    mp4 = path.with_suffix(".mp4")
    tmp = mp4.with_name(f".tmp{os.getpid()}-{mp4.name}")  # keeps the .mp4 suffix the writer looks at
    try:
        iio.imwrite(tmp, list(_even(frames)), plugin="FFMPEG", fps=fps, macro_block_size=1)
        os.replace(tmp, mp4)
        written.append(mp4)
    except Exception:  # noqa: BLE001 - mp4 is optional: no writer (imageio-ffmpeg) installed
        pass
    finally:
        if tmp.exists():
            tmp.unlink()
    return written


def _even(frames: np.ndarray) -> np.ndarray:
    """Pad frames to even sizes (x264 needs them)."""
    h, w = frames.shape[1:3]
    return np.pad(frames, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode="edge")
