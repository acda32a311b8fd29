"""Shape fidelity against the toy world's ground truth: volumetric IoU with the nearest true object.

A 3D result (a mesh in the world frame: z up, front +x, inside [-1, 1]³) is voxelised
(:func:`dreamdistill.shape.voxelise_mesh`) and compared with K true objects of the prompt's category drawn
by the toy generator, in the same frame: no rotation or scale search, so a chair facing backwards or lying
on its side scores low. The score is the best IoU over the K (the nearest real object); the mean IoU says
how typical the shape is.

IoU rewards a lumpy blob of the right size, so the surface is scored too (:func:`nearest_real_surface`):
normal consistency with the nearest true object's surface (the IoU argmax, as a marching-cubes mesh) and the
ratio of the surface areas.

The ceiling (:func:`reference_iou`): held-out true objects scored the same way, both analytically (their
exact voxels) and through the mesh pipeline (true object → marching cubes → voxelise), which is what a
perfect generator would get. Colour never matters: only the category's random proportions do.

True objects are voxelised analytically with the signed functions of the primitives
(``ToyObject.signed_distance``: the same solids the ray tracer draws), each primitive evaluated only on the
voxels near its bounding box.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dreamdistill.shape import (
    DEFAULT_RESOLUTION,
    SURFACE_POINTS,
    diversity,
    ious_against,
    mesh_health,
    surface_score,
    voxel_centres,
    voxelise_mesh,
)
from dreamdistill.toyworld.captions import parse_prompt
from dreamdistill.toyworld.shapes import ToyObject, make_object, object_rng
from dreamdistill.toyworld.world import CATEGORIES

REFERENCE_SEED = 424242
"""Seed of the reference objects (a stream no training data set uses: those take seeds 0, 1000, …)."""
REFERENCE_COUNT = 64
"""K: true objects per category a result is compared with."""
MESH_RESOLUTION = 128
"""Marching-cubes samples per side of [-1, 1]³ for a true object's mesh (the exporter's default is 128 along
the longest side of the object's tight box: about the same spacing, 0.016 units)."""

_cache: dict[tuple[int, int, int, int], np.ndarray] = {}


def category_index(category: str | int) -> int:
    """Index into CATEGORIES of a category name, index or prompt ("a red chair" -> 0)."""
    if isinstance(category, (int, np.integer)):
        if not 0 <= category < len(CATEGORIES):
            raise ValueError(f"category index {category} out of range 0..{len(CATEGORIES) - 1}")
        return int(category)
    name = category if category in CATEGORIES else parse_prompt(category)[1]
    if name is None:
        raise ValueError(f"{category!r} names no toy-world category ({', '.join(CATEGORIES)})")
    return CATEGORIES.index(name)


def true_object(category: str | int, index: int, seed: int = REFERENCE_SEED) -> ToyObject:
    """True object ``index`` of ``category`` in the stream ``seed`` (colour 0: colour does not change shape)."""
    return make_object(category_index(category), 0, object_rng(seed, index))


# ---- analytic voxels and meshes of true objects --------------------------------------------------------


def signed_distance_grid(obj: ToyObject, axis: np.ndarray, margin: int = 2) -> np.ndarray:
    """``obj.signed_distance`` on the grid ``axis`` × ``axis`` × ``axis`` [N, N, N] (indexed [x, y, z]).

    Each primitive is evaluated only within ``margin`` samples of its bounding box (elsewhere the value is
    the distance to that box, a lower bound of its signed distance, or farther: never inside), so the cost
    is the objects' volume, not the grid's."""
    grid = np.full((len(axis),) * 3, np.inf)
    spacing = float(axis[1] - axis[0])
    for primitive in obj.primitives:
        low, high = primitive.bounds()
        first = np.clip(np.searchsorted(axis, low) - margin, 0, len(axis))
        last = np.clip(np.searchsorted(axis, high, side="right") + margin, 0, len(axis))
        if np.any(last <= first):
            continue
        block = np.stack(np.meshgrid(*(axis[a:b] for a, b in zip(first, last)), indexing="ij"), axis=-1)
        region = tuple(slice(a, b) for a, b in zip(first, last))
        grid[region] = np.minimum(grid[region], primitive.signed_distance(block))
    return np.where(np.isfinite(grid), grid, (margin + 1) * spacing)


def object_occupancy(obj: ToyObject, resolution: int = DEFAULT_RESOLUTION, bound: float = 1.0) -> np.ndarray:
    """Analytic occupancy [R, R, R] (bool, [x, y, z]) of a true object: its voxel centres inside the solid."""
    return signed_distance_grid(obj, voxel_centres(resolution, bound)) <= 0


def object_mesh(obj: ToyObject, resolution: int = MESH_RESOLUTION,
                bound: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """A true object as a closed mesh: (vertices [V, 3] float32, faces [F, 3] int64), by marching cubes
    (scikit-image, Lewiner) of its signed function sampled at ``resolution`` points per side of
    [-bound, bound]³ (zero-padded so the surface closes), with duplicate vertices merged like the exporter."""
    from skimage.measure import marching_cubes

    from dreamdistill.export import merge_vertices

    axis = np.linspace(-bound, bound, resolution)
    spacing = float(axis[1] - axis[0])
    values = np.pad(signed_distance_grid(obj, axis), 1, constant_values=spacing)
    vertices, faces, _, _ = marching_cubes(values, level=0.0, spacing=(spacing,) * 3, gradient_direction="ascent")
    vertices = vertices - (bound + spacing)  # the padding moved the origin one sample out
    return merge_vertices(vertices.astype(np.float32), faces.astype(np.int64))


# ---- references -----------------------------------------------------------------------------------------


def _fingerprint(objects: list[ToyObject]) -> str:
    """Hash of the objects' geometry (a disk cache entry is stale when the generator changes)."""
    digest = hashlib.sha256()
    for obj in objects:
        for primitive in obj.primitives:
            digest.update(type(primitive).__name__.encode())
            for value in vars(primitive).values():
                digest.update(np.asarray(value, dtype=np.float64).tobytes() if not isinstance(value, tuple) else b"")
    return digest.hexdigest()[:16]


def reference_occupancies(category: str | int, k: int = REFERENCE_COUNT, resolution: int = DEFAULT_RESOLUTION,
                          seed: int = REFERENCE_SEED, cache_dir: Path | str | None = None) -> np.ndarray:
    """Analytic occupancies [k, R, R, R] (bool) of true objects 0..k-1 of ``category`` in stream ``seed``.

    Cached in memory per (category, k, resolution, seed); with ``cache_dir`` also on disk as
    ``shape_refs_{category}_k{k}_r{resolution}_s{seed}_{hash}.npz`` (bit-packed), where the hash is that of
    the objects' geometry, so a changed generator never reads a stale file."""
    key = (category_index(category), k, resolution, seed)
    if key in _cache:
        return _cache[key]
    objects = [true_object(key[0], i, seed) for i in range(k)]
    path = None
    if cache_dir is not None:
        name = f"shape_refs_{CATEGORIES[key[0]]}_k{k}_r{resolution}_s{seed}_{_fingerprint(objects)}.npz"
        path = Path(cache_dir) / name
    if path is not None and path.is_file():
        packed = np.load(path)["packed"]
        occupancies = np.unpackbits(packed, axis=1, count=resolution**3).astype(bool).reshape(k, *(resolution,) * 3)
    else:
        occupancies = np.stack([object_occupancy(obj, resolution) for obj in objects])
        if path is not None:
            from dreamdistill.export import write_bytes_atomic

            buffer = io.BytesIO()
            np.savez_compressed(buffer, packed=np.packbits(occupancies.reshape(k, -1), axis=1))
            write_bytes_atomic(path, buffer.getvalue())
    occupancies.flags.writeable = False
    _cache[key] = occupancies
    return occupancies


def clear_reference_cache() -> None:
    """Forget the in-memory reference occupancies."""
    _cache.clear()


@dataclass(frozen=True)
class NearestReal:
    """IoU of one shape with K true objects of its category."""

    best: float
    """IoU with the nearest true object (the shape score)."""
    mean: float
    """Mean IoU over the K true objects (how typical the shape is)."""
    argmax: int
    """Index of the nearest true object (``true_object(category, argmax, seed)``)."""
    ious: np.ndarray
    """All K IoUs."""

    def as_dict(self) -> dict:
        return {"best": round(self.best, 4), "mean": round(self.mean, 4), "argmax": self.argmax}


def nearest_real_iou(occupancy: np.ndarray, category: str | int, k: int = REFERENCE_COUNT,
                     seed: int = REFERENCE_SEED, cache_dir: Path | str | None = None,
                     exclude: int | None = None) -> NearestReal:
    """IoU of ``occupancy`` [R, R, R] (a voxelised mesh, R its resolution) with the K true objects of
    ``category`` (a name, index or prompt), same frame, no rotation search; ``exclude`` leaves one out."""
    references = reference_occupancies(category, k, occupancy.shape[0], seed, cache_dir)
    ious = ious_against(np.asarray(occupancy, dtype=bool), references)
    if exclude is not None:
        ious = np.where(np.arange(len(ious)) == exclude, -np.inf, ious)
    best = int(np.argmax(ious))
    kept = ious[np.isfinite(ious)]
    return NearestReal(float(ious[best]), float(kept.mean()), best, kept)


def nearest_real_surface(vertices: np.ndarray, faces: np.ndarray, category: str | int, index: int,
                         seed: int = REFERENCE_SEED, mesh_resolution: int = MESH_RESOLUTION,
                         points: int = SURFACE_POINTS) -> dict:
    """:func:`dreamdistill.shape.surface_score` of a mesh against true object ``index`` of ``category`` (the
    IoU argmax) as :func:`object_mesh`: normal consistency and area ratio (this mesh / the true one), 4 places."""
    truth = object_mesh(true_object(category, index, seed), mesh_resolution)
    return {key: round(value, 4) for key, value in surface_score(vertices, faces, *truth, points).items()}


def score_mesh(vertices: np.ndarray, faces: np.ndarray, category: str | int, k: int = REFERENCE_COUNT,
               resolution: int = DEFAULT_RESOLUTION, seed: int = REFERENCE_SEED,
               cache_dir: Path | str | None = None, points: int = SURFACE_POINTS) -> dict:
    """Shape score of a mesh for a prompt's category: nearest-real IoU (best, mean, argmax), the surface
    against that nearest true object (:func:`nearest_real_surface`: normal consistency, area ratio), the
    occupied share of the box, and the mesh's health (components, largest area share, watertight)."""
    occupancy = voxelise_mesh(vertices, faces, resolution)
    nearest = nearest_real_iou(occupancy, category, k, seed, cache_dir)
    return {"category": CATEGORIES[category_index(category)], "k": k, "resolution": resolution,
            "iou": nearest.as_dict(),
            "surface": nearest_real_surface(vertices, faces, category, nearest.argmax, seed, points=points),
            "occupied": round(float(occupancy.mean()), 5), **mesh_health(vertices, faces)}


# ---- the ceiling and real diversity ---------------------------------------------------------------------


def reference_iou(category: str | int, k: int = REFERENCE_COUNT, resolution: int = DEFAULT_RESOLUTION,
                  n: int = 16, seed: int = REFERENCE_SEED, mesh_resolution: int = MESH_RESOLUTION,
                  cache_dir: Path | str | None = None, points: int = SURFACE_POINTS) -> dict:
    """The ceiling of the shape score: ``n`` held-out true objects (indices k..k+n-1 of the same stream, so
    none is among the K references) scored by :func:`nearest_real_iou` against the K references.

    - ``analytic``: their exact voxels;
    - ``mesh``: true object → :func:`object_mesh` → :func:`voxelise_mesh`, the pipeline a generated mesh goes
      through (what a perfect generator would score);
    - ``self``: IoU of each object's mesh voxels with its own exact voxels (what the mesh pipeline loses);
    - ``normal_consistency`` and ``area_ratio``: each object's mesh against the mesh of its nearest reference
      (the ``mesh`` IoU argmax) by :func:`nearest_real_surface`, as :func:`score_mesh` scores a result.
    Each as mean, min and max over the n objects."""
    from dreamdistill.shape import iou

    index = category_index(category)
    analytic, via_mesh, itself, consistency, area_ratio = [], [], [], [], []
    for j in range(n):
        obj = true_object(index, k + j, seed)
        exact = object_occupancy(obj, resolution)
        vertices, faces = object_mesh(obj, mesh_resolution)
        meshed = voxelise_mesh(vertices, faces, resolution)
        analytic.append(nearest_real_iou(exact, index, k, seed, cache_dir).best)
        nearest = nearest_real_iou(meshed, index, k, seed, cache_dir)
        via_mesh.append(nearest.best)
        itself.append(iou(meshed, exact))
        surface = nearest_real_surface(vertices, faces, index, nearest.argmax, seed, mesh_resolution, points)
        consistency.append(surface["normal_consistency"])
        area_ratio.append(surface["area_ratio"])

    def summary(values: list[float]) -> dict:
        return {"mean": round(float(np.mean(values)), 4), "min": round(float(np.min(values)), 4),
                "max": round(float(np.max(values)), 4)}

    return {"category": CATEGORIES[index], "k": k, "resolution": resolution, "n": n,
            "mesh_resolution": mesh_resolution, "analytic": summary(analytic), "mesh": summary(via_mesh),
            "self": summary(itself), "normal_consistency": summary(consistency), "area_ratio": summary(area_ratio)}


def real_diversity(category: str | int, n: int = 8, resolution: int = DEFAULT_RESOLUTION,
                   seed: int = REFERENCE_SEED, start: int = 0) -> float:
    """:func:`dreamdistill.shape.diversity` of ``n`` true objects (indices start..start+n-1) of ``category``:
    what n results of a generator as varied as the toy world would score."""
    index = category_index(category)
    return diversity(np.stack([object_occupancy(true_object(index, start + i, seed), resolution)
                               for i in range(n)]))
