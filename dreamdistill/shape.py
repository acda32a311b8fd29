"""Mesh geometry for shape scores: voxel occupancy of a mesh, IoU, diversity, connected components, health,
and surface scores (normal consistency, surface area).

Pure numpy/scipy functions of (vertices [V, 3], faces [F, 3]) in the world frame (z up, front +x); nothing
here knows the toy world (its ground truth lives in :mod:`dreamdistill.toyworld.shape_fidelity`), so the
exporter can use the component tools without importing it.

The voxel grid: ``resolution``³ cubic voxels tiling the box [-bound, bound]³; voxel (i, j, k) is occupied when
its centre (-bound + (i + ½) h, …), h = 2 bound / resolution, is inside the solid. Grids are indexed [x, y, z].
"""

from __future__ import annotations

import numpy as np

DEFAULT_RESOLUTION = 48
"""Voxels per side of the occupancy grid over [-1, 1]³ (a voxel is 0.042 units: a chair's 0.08 seat is 2)."""

_JITTER = np.array([np.sqrt(2.0), np.sqrt(3.0)]) * 1e-6
"""Offset of the ray columns (in units of a voxel): no column passes exactly through a mesh vertex or edge of
a grid-aligned mesh (marching cubes), where parity would count one crossing twice or not at all."""


def voxel_centres(resolution: int = DEFAULT_RESOLUTION, bound: float = 1.0) -> np.ndarray:
    """Centre coordinates [resolution] of the voxels along one axis of [-bound, bound]."""
    return -bound + (np.arange(resolution) + 0.5) * (2.0 * bound / resolution)


def voxel_points(resolution: int = DEFAULT_RESOLUTION, bound: float = 1.0) -> np.ndarray:
    """All voxel centres [resolution, resolution, resolution, 3], indexed [x, y, z]."""
    axis = voxel_centres(resolution, bound)
    return np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)


def _parity_along(vertices: np.ndarray, faces: np.ndarray, axis: int, resolution: int,
                  bound: float) -> tuple[np.ndarray, np.ndarray]:
    """Ray parity along ``axis`` through every voxel-centre column.

    Returns (inside [R, R, R] indexed [x, y, z], reliable [R, R] per column: an even number of crossings).
    A column crosses a triangle where its (jittered) centre lies inside the triangle's projection; every
    crossing flips the parity of the voxel centres above it, so a centre is inside when an odd number of
    crossings lie below it."""
    u, v = (a for a in range(3) if a != axis)
    spacing = 2.0 * bound / resolution
    corners = vertices[faces].astype(np.float64)  # [F, 3 corners, 3]
    pu, pv, pa = corners[..., u], corners[..., v], corners[..., axis]  # [F, 3] each

    def index_range(coords: np.ndarray, jitter: float) -> tuple[np.ndarray, np.ndarray]:
        first = np.ceil((coords.min(1) + bound) / spacing - 0.5 - jitter)
        last = np.floor((coords.max(1) + bound) / spacing - 0.5 - jitter)
        return np.clip(first, 0, resolution).astype(np.int64), np.clip(last, -1, resolution - 1).astype(np.int64)

    i0, i1 = index_range(pu, _JITTER[0])
    j0, j1 = index_range(pv, _JITTER[1])
    ni, nj = np.maximum(i1 - i0 + 1, 0), np.maximum(j1 - j0 + 1, 0)
    counts = ni * nj  # candidate columns per triangle (its projected bounding box)
    tri = np.repeat(np.arange(len(faces)), counts)
    offset = np.arange(len(tri)) - np.repeat(np.cumsum(counts) - counts, counts)
    ii, jj = i0[tri] + offset // nj[tri], j0[tri] + offset % nj[tri]
    cu = -bound + (ii + 0.5 + _JITTER[0]) * spacing
    cv = -bound + (jj + 0.5 + _JITTER[1]) * spacing
    qu, qv, qa = pu[tri], pv[tri], pa[tri]  # [P, 3]

    def edge(a: int, b: int) -> np.ndarray:  # twice the signed area of (corner a, corner b, column)
        return (qu[:, b] - qu[:, a]) * (cv - qv[:, a]) - (qv[:, b] - qv[:, a]) * (cu - qu[:, a])

    w0, w1, w2 = edge(1, 2), edge(2, 0), edge(0, 1)
    area = w0 + w1 + w2
    hit = (area != 0) & (((w0 >= 0) & (w1 >= 0) & (w2 >= 0)) | ((w0 <= 0) & (w1 <= 0) & (w2 <= 0)))
    w0, w1, w2, area, qa = w0[hit], w1[hit], w2[hit], area[hit], qa[hit]
    height = (w0 * qa[:, 0] + w1 * qa[:, 1] + w2 * qa[:, 2]) / area  # crossing coordinate along the axis
    first_above = np.clip(np.floor((height + bound) / spacing - 0.5) + 1, 0, resolution).astype(np.int64)
    column = ii[hit] * resolution + jj[hit]
    flips = np.bincount(column * (resolution + 1) + first_above, minlength=resolution * resolution * (resolution + 1))
    flips = flips.reshape(resolution, resolution, resolution + 1)
    inside = (np.cumsum(flips[..., :resolution], axis=-1) % 2).astype(bool)  # [u, v, axis]
    reliable = flips.sum(-1) % 2 == 0
    return np.moveaxis(inside, 2, axis), reliable


def voxelise_mesh(vertices: np.ndarray, faces: np.ndarray, resolution: int = DEFAULT_RESOLUTION,
                  bound: float = 1.0, axes: tuple[int, ...] = (0, 1, 2)) -> np.ndarray:
    """Occupancy [R, R, R] (bool, indexed [x, y, z]) of the solid bounded by a triangle mesh, by ray parity.

    For each axis in ``axes`` a ray runs through every column of voxel centres, and a centre is inside when
    the ray crossed the surface an odd number of times before reaching it (the jordan-curve rule; faces'
    winding is ignored). On a watertight mesh every axis gives the same answer (up to centres within
    rounding of the surface), so one axis suffices: ``axes=(2,)`` is 3× faster.

    Non-watertight meshes: a column that passes through a hole crosses the surface an odd number of times,
    and parity alone would fill it from the last crossing to the end of the box. Such a column abstains on
    its axis; each voxel takes the majority of the axes whose column through it is closed (ties and voxels
    no axis can decide are outside). A hole thus costs a few voxels, never a streak. Self-intersecting or
    doubled surfaces flip twice (a doubled wall is empty inside). Parts outside [-bound, bound]³ are cut off.
    """
    vertices, faces = np.asarray(vertices), np.asarray(faces, dtype=np.int64)
    if len(faces) == 0:
        return np.zeros((resolution,) * 3, dtype=bool)
    votes_in = np.zeros((resolution,) * 3, dtype=np.int8)
    votes = np.zeros((resolution,) * 3, dtype=np.int8)
    for axis in axes:
        inside, reliable = _parity_along(vertices, faces, axis, resolution, bound)
        reliable = np.expand_dims(reliable, axis)  # broadcast along the ray
        votes_in += inside & reliable
        votes += np.broadcast_to(reliable, votes.shape)
    return 2 * votes_in > votes


def iou(a: np.ndarray, b: np.ndarray) -> float:
    """Intersection over union of two boolean grids (1.0 when both are empty)."""
    union = np.count_nonzero(a | b)
    return float(np.count_nonzero(a & b) / union) if union else 1.0


def ious_against(occupancy: np.ndarray, references: np.ndarray) -> np.ndarray:
    """IoU [K] of one boolean grid [R, R, R] with each of ``references`` [K, R, R, R] (packed bit counts)."""
    if occupancy.shape != references.shape[1:]:
        raise ValueError(f"occupancy {occupancy.shape} does not match the references {references.shape[1:]}")
    a = np.packbits(occupancy.ravel())
    refs = np.packbits(references.reshape(len(references), -1), axis=1)
    inter = np.bitwise_count(refs & a).sum(axis=1, dtype=np.int64)
    union = np.bitwise_count(refs | a).sum(axis=1, dtype=np.int64)
    return np.where(union > 0, inter / np.maximum(union, 1), 1.0)


def pairwise_ious(occupancies: np.ndarray) -> np.ndarray:
    """IoU of every pair i < j of ``occupancies`` [N, R, R, R] ([N (N - 1) / 2], row-major over (i, j))."""
    return np.concatenate([ious_against(occupancies[i], occupancies[i + 1:]) for i in range(len(occupancies) - 1)])


def diversity(occupancies: np.ndarray) -> float:
    """1 − mean pairwise IoU of N ≥ 2 occupancy grids [N, R, R, R]: 0 for identical shapes, 1 for disjoint ones.

    Its expectation does not depend on N (each pair is one unbiased sample of the IoU of two draws); only
    its spread does."""
    if len(occupancies) < 2:
        raise ValueError(f"diversity needs at least 2 shapes, got {len(occupancies)}")
    return float(1.0 - pairwise_ious(np.asarray(occupancies, dtype=bool)).mean())


# ---- connected components and health ------------------------------------------------------------------


def face_components(faces: np.ndarray, vertex_count: int) -> np.ndarray:
    """Connected-component label [F] of each face (faces sharing a vertex are connected), by decreasing size
    in faces: label 0 is the component with the most faces."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    faces = np.asarray(faces, dtype=np.int64)
    if len(faces) == 0:
        return np.zeros(0, dtype=np.int64)
    rows = np.concatenate([faces[:, 0], faces[:, 1]])
    cols = np.concatenate([faces[:, 1], faces[:, 2]])
    graph = coo_matrix((np.ones(len(rows), dtype=np.int8), (rows, cols)), shape=(vertex_count, vertex_count))
    _, vertex_labels = connected_components(graph, directed=False)
    _, labels, sizes = np.unique(vertex_labels[faces[:, 0]], return_inverse=True, return_counts=True)
    rank = np.empty_like(sizes)
    rank[np.argsort(-sizes, kind="stable")] = np.arange(len(sizes))
    return rank[labels]


def face_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area [F] of each triangle."""
    if len(faces) == 0:
        return np.zeros(0)
    corners = np.asarray(vertices, dtype=np.float64)[faces]
    return 0.5 * np.linalg.norm(np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0]), axis=-1)


def mesh_health(vertices: np.ndarray, faces: np.ndarray) -> dict:
    """Connected components (faces sharing a vertex), the largest one's share of the surface area (the
    component with the most area), and watertightness (every edge shared by exactly two faces, trimesh)."""
    import trimesh

    faces = np.asarray(faces, dtype=np.int64)
    if len(faces) == 0:
        return {"components": 0, "largest_area_share": 0.0, "watertight": False}
    labels = face_components(faces, len(vertices))
    area = np.bincount(labels, weights=face_areas(vertices, faces))
    watertight = trimesh.Trimesh(np.asarray(vertices), faces, process=False).is_watertight
    return {"components": int(labels.max() + 1),
            "largest_area_share": round(float(area.max() / max(area.sum(), 1e-30)), 4),
            "watertight": bool(watertight)}


# ---- surface scores -------------------------------------------------------------------------------------

SURFACE_POINTS = 20_000
"""Points sampled on each surface for normal consistency (sampling noise of the mean: about 0.002)."""


def face_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Unit normal [F, 3] of each triangle, (v1 − v0) × (v2 − v0) / ‖·‖ (zero for a degenerate triangle)."""
    corners = np.asarray(vertices, dtype=np.float64)[np.asarray(faces, dtype=np.int64)]
    cross = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    length = np.linalg.norm(cross, axis=-1, keepdims=True)
    return np.where(length > 0, cross / np.maximum(length, 1e-300), 0.0)


def sample_surface(vertices: np.ndarray, faces: np.ndarray, count: int = SURFACE_POINTS,
                   seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``count`` points uniform in area on a mesh, with their faces' unit normals: (points [N, 3], normals [N, 3]).

    A face is drawn with probability area / total area; inside it, barycentric weights (1 − √r₁, √r₁ (1 − r₂),
    √r₁ r₂) with r₁, r₂ ~ U(0, 1) are uniform on the triangle (Osada et al. 2002, Shape Distributions, §4.2)."""
    vertices = np.asarray(vertices, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    area = face_areas(vertices, faces)
    if len(faces) == 0 or area.sum() <= 0:
        raise ValueError("cannot sample the surface of a mesh with no area")
    rng = np.random.default_rng(seed)
    chosen = rng.choice(len(faces), size=count, p=area / area.sum())
    r1, r2 = np.sqrt(rng.random(count)), rng.random(count)
    weights = np.stack([1.0 - r1, r1 * (1.0 - r2), r1 * r2], axis=-1)  # [N, 3]
    points = np.einsum("nc,ncd->nd", weights, vertices[faces[chosen]])
    return points, face_normals(vertices, faces[chosen])


def one_way_normal_consistency(points: np.ndarray, normals: np.ndarray, other_points: np.ndarray,
                               other_normals: np.ndarray) -> float:
    """Mean over ``points`` of |n · n'|, n' the normal of the nearest of ``other_points`` (a k-d tree):
    orientation does not count, so a flipped face scores like an unflipped one."""
    from scipy.spatial import cKDTree

    _, nearest = cKDTree(other_points).query(points)
    return float(np.abs(np.einsum("nd,nd->n", normals, other_normals[nearest])).mean())


def normal_consistency(points_a: np.ndarray, normals_a: np.ndarray, points_b: np.ndarray,
                       normals_b: np.ndarray) -> float:
    """Normal consistency, ½ (mean_a |n_a · n_B(a)| + mean_b |n_b · n_A(b)|), X(p) the nearest point of X to p
    (Mescheder et al. 2019, Occupancy Networks, §4 metrics): 1 on the same surface, 0 on perpendicular ones."""
    return 0.5 * (one_way_normal_consistency(points_a, normals_a, points_b, normals_b)
                  + one_way_normal_consistency(points_b, normals_b, points_a, normals_a))


def surface_score(vertices: np.ndarray, faces: np.ndarray, true_vertices: np.ndarray, true_faces: np.ndarray,
                  points: int = SURFACE_POINTS, seed: int = 0) -> dict:
    """A mesh's surface against a true one, same frame: ``normal_consistency`` (:func:`normal_consistency` of
    ``points`` area-uniform samples on each, both drawn with ``seed``, so a mesh against itself scores exactly 1)
    and ``area_ratio`` (its surface area / the true surface area: a lumpy or wrinkled blob is > 1)."""
    mine = sample_surface(vertices, faces, points, seed)
    truth = sample_surface(true_vertices, true_faces, points, seed)
    return {"normal_consistency": normal_consistency(*mine, *truth),
            "area_ratio": float(face_areas(vertices, faces).sum() / face_areas(true_vertices, true_faces).sum())}
