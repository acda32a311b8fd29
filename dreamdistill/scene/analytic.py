"""Analytic scenes (coloured spheres and boxes) with an exact ray caster, as ground truth for the renderer.

Used by renderer tests and the reconstruction benchmark: :meth:`AnalyticScene.render` gives exact unlit
images (albedo over a background), :class:`AnalyticField` the same scene as a density field for the volume
renderer.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dreamdistill.render.cameras import Cameras, generate_rays


@dataclass(frozen=True)
class Sphere:
    center: tuple[float, float, float]
    radius: float
    color: tuple[float, float, float]
    front_color: tuple[float, float, float] | None = None
    """If set, the colour of the half facing +x (the object's front)."""


@dataclass(frozen=True)
class Box:
    center: tuple[float, float, float]
    half_size: tuple[float, float, float]
    color: tuple[float, float, float]


Primitive = Sphere | Box


def _vector(values: tuple[float, ...], like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(values, dtype=like.dtype, device=like.device)


def intersect_sphere(
    sphere: Sphere, origins: torch.Tensor, directions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """First positive hit distance [R] (inf on a miss) and outward normal [R, 3] of unit-direction rays."""
    offset = origins - _vector(sphere.center, origins)
    b = (offset * directions).sum(-1)
    c = (offset * offset).sum(-1) - sphere.radius**2
    disc = b * b - c
    root = disc.clamp(min=0).sqrt()
    t = torch.where(-b - root > 0, -b - root, -b + root)
    t = torch.where((disc > 0) & (t > 0), t, torch.full_like(t, torch.inf))
    hit_points = origins + t.nan_to_num(posinf=0.0)[:, None] * directions
    normal = torch.nn.functional.normalize(hit_points - _vector(sphere.center, origins), dim=-1)
    return t, normal


def intersect_box(box: Box, origins: torch.Tensor, directions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """First positive hit distance [R] (inf on a miss) and outward normal [R, 3] of an axis-aligned box."""
    center, half = _vector(box.center, origins), _vector(box.half_size, origins)
    safe = torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0, t1 = (center - half - origins) / safe, (center + half - origins) / safe
    near3, far3 = torch.minimum(t0, t1), torch.maximum(t0, t1)
    near, axis = near3.max(dim=-1)
    far = far3.amin(dim=-1)
    t = torch.where(near > 0, near, far)
    t = torch.where((far >= near) & (t > 0), t, torch.full_like(t, torch.inf))
    normal = torch.zeros_like(origins)
    normal.scatter_(1, axis[:, None], -torch.sign(safe.gather(1, axis[:, None])))
    return t, normal


class AnalyticScene:
    """A union of opaque primitives inside [-1, 1]^3."""

    def __init__(self, primitives: list[Primitive]) -> None:
        self.primitives = primitives

    def albedo_of(self, index: int, points: torch.Tensor) -> torch.Tensor:
        """Albedo [N, 3] of primitive ``index`` at points [N, 3] on or in it."""
        primitive = self.primitives[index]
        color = _vector(primitive.color, points).expand(points.shape[0], 3)
        if isinstance(primitive, Sphere) and primitive.front_color is not None:
            front = points[:, :1] > primitive.center[0]
            color = torch.where(front, _vector(primitive.front_color, points), color)
        return color

    def raycast(
        self, origins: torch.Tensor, directions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Hit mask [R], distance [R] (0 on a miss), albedo [R, 3] and normal [R, 3] of the nearest surface."""
        hits = [
            intersect_sphere(p, origins, directions) if isinstance(p, Sphere) else intersect_box(p, origins, directions)
            for p in self.primitives
        ]
        distances = torch.stack([t for t, _ in hits])  # [P, R]
        t, nearest = distances.min(dim=0)
        hit = torch.isfinite(t)
        t = torch.where(hit, t, torch.zeros_like(t))
        points = origins + t[:, None] * directions
        albedo = torch.zeros_like(origins)
        normal = torch.zeros_like(origins)
        for index, (_, primitive_normal) in enumerate(hits):
            chosen = hit & (nearest == index)
            albedo[chosen] = self.albedo_of(index, points[chosen])
            normal[chosen] = primitive_normal[chosen]
        return hit, t, albedo, normal

    def render(
        self, cameras: Cameras, resolution: int, background: tuple[float, float, float] = (1.0, 1.0, 1.0)
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Unlit images [B, 3, H, W] over ``background``, masks [B, 1, H, W] and depths [B, 1, H, W]."""
        origins, directions = generate_rays(cameras, resolution)
        hit, t, albedo, _ = self.raycast(origins.reshape(-1, 3), directions.reshape(-1, 3))
        image = torch.where(hit[:, None], albedo, _vector(background, albedo))

        def channel_first(values: torch.Tensor) -> torch.Tensor:
            return values.reshape(len(cameras), resolution, resolution, -1).permute(0, 3, 1, 2).contiguous()

        return channel_first(image), channel_first(hit.float()[:, None]), channel_first(t[:, None])

    def inside(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Whether points x [N, 3] are inside any primitive [N], and the index of the (last) one [N]."""
        index = torch.full((x.shape[0],), -1, dtype=torch.long, device=x.device)
        for i, primitive in enumerate(self.primitives):
            if isinstance(primitive, Sphere):
                within = (x - _vector(primitive.center, x)).norm(dim=-1) < primitive.radius
            else:
                within = ((x - _vector(primitive.center, x)).abs() < _vector(primitive.half_size, x)).all(dim=-1)
            index = torch.where(within, torch.full_like(index, i), index)
        return index >= 0, index


class AnalyticField:
    """An :class:`AnalyticScene` as a field: constant ``density`` inside primitives, their albedo."""

    def __init__(self, scene: AnalyticScene, density: float = 500.0) -> None:
        self.scene, self.value = scene, density

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inside, index = self.scene.inside(x)
        albedo = torch.zeros_like(x)
        for i in range(len(self.scene.primitives)):
            chosen = index == i
            albedo[chosen] = self.scene.albedo_of(i, x[chosen])
        return torch.where(inside, self.value, 0.0).to(x.dtype), albedo

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return self(x)[0]

    def normals(self, x: torch.Tensor) -> torch.Tensor:
        """Radial normals of the nearest sphere/box centre (exact for a single sphere)."""
        _, index = self.scene.inside(x)
        centers = torch.stack([_vector(p.center, x) for p in self.scene.primitives])  # [P, 3]
        return torch.nn.functional.normalize(x - centers[index.clamp(min=0)], dim=-1)


def default_scene() -> AnalyticScene:
    """A two-tone sphere (front half yellow) resting next to a blue box and a small green sphere."""
    return AnalyticScene(
        [
            Sphere(center=(0.0, -0.2, 0.0), radius=0.45, color=(0.85, 0.2, 0.15), front_color=(0.95, 0.8, 0.2)),
            Box(center=(0.1, 0.45, -0.25), half_size=(0.25, 0.2, 0.3), color=(0.15, 0.3, 0.85)),
            Sphere(center=(-0.2, 0.35, 0.35), radius=0.2, color=(0.2, 0.7, 0.3)),
        ]
    )
