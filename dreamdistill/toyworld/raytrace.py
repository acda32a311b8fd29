"""Analytic ray casting of toy objects: ellipsoids, boxes, convex polytopes and capped cone frusta.

Everything is vectorised over images, rays and (padded) primitives. Shading is ambient plus
Lambertian diffuse from a light fixed in the camera frame (upper left, from the viewer's side),
on a plain white background, with 2x2 supersampling.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

from dreamdistill.render.cameras import Cameras, generate_rays
from dreamdistill.toyworld.shapes import MAX_PLANES, Box, Ellipsoid, Frustum, Polytope, ToyObject
from dreamdistill.toyworld.world import BACKGROUND

AMBIENT = 0.55
"""Ambient light (fraction of albedo)."""
DIFFUSE = 0.5
"""Diffuse light strength."""
LIGHT_CAMERA = (-0.45, 0.6, 0.66)
"""Direction towards the light in the camera frame (x right, y up, z towards the viewer)."""
SUPERSAMPLE = 2
"""Rays per pixel along each image axis."""

INF = float("inf")


class Rendered(NamedTuple):
    """Rendered images and coverage."""

    images: torch.Tensor  # [B, 3, H, W] float in [0, 1]
    opacity: torch.Tensor  # [B, 1, H, W] float in [0, 1] (fraction of subpixels that hit the object)


@dataclass
class PackedScene:
    """Primitives of B objects, padded per kind to the same count (``*_valid`` marks real ones)."""

    ell_centre: torch.Tensor  # [B, Pe, 3]
    ell_inv_radii: torch.Tensor  # [B, Pe, 3]
    ell_colour: torch.Tensor  # [B, Pe, 3]
    ell_valid: torch.Tensor  # [B, Pe]
    box_low: torch.Tensor  # [B, Pb, 3]
    box_high: torch.Tensor  # [B, Pb, 3]
    box_colour: torch.Tensor  # [B, Pb, 3]
    box_valid: torch.Tensor  # [B, Pb]
    poly_normals: torch.Tensor  # [B, Pp, K, 3]
    poly_offsets: torch.Tensor  # [B, Pp, K]
    poly_colour: torch.Tensor  # [B, Pp, 3]
    poly_valid: torch.Tensor  # [B, Pp]
    fru_rotation: torch.Tensor  # [B, Pf, 3, 3] world-to-local
    fru_centre: torch.Tensor  # [B, Pf, 3]
    fru_shape: torch.Tensor  # [B, Pf, 4]: half height, radius bottom, radius top, mean radius
    fru_colour: torch.Tensor  # [B, Pf, 3]
    fru_valid: torch.Tensor  # [B, Pf]
    bounds: torch.Tensor  # [B, 2, 3] low and high corner of each object's bounding box


def pack(objects: Sequence[ToyObject]) -> PackedScene:
    """Pad the primitives of ``objects`` into per-kind tensors (float32)."""
    n = len(objects)
    kinds = [
        [[p for p in obj.primitives if isinstance(p, kind)] for obj in objects]
        for kind in (Ellipsoid, Box, Polytope, Frustum)
    ]
    pe, pb, pp, pf = (max((len(x) for x in per_kind), default=0) for per_kind in kinds)
    ell_centre, ell_inv_radii = np.zeros((n, pe, 3)), np.ones((n, pe, 3))
    ell_colour, ell_valid = np.zeros((n, pe, 3)), np.zeros((n, pe), bool)
    box_low, box_high = np.full((n, pb, 3), 10.0), np.full((n, pb, 3), 11.0)
    box_colour, box_valid = np.zeros((n, pb, 3)), np.zeros((n, pb), bool)
    poly_normals, poly_offsets = np.zeros((n, pp, MAX_PLANES, 3)), np.ones((n, pp, MAX_PLANES))
    poly_colour, poly_valid = np.zeros((n, pp, 3)), np.zeros((n, pp), bool)
    fru_rotation = np.tile(np.eye(3), (n, pf, 1, 1))
    fru_centre, fru_shape = np.zeros((n, pf, 3)), np.ones((n, pf, 4))
    fru_colour, fru_valid = np.zeros((n, pf, 3)), np.zeros((n, pf), bool)
    bounds = np.zeros((n, 2, 3))
    for b in range(n):
        lows, highs = zip(*(p.bounds() for p in objects[b].primitives))
        bounds[b] = np.min(lows, axis=0) - 1e-3, np.max(highs, axis=0) + 1e-3
        for i, e in enumerate(kinds[0][b]):
            ell_centre[b, i], ell_inv_radii[b, i], ell_colour[b, i], ell_valid[b, i] = (
                e.centre,
                1 / e.radii,
                e.colour,
                1,
            )
        for i, x in enumerate(kinds[1][b]):
            box_low[b, i], box_high[b, i], box_colour[b, i], box_valid[b, i] = x.low, x.high, x.colour, True
        for i, p in enumerate(kinds[2][b]):
            k = len(p.offsets)
            poly_normals[b, i, :k], poly_offsets[b, i, :k] = p.normals, p.offsets
            poly_colour[b, i], poly_valid[b, i] = p.colour, True
        for i, f in enumerate(kinds[3][b]):
            fru_rotation[b, i], fru_centre[b, i] = f.rotation, f.centre
            mean = (f.radius_bottom + f.radius_top) / 2
            fru_shape[b, i] = (f.half_height, f.radius_bottom, f.radius_top, mean)
            fru_colour[b, i], fru_valid[b, i] = f.colour, True

    def t(x: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(x if x.dtype == bool else x.astype(np.float32))

    return PackedScene(
        *(
            t(x)
            for x in (
                ell_centre,
                ell_inv_radii,
                ell_colour,
                ell_valid,
                box_low,
                box_high,
                box_colour,
                box_valid,
                poly_normals,
                poly_offsets,
                poly_colour,
                poly_valid,
                fru_rotation,
                fru_centre,
                fru_shape,
                fru_colour,
                fru_valid,
                bounds,
            )
        )
    )


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Dot product over the last axis (size 3), written out so results never depend on batch size."""
    return a[..., 0] * b[..., 0] + a[..., 1] * b[..., 1] + a[..., 2] * b[..., 2]


def _matvec(matrix: torch.Tensor, vector: torch.Tensor) -> torch.Tensor:
    """``matrix @ vector`` over the last axes with broadcasting (written out, see ``_dot``)."""
    return torch.stack([_dot(matrix[..., i, :], vector) for i in range(3)], dim=-1)


def _project(dirs: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Dot products of every ray with every vector: dirs [B, N, 3], vectors [B, P, 3] -> [B, N, P].

    Elementwise (no matmul), so a pixel's value never depends on the batch or chunk it is in.
    """
    return _dot(dirs[:, :, None, :], vectors[:, None, :, :])


def _gather_prims(values: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """values [B, P, ...] at per-ray primitive index [B, N] -> [B, N, ...]."""
    batch = torch.arange(values.shape[0], device=values.device)[:, None]
    return values[batch, index]


Hit = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
"""Nearest hit per ray: distance t [B, N] (inf for a miss), normal [B, N, 3] (unnormalised), albedo [B, N, 3]."""


def _no_hit(dirs: torch.Tensor) -> Hit:
    return torch.full(dirs.shape[:2], INF), torch.zeros_like(dirs), torch.zeros_like(dirs)


def _ellipsoids(scene: PackedScene, origin: torch.Tensor, dirs: torch.Tensor) -> Hit:
    """Nearest axis-aligned ellipsoid hit: |o' + t d'|² = 1 in unit-sphere coordinates."""
    if scene.ell_valid.shape[1] == 0:
        return _no_hit(dirs)
    inv_r = scene.ell_inv_radii
    o_local = (origin[:, None, :] - scene.ell_centre) * inv_r  # [B, Pe, 3]
    a = _project(dirs * dirs, inv_r * inv_r)  # [B, N, Pe]
    half_b = _project(dirs, o_local * inv_r)
    c = (_dot(o_local, o_local) - 1.0)[:, None]
    disc = half_b * half_b - a * c
    t = (-half_b - disc.clamp_min(0).sqrt()) / a
    t = torch.where((disc > 0) & (t > 0) & scene.ell_valid[:, None], t, INF)
    t_min, index = t.min(dim=2)
    t_safe = torch.where(torch.isfinite(t_min), t_min, 0.0)
    point = origin[:, None, :] + t_safe[..., None] * dirs
    inv_r_hit = _gather_prims(inv_r, index)
    normal = (point - _gather_prims(scene.ell_centre, index)) * inv_r_hit * inv_r_hit
    return t_min, normal, _gather_prims(scene.ell_colour, index)


def _boxes(scene: PackedScene, origin: torch.Tensor, dirs: torch.Tensor) -> Hit:
    """Nearest axis-aligned box hit (slab method)."""
    if scene.box_valid.shape[1] == 0:
        return _no_hit(dirs)
    inv_d = (1.0 / dirs)[:, :, None, :]  # [B, N, 1, 3]
    t_low = (scene.box_low - origin[:, None, :])[:, None] * inv_d  # [B, N, Pb, 3]
    t_high = (scene.box_high - origin[:, None, :])[:, None] * inv_d
    t_enter, axis = torch.minimum(t_low, t_high).max(dim=3)
    t_exit = torch.maximum(t_low, t_high).amin(dim=3)
    hit = (t_enter < t_exit) & (t_enter > 0) & scene.box_valid[:, None]
    t_min, index = torch.where(hit, t_enter, INF).min(dim=2)
    axis = axis.gather(2, index[..., None])  # [B, N, 1]
    normal = torch.zeros_like(dirs).scatter_(2, axis, -torch.sign(dirs.gather(2, axis)))
    return t_min, normal, _gather_prims(scene.box_colour, index)


def _polytopes(scene: PackedScene, origin: torch.Tensor, dirs: torch.Tensor) -> Hit:
    """Nearest convex-polytope hit (slab method over each polytope's planes)."""
    if scene.poly_valid.shape[1] == 0:
        return _no_hit(dirs)
    normals = scene.poly_normals  # [B, Pp, K, 3]
    batch, prims, planes = normals.shape[:3]
    along = _project(dirs, normals.reshape(batch, prims * planes, 3)).reshape(batch, -1, prims, planes)
    inside = (_dot(normals, origin[:, None, None, :]) - scene.poly_offsets)[:, None]  # [B, 1, Pp, K]
    t_plane = -inside / along
    t_enter, plane = torch.where(along < 0, t_plane, -INF).max(dim=3)
    t_exit = torch.where(along > 0, t_plane, INF).amin(dim=3)
    parallel_out = ((along == 0) & (inside > 0)).any(dim=3)
    hit = (t_enter < t_exit) & (t_enter > 0) & ~parallel_out & scene.poly_valid[:, None]
    t_min, index = torch.where(hit, t_enter, INF).min(dim=2)
    plane = plane.gather(2, index[..., None]).squeeze(2)  # [B, N]
    batch_index = torch.arange(batch, device=normals.device)[:, None]
    return t_min, normals[batch_index, index, plane], _gather_prims(scene.poly_colour, index)


def _frusta(scene: PackedScene, origin: torch.Tensor, dirs: torch.Tensor) -> Hit:
    """Nearest capped-frustum hit: the cone x²+y² = (m + s z)² for |z| <= h, plus two caps."""
    if scene.fru_valid.shape[1] == 0:
        return _no_hit(dirs)
    batch, prims = scene.fru_valid.shape
    half, r_bottom, r_top, mean = scene.fru_shape.unbind(-1)  # [B, Pf] each
    slope = (r_top - r_bottom) / (2 * half)
    o_local = _matvec(scene.fru_rotation, origin[:, None, :] - scene.fru_centre)  # [B, Pf, 3]
    d_local = _project(dirs, scene.fru_rotation.reshape(batch, prims * 3, 3)).reshape(batch, -1, prims, 3)
    ox, oy, oz = (x[:, None] for x in o_local.unbind(-1))  # [B, 1, Pf]
    dx, dy, dz = d_local.unbind(-1)  # [B, N, Pf]
    half, r_bottom, r_top, mean, slope = (x[:, None] for x in (half, r_bottom, r_top, mean, slope))
    radius_at_o = mean + slope * oz
    a = dx * dx + dy * dy - slope * slope * dz * dz
    half_b = ox * dx + oy * dy - slope * radius_at_o * dz
    c = ox * ox + oy * oy - radius_at_o * radius_at_o
    disc = half_b * half_b - a * c
    root = disc.clamp_min(0).sqrt()
    candidates = []
    for sign in (-1.0, 1.0):
        t = (-half_b + sign * root) / a
        z = oz + t * dz
        ok = (disc >= 0) & (a.abs() > 1e-12) & (t > 0) & (z.abs() <= half) & (mean + slope * z >= 0)
        candidates.append(torch.where(ok, t, INF))
    for cap_z, cap_r in ((half, r_top), (-half, r_bottom)):
        t = (cap_z - oz) / dz
        x, y = ox + t * dx, oy + t * dy
        ok = (t > 0) & (x * x + y * y <= cap_r * cap_r)
        candidates.append(torch.where(ok, t, INF))
    t_surface, surface = torch.stack(candidates, dim=-1).min(dim=-1)  # [B, N, Pf]
    t_surface = torch.where(scene.fru_valid[:, None], t_surface, INF)
    t_min, index = t_surface.min(dim=2)
    surface = surface.gather(2, index[..., None]).squeeze(2)
    t_safe = torch.where(torch.isfinite(t_min), t_min, 0.0)
    rotation = _gather_prims(scene.fru_rotation, index)  # [B, N, 3, 3]
    p_local = _matvec(rotation, origin[:, None, :] + t_safe[..., None] * dirs - _gather_prims(scene.fru_centre, index))
    slope_hit, mean_hit = _gather_prims(slope[:, 0], index), _gather_prims(mean[:, 0], index)
    side = torch.stack([p_local[..., 0], p_local[..., 1], -slope_hit * (mean_hit + slope_hit * p_local[..., 2])], -1)
    cap = torch.zeros_like(side)
    cap[..., 2] = torch.where(surface == 2, 1.0, -1.0)
    normal_local = torch.where((surface < 2)[..., None], side, cap)
    normal = _matvec(rotation.transpose(-1, -2), normal_local)
    return t_min, normal, _gather_prims(scene.fru_colour, index)


def _hits_bounds(bounds: torch.Tensor, origin: torch.Tensor, dirs: torch.Tensor) -> torch.Tensor:
    """Whether each ray [B, N] meets its object's bounding box [B, 2, 3]."""
    inv_d = 1.0 / dirs
    t_low = (bounds[:, None, 0] - origin[:, None]) * inv_d
    t_high = (bounds[:, None, 1] - origin[:, None]) * inv_d
    return torch.minimum(t_low, t_high).amax(dim=-1) < torch.maximum(t_low, t_high).amin(dim=-1)


def shade(
    scene: PackedScene, origin: torch.Tensor, dirs: torch.Tensor, light: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Shaded colour [B, N, 3] and hit mask [B, N] of rays from ``origin`` [B, 3] along unit ``dirs`` [B, N, 3]."""
    hits = [kind(scene, origin, dirs) for kind in (_ellipsoids, _boxes, _polytopes, _frusta)]
    t_all = torch.stack([h[0] for h in hits], dim=-1)  # [B, N, kinds]
    t_min, kind = t_all.min(dim=-1)
    pick = kind[..., None, None].expand(-1, -1, 1, 3)
    normal = torch.stack([h[1] for h in hits], dim=-2).gather(2, pick)[:, :, 0]
    albedo = torch.stack([h[2] for h in hits], dim=-2).gather(2, pick)[:, :, 0]
    normal = F.normalize(normal, dim=-1)
    normal = torch.where((_dot(normal, dirs) > 0)[..., None], -normal, normal)  # face the camera
    lambert = _dot(normal, light[:, None, :]).clamp_min(0)
    return (albedo * (AMBIENT + DIFFUSE * lambert)[..., None]).clamp(0, 1), torch.isfinite(t_min)


def trace(
    scene: PackedScene, origin: torch.Tensor, dirs: torch.Tensor, light: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Colour on the white background [B, N, 3] and hit mask [B, N] (see ``shade``).

    ``light`` [B, 3] is the unit direction towards the light, in world coordinates. Only rays
    that meet an object's bounding box are shaded (the others are background), which changes
    no pixel and saves most of the work.
    """
    batch, rays = dirs.shape[:2]
    near = _hits_bounds(scene.bounds, origin, dirs)
    kept = int(near.sum(dim=1).max())
    colour = torch.tensor(BACKGROUND, dtype=dirs.dtype, device=dirs.device).expand(batch, rays, 3).clone()
    hit = torch.zeros(batch, rays, dtype=torch.bool, device=dirs.device)
    if kept == 0:
        return colour, hit
    order = torch.argsort((~near).to(torch.uint8), dim=1, stable=True)[:, :kept]  # near rays first
    valid = near.gather(1, order)
    near_colour, near_hit = shade(scene, origin, dirs.gather(1, order[..., None].expand(-1, -1, 3)), light)
    near_hit &= valid
    near_colour = torch.where(near_hit[..., None], near_colour, colour[:, :kept])
    colour.scatter_(1, order[..., None].expand(-1, -1, 3), near_colour)
    hit.scatter_(1, order, near_hit)
    return colour, hit


def light_direction(cameras: Cameras) -> torch.Tensor:
    """World-space unit direction towards the light for each camera, [B, 3]."""
    light = F.normalize(torch.tensor(LIGHT_CAMERA), dim=0)
    return _matvec(cameras.camera_to_world[:, :3, :3], light)


@contextmanager
def single_thread() -> Iterator[None]:
    """Run torch ops on one thread (the renderer's tensors are small; extra threads only add overhead)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def render_packed(scene: PackedScene, cameras: Cameras, resolution: int) -> Rendered:
    """Render a packed scene (one object per camera) at ``resolution`` with 2x2 supersampling."""
    fine = resolution * SUPERSAMPLE
    origins, dirs = generate_rays(cameras, fine)  # [B, h, w, 3]
    batch = len(cameras)
    colour, hit = trace(scene, origins[:, 0, 0], dirs.reshape(batch, -1, 3), light_direction(cameras))
    colour = colour.reshape(batch, fine, fine, 3).permute(0, 3, 1, 2)
    hit = hit.reshape(batch, 1, fine, fine).float()
    return Rendered(F.avg_pool2d(colour, SUPERSAMPLE), F.avg_pool2d(hit, SUPERSAMPLE))


def render_objects(
    objects: Sequence[ToyObject], cameras: Cameras, resolution: int = 32, chunk_size: int = 16
) -> Rendered:
    """Render ``objects[i]`` from ``cameras[i]``; a single object is rendered from every camera.

    Returns float images [B, 3, H, W] in [0, 1] on white and opacity [B, 1, H, W].
    """
    cameras = cameras.to("cpu")
    if len(objects) == 1 and len(cameras) > 1:
        objects = list(objects) * len(cameras)
    if len(objects) != len(cameras):
        raise ValueError(f"{len(objects)} objects for {len(cameras)} cameras")
    images, opacity = [], []
    with single_thread():
        for start in range(0, len(cameras), chunk_size):
            stop = min(start + chunk_size, len(cameras))
            part = Cameras(
                *(x[start:stop] for x in (cameras.azimuth, cameras.elevation, cameras.distance, cameras.fov))
            )
            rendered = render_packed(pack(objects[start:stop]), part, resolution)
            images.append(rendered.images)
            opacity.append(rendered.opacity)
    return Rendered(torch.cat(images), torch.cat(opacity))
