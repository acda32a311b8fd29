"""Primitives and the procedural object of each category (z up, front faces +x, inside [-1, 1]^3)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dreamdistill.toyworld.world import CATEGORIES, COLOUR_RGB, COLOURS

RGB = tuple[float, float, float]

DARK: RGB = (0.07, 0.07, 0.08)
GLASS: RGB = (0.60, 0.83, 1.00)
DARK_GLASS: RGB = (0.18, 0.20, 0.27)
WHITE: RGB = (0.96, 0.96, 0.96)
CARROT: RGB = (1.00, 0.40, 0.00)
HEADLIGHT: RGB = (1.00, 0.93, 0.30)
TAILLIGHT: RGB = (0.80, 0.00, 0.00)
DOOR: RGB = (0.22, 0.11, 0.04)
NAVY: RGB = (0.08, 0.08, 0.30)

MAX_PLANES = 6
"""Planes per convex polytope (a box has 6, a prism 5; padded with always-true planes)."""


def _axis_rotation(axis: str) -> np.ndarray:
    """World-to-local rotation whose local z is the world ``axis`` ('x', 'y' or 'z')."""
    rows = {"x": [[0, 1, 0], [0, 0, 1], [1, 0, 0]], "y": [[0, 0, 1], [1, 0, 0], [0, 1, 0]], "z": np.eye(3)}
    return np.asarray(rows[axis], dtype=np.float64)


@dataclass(frozen=True)
class Ellipsoid:
    """An axis-aligned ellipsoid: points p with |(p - centre) / radii| <= 1."""

    centre: np.ndarray  # [3]
    radii: np.ndarray  # [3]
    colour: RGB

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.centre - self.radii, self.centre + self.radii

    def translated(self, offset: np.ndarray) -> Ellipsoid:
        return Ellipsoid(self.centre + offset, self.radii, self.colour)

    def scaled(self, factor: float) -> Ellipsoid:
        return Ellipsoid(self.centre * factor, self.radii * factor, self.colour)

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """(|(p - centre) / radii| - 1) · min(radii) at ``points`` [..., 3]: exact on the surface, < 0 inside."""
        return (np.linalg.norm((points - self.centre) / self.radii, axis=-1) - 1.0) * float(self.radii.min())


@dataclass(frozen=True)
class Box:
    """An axis-aligned box between corners ``low`` and ``high``."""

    low: np.ndarray  # [3]
    high: np.ndarray  # [3]
    colour: RGB

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.low, self.high

    def translated(self, offset: np.ndarray) -> Box:
        return Box(self.low + offset, self.high + offset, self.colour)

    def scaled(self, factor: float) -> Box:
        return Box(self.low * factor, self.high * factor, self.colour)

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """Exact signed distance to the box at ``points`` [..., 3] (< 0 inside)."""
        gap = np.maximum(self.low - points, points - self.high)  # [..., 3]
        return np.linalg.norm(np.maximum(gap, 0.0), axis=-1) + np.minimum(gap.max(axis=-1), 0.0)


@dataclass(frozen=True)
class Polytope:
    """A convex polytope {p : normals @ p <= offsets} (e.g. a roof prism); ``corners`` bound it."""

    normals: np.ndarray  # [K, 3] unit outward normals
    offsets: np.ndarray  # [K]
    corners: np.ndarray  # [V, 3]
    colour: RGB

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        return self.corners.min(axis=0), self.corners.max(axis=0)

    def translated(self, offset: np.ndarray) -> Polytope:
        return Polytope(self.normals, self.offsets + self.normals @ offset, self.corners + offset, self.colour)

    def scaled(self, factor: float) -> Polytope:
        return Polytope(self.normals, self.offsets * factor, self.corners * factor, self.colour)

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """max_k (n_k · p - offset_k) at ``points`` [..., 3]: exact inside, a lower bound outside (0 on the surface)."""
        return (points @ self.normals.T - self.offsets).max(axis=-1)


@dataclass(frozen=True)
class Frustum:
    """A capped cone frustum along local z in [-h, h]: radius ``radius_bottom`` at -h, ``radius_top`` at +h."""

    centre: np.ndarray  # [3]
    half_height: float
    radius_bottom: float
    radius_top: float
    colour: RGB
    rotation: np.ndarray = field(default_factory=lambda: np.eye(3))  # [3, 3] world-to-local

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        radius = max(self.radius_bottom, self.radius_top)
        half_local = np.array([radius, radius, self.half_height])
        extent = np.abs(self.rotation.T) @ half_local
        return self.centre - extent, self.centre + extent

    def translated(self, offset: np.ndarray) -> Frustum:
        return Frustum(
            self.centre + offset, self.half_height, self.radius_bottom, self.radius_top, self.colour, self.rotation
        )

    def scaled(self, factor: float) -> Frustum:
        return Frustum(
            self.centre * factor,
            self.half_height * factor,
            self.radius_bottom * factor,
            self.radius_top * factor,
            self.colour,
            self.rotation,
        )

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """max(|z| - h, (ρ - r(z)) cos θ) in local coordinates at ``points`` [..., 3] (0 on the surface, < 0 inside).

        r(z) = r_bottom + (r_top - r_bottom)(z + h) / 2h is the renderer's radius (``raytrace._frusta``), ρ the
        distance from the axis, θ the half-angle of the cone (so the side term is the distance to the side line).
        """
        local = (points - self.centre) @ self.rotation.T
        slope = (self.radius_top - self.radius_bottom) / (2 * self.half_height)
        radius = (self.radius_bottom + self.radius_top) / 2 + slope * local[..., 2]
        side = (np.hypot(local[..., 0], local[..., 1]) - radius) / np.sqrt(1.0 + slope * slope)
        return np.maximum(np.abs(local[..., 2]) - self.half_height, side)


Primitive = Ellipsoid | Box | Polytope | Frustum


@dataclass(frozen=True)
class ToyObject:
    """One procedural object: its labels and its primitives (already centred at the origin)."""

    category: int
    colour: int
    primitives: tuple[Primitive, ...]

    @property
    def category_name(self) -> str:
        return CATEGORIES[self.category]

    def signed_distance(self, points: np.ndarray) -> np.ndarray:
        """The union's signed function at ``points`` [..., 3]: the minimum over the primitives (< 0 inside)."""
        return np.min([p.signed_distance(points) for p in self.primitives], axis=0)

    def inside(self, points: np.ndarray) -> np.ndarray:
        """Whether ``points`` [..., 3] lie in the object (the solid the renderer draws; boundary counts as inside)."""
        return self.signed_distance(points) <= 0

    @property
    def colour_name(self) -> str:
        return COLOURS[self.colour]


# ----------------------------------------------------------------------------- primitive constructors


def box(low: tuple[float, float, float], high: tuple[float, float, float], colour: RGB) -> Box:
    """Axis-aligned box between corners ``low`` and ``high``."""
    return Box(np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64), colour)


def gable_prism(x_half: float, y_half: float, z_base: float, height: float, colour: RGB) -> Polytope:
    """Triangular prism (a roof): ridge along x at ``z_base + height``, base |y| <= y_half at ``z_base``."""
    slope = np.array([height, y_half])
    slope = slope / np.linalg.norm(slope)
    normals = np.array([[1, 0, 0], [-1, 0, 0], [0, 0, -1], [0, slope[0], slope[1]], [0, -slope[0], slope[1]]])
    apex = z_base + height
    offsets = np.array([x_half, x_half, -z_base, slope[1] * apex, slope[1] * apex])
    corners = np.array(
        [[sx * x_half, y, z] for sx in (-1, 1) for y, z in ((-y_half, z_base), (y_half, z_base), (0.0, apex))]
    )
    return Polytope(normals.astype(np.float64), offsets, corners, colour)


def sphere(centre: tuple[float, float, float], radius: float, colour: RGB) -> Ellipsoid:
    return Ellipsoid(np.asarray(centre, dtype=np.float64), np.full(3, radius, dtype=np.float64), colour)


def ellipsoid(centre: tuple[float, float, float], radii: tuple[float, float, float], colour: RGB) -> Ellipsoid:
    return Ellipsoid(np.asarray(centre, dtype=np.float64), np.asarray(radii, dtype=np.float64), colour)


def cylinder(
    centre: tuple[float, float, float], radius: float, half_height: float, colour: RGB, axis: str = "z"
) -> Frustum:
    return Frustum(np.asarray(centre, dtype=np.float64), half_height, radius, radius, colour, _axis_rotation(axis))


def cone(
    centre: tuple[float, float, float],
    radius_bottom: float,
    radius_top: float,
    half_height: float,
    colour: RGB,
    axis: str = "z",
) -> Frustum:
    """Frustum along ``axis``; "bottom" is the negative end of that axis."""
    return Frustum(
        np.asarray(centre, dtype=np.float64), half_height, radius_bottom, radius_top, colour, _axis_rotation(axis)
    )


# ----------------------------------------------------------------------------- categories


def _shade(colour: RGB, factor: float) -> RGB:
    return (colour[0] * factor, colour[1] * factor, colour[2] * factor)


def _contrast(colour: RGB) -> RGB:
    """A detail colour that stands out on ``colour`` (white on dark bodies, navy on light ones)."""
    luminance = 0.3 * colour[0] + 0.59 * colour[1] + 0.11 * colour[2]
    return WHITE if luminance < 0.55 else NAVY


def _chair(rng: np.random.Generator, body: RGB) -> list[Primitive]:
    sx, sy = rng.uniform(0.34, 0.44), rng.uniform(0.34, 0.44)
    leg, back = rng.uniform(0.55, 0.75), rng.uniform(0.6, 0.8)
    thick, post = 0.08, rng.uniform(0.04, 0.055)
    parts: list[Primitive] = [box((-sx, -sy, -thick), (sx, sy, 0.0), body)]
    for x in (-1, 1):
        for y in (-1, 1):
            cx, cy = x * (sx - post), y * (sy - post)
            parts.append(box((cx - post, cy - post, -thick - leg), (cx + post, cy + post, -thick), body))
    parts.append(box((-sx, -sy, -thick), (-sx + 0.09, sy, back), body))  # backrest at -x
    # Cushions facing the sitter (front only): seat top and backrest front.
    cushion = _contrast(body)
    parts.append(box((-sx + 0.12, -sy + 0.05, 0.0), (sx - 0.04, sy - 0.05, 0.04), cushion))
    parts.append(box((-sx + 0.09, -sy + 0.05, 0.08), (-sx + 0.13, sy - 0.05, back - 0.06), cushion))
    return parts


def _table(rng: np.random.Generator, body: RGB) -> list[Primitive]:
    top_r, height = rng.uniform(0.6, 0.85), rng.uniform(0.7, 0.95)
    pole_r, base_r = rng.uniform(0.05, 0.09), rng.uniform(0.25, 0.4)
    return [
        cylinder((0, 0, height - 0.035), top_r, 0.035, body),
        cylinder((0, 0, height / 2), pole_r, height / 2, body),
        cylinder((0, 0, 0.03), base_r, 0.03, body),
    ]


def _mug(rng: np.random.Generator, body: RGB) -> list[Primitive]:
    r, h = rng.uniform(0.36, 0.48), rng.uniform(0.38, 0.52)
    reach, bar = rng.uniform(0.2, 0.28), 0.085
    handle_z = 0.55 * h
    return [
        cylinder((0, 0, 0), r, h, body),
        cylinder((0, 0, h + 0.004), 0.85 * r, 0.004, _shade(body, 0.35)),  # the opening
        # Handle at +y (on the image's right in the front view): a "C" of three bars.
        box((-0.05, r - 0.05, handle_z - bar), (0.05, r + reach, handle_z), body),
        box((-0.05, r - 0.05, -handle_z), (0.05, r + reach, -handle_z + bar), body),
        box((-0.05, r + reach - bar, -handle_z), (0.05, r + reach, handle_z), body),
        # Logo on the front (+x) face.
        box((0.8 * r, -0.42 * r, -0.45 * h), (r + 0.03, 0.42 * r, 0.45 * h), _contrast(body)),
    ]


def _lamp(rng: np.random.Generator, body: RGB) -> list[Primitive]:
    base_r, pole = rng.uniform(0.25, 0.36), rng.uniform(0.6, 0.85)
    shade_bottom, shade_top, shade_h = rng.uniform(0.38, 0.5), rng.uniform(0.16, 0.26), rng.uniform(0.35, 0.5)
    return [
        cylinder((0, 0, 0.035), base_r, 0.035, body),
        cylinder((0, 0, pole / 2), 0.04, pole / 2, body),
        cone((0, 0, pole + shade_h / 2 - 0.05), shade_bottom, shade_top, shade_h / 2, body),
    ]


def _car(rng: np.random.Generator, body: RGB) -> list[Primitive]:
    length, width = rng.uniform(0.75, 0.9), rng.uniform(0.34, 0.42)
    body_h, cabin_h, wheel_r = rng.uniform(0.28, 0.36), rng.uniform(0.22, 0.3), rng.uniform(0.16, 0.2)
    cabin_front, cabin_back, cabin_w = rng.uniform(0.1, 0.3) * length, -0.65 * length, 0.85 * width
    top = body_h + cabin_h
    parts: list[Primitive] = [
        box((-length, -width, 0.0), (length, width, body_h), body),
        box((cabin_back, -cabin_w, body_h), (cabin_front, cabin_w, top), body),
        # Windshield (front, light glass), rear window (dark glass), side windows (dark glass).
        box(
            (cabin_front - 0.02, -0.8 * cabin_w, body_h + 0.03), (cabin_front + 0.02, 0.8 * cabin_w, top - 0.04), GLASS
        ),
        box(
            (cabin_back - 0.02, -0.75 * cabin_w, body_h + 0.05),
            (cabin_back + 0.02, 0.75 * cabin_w, top - 0.05),
            DARK_GLASS,
        ),
        box(
            (cabin_back + 0.06, -cabin_w - 0.02, body_h + 0.04),
            (cabin_front - 0.06, cabin_w + 0.02, top - 0.05),
            DARK_GLASS,
        ),
        # Front: yellow headlights and a dark grille; back: red tail lights above a dark bumper.
        box((length - 0.02, -0.3 * width, 0.2 * body_h), (length + 0.025, 0.3 * width, 0.5 * body_h), DARK),
        box((-length - 0.025, -width, 0.05 * body_h), (-length + 0.02, width, 0.3 * body_h), DARK),
    ]
    for side in (-1, 1):
        y0, y1 = sorted((side * 0.4 * width, side * 0.95 * width))
        parts.append(box((length - 0.02, y0, 0.45 * body_h), (length + 0.03, y1, 0.9 * body_h), HEADLIGHT))
        parts.append(box((-length - 0.03, y0, 0.45 * body_h), (-length + 0.02, y1, 0.9 * body_h), TAILLIGHT))
        for x in (-0.62 * length, 0.62 * length):
            parts.append(cylinder((x, side * width, 0.02), wheel_r, 0.08, DARK, axis="y"))
    return parts


def _house(rng: np.random.Generator, body: RGB) -> list[Primitive]:
    hx, hy = rng.uniform(0.5, 0.62), rng.uniform(0.5, 0.65)
    wall, roof = rng.uniform(0.55, 0.75), rng.uniform(0.35, 0.5)
    door_w, win = rng.uniform(0.1, 0.14), rng.uniform(0.09, 0.12)
    door_h = rng.uniform(0.5, 0.65) * wall
    win_y, win_z = rng.uniform(0.55, 0.65) * hy, 0.62 * wall
    parts: list[Primitive] = [
        box((-hx, -hy, 0.0), (hx, hy, wall), body),
        gable_prism(hx + 0.06, hy + 0.06, wall, roof, _shade(body, 0.65)),
        box((hx - 0.01, -door_w, 0.0), (hx + 0.03, door_w, door_h), DOOR),
    ]
    for side in (-1, 1):
        y = side * win_y
        parts.append(box((hx - 0.01, y - win, win_z - win), (hx + 0.03, y + win, win_z + win), GLASS))
    return parts


def _on_sphere(centre: np.ndarray, radius: float, azimuth: float, elevation: float) -> tuple[float, float, float]:
    az, el = np.deg2rad(azimuth), np.deg2rad(elevation)
    direction = np.array([np.cos(el) * np.cos(az), np.cos(el) * np.sin(az), np.sin(el)])
    point = centre + radius * direction
    return float(point[0]), float(point[1]), float(point[2])


def _snowman(rng: np.random.Generator, body: RGB) -> list[Primitive]:
    r1 = rng.uniform(0.4, 0.48)
    r2 = r1 * rng.uniform(0.7, 0.8)
    r3 = r2 * rng.uniform(0.7, 0.8)
    c1 = np.array([0.0, 0.0, r1])
    c2 = c1 + [0.0, 0.0, 0.85 * (r1 + r2)]
    c3 = c2 + [0.0, 0.0, 0.85 * (r2 + r3)]
    parts: list[Primitive] = [sphere(tuple(c), r, body) for c, r in ((c1, r1), (c2, r2), (c3, r3))]
    # Bold face and buttons towards +x (visible at 32x32): dark eyes, three dark buttons, a carrot nose.
    for side in (-1, 1):
        parts.append(sphere(_on_sphere(c3, 0.82 * r3, side * 32.0, 22.0), 0.3 * r3, DARK))
    for centre, radius, elevation in ((c2, r2, 25.0), (c2, r2, -15.0), (c1, r1, 25.0)):
        parts.append(sphere(_on_sphere(centre, 0.85 * radius, 0.0, elevation), 0.24 * r2, DARK))
    nose_len = rng.uniform(0.28, 0.36)
    parts.append(
        cone((c3[0] + 0.85 * r3 + nose_len / 2, c3[1], c3[2] - 0.03), 0.1, 0.0, nose_len / 2, CARROT, axis="x")
    )
    return parts


def _bed(rng: np.random.Generator, body: RGB) -> list[Primitive]:
    length, width = rng.uniform(0.78, 0.9), rng.uniform(0.45, 0.58)
    head, foot = rng.uniform(0.5, 0.65), rng.uniform(0.12, 0.22)
    board = 0.07
    return [
        box((-length, -width, -0.25), (length, width, -0.05), body),  # frame
        box((-length + board, -width + 0.02, -0.05), (length - board, width - 0.02, 0.1), WHITE),  # mattress
        box((-0.3 * length, -width, 0.04), (length - board, width, 0.14), body),  # blanket
        ellipsoid((-length + board + 0.17, 0.0, 0.13), (0.14, 0.7 * width, 0.07), WHITE),  # pillow near the head
        box((-length, -width, -0.4), (-length + board, width, head), body),  # tall headboard at -x
        box((length - board, -width, -0.4), (length, width, foot), body),  # low footboard at +x
    ]


BUILDERS: dict[str, Callable[[np.random.Generator, RGB], list[Primitive]]] = {
    "chair": _chair,
    "table": _table,
    "mug": _mug,
    "lamp": _lamp,
    "car": _car,
    "house": _house,
    "snowman": _snowman,
    "bed": _bed,
}
assert tuple(BUILDERS) == CATEGORIES


EXTENT = (1.5, 1.8)
"""Range of an object's size (scene units): the larger of its height and its footprint's diagonal.

Every object is scaled into it, so it stays in frame from any azimuth."""


def normalised(primitives: list[Primitive], extent: float) -> tuple[Primitive, ...]:
    """Centre the bounding box at the origin and scale the object's size (see ``EXTENT``) to ``extent``."""
    lows, highs = zip(*(p.bounds() for p in primitives))
    low, high = np.min(lows, axis=0), np.max(highs, axis=0)
    size = high - low
    factor = extent / max(float(size[2]), float(np.hypot(size[0], size[1])))
    return tuple(p.translated(-(low + high) / 2).scaled(factor) for p in primitives)


def make_object(category: int, colour: int, rng: np.random.Generator) -> ToyObject:
    """A random instance of ``category`` in body ``colour`` (indices into CATEGORIES / COLOURS)."""
    body = COLOUR_RGB[COLOURS[colour]]
    primitives = BUILDERS[CATEGORIES[category]](rng, body)
    return ToyObject(category, colour, normalised(primitives, rng.uniform(*EXTENT)))


def object_rng(seed: int, index: int) -> np.random.Generator:
    """The random stream of object ``index`` of data set ``seed`` (independent of batch size)."""
    return np.random.default_rng([seed, index])
