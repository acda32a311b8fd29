"""Camera conventions, sampling, orbits, view labels and ray generation.

One convention for the whole project (the toy world renders with it, the NeRF
renderer renders with it, the evaluator's view labels come from it):

- World frame: right-handed, **z is up**. Objects live inside the cube [-1, 1]^3
  and their **front faces +x**.
- A camera sits at ``distance * (cos(el) cos(az), cos(el) sin(az), sin(el))`` and
  looks at the origin. ``azimuth`` (degrees, in (-180, 180]) is measured in the
  xy-plane from +x towards +y, so azimuth 0 sees the object's front;
  ``elevation`` (degrees) is the angle above the xy-plane.
- ``fov`` is the vertical (= horizontal, images are square) field of view in degrees.
- Camera-to-world matrices follow the OpenGL convention: columns are the camera's
  right, up and backward axes; the camera looks along its -z axis.
- View labels (DESIGN.md): overhead when elevation > 60°, else front when
  |azimuth| < 45°, back when |azimuth| > 135°, else side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import torch

from dreamdistill.config import Range

ViewLabel = Literal["front", "side", "back", "overhead"]
VIEW_LABELS: tuple[ViewLabel, ...] = ("front", "side", "back", "overhead")

FRONT_MAX_AZIMUTH = 45.0
BACK_MIN_AZIMUTH = 135.0
OVERHEAD_MIN_ELEVATION = 60.0


@dataclass(frozen=True)
class CameraRanges:
    """Ranges random training cameras are drawn from (degrees and scene units)."""

    elevation: Annotated[tuple[float, float], Range(-90, 90, ordered=True)] = (-10.0, 60.0)
    """Elevation range in degrees (uniform)."""
    azimuth: Annotated[tuple[float, float], Range(-360, 360, ordered=True)] = (-180.0, 180.0)
    """Azimuth range in degrees; a batch is stratified over it."""
    distance: Annotated[tuple[float, float], Range(0, 100, open_low=True, ordered=True)] = (3.0, 3.6)
    """Camera distance from the origin."""
    fov: Annotated[tuple[float, float], Range(1, 179, ordered=True)] = (36.0, 44.0)
    """Field of view in degrees."""


@dataclass
class Cameras:
    """A batch of B look-at cameras (all tensors have leading dimension B)."""

    azimuth: torch.Tensor  # [B] degrees in (-180, 180]
    elevation: torch.Tensor  # [B] degrees
    distance: torch.Tensor  # [B]
    fov: torch.Tensor  # [B] degrees

    def __len__(self) -> int:
        return self.azimuth.shape[0]

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(*(t.to(device) for t in (self.azimuth, self.elevation, self.distance, self.fov)))

    @property
    def positions(self) -> torch.Tensor:
        """Camera centres in world coordinates, [B, 3]."""
        return spherical_to_cartesian(self.azimuth, self.elevation, self.distance)

    @property
    def camera_to_world(self) -> torch.Tensor:
        """OpenGL camera-to-world matrices, [B, 4, 4]."""
        return look_at(self.positions)

    def view_labels(self) -> list[ViewLabel]:
        return [view_label(float(a), float(e)) for a, e in zip(self.azimuth, self.elevation)]

    def embedding(self) -> torch.Tensor:
        """A small camera descriptor for conditioning networks, [B, 6]:
        (sin az, cos az, sin el, cos el, distance offset, fov offset)."""
        az, el = torch.deg2rad(self.azimuth), torch.deg2rad(self.elevation)
        return torch.stack(
            [az.sin(), az.cos(), el.sin(), el.cos(), self.distance - 3.3, (self.fov - 40.0) / 10.0], dim=-1
        )


def wrap_azimuth(azimuth: torch.Tensor) -> torch.Tensor:
    """Wrap degrees into (-180, 180]."""
    wrapped = torch.remainder(azimuth + 180.0, 360.0) - 180.0
    return torch.where(wrapped == -180.0, torch.full_like(wrapped, 180.0), wrapped)


def view_label(azimuth: float, elevation: float) -> ViewLabel:
    """The view word of a camera (thresholds from DESIGN.md)."""
    if elevation > OVERHEAD_MIN_ELEVATION:
        return "overhead"
    azimuth = (azimuth + 180.0) % 360.0 - 180.0
    if abs(azimuth) < FRONT_MAX_AZIMUTH:
        return "front"
    if abs(azimuth) > BACK_MIN_AZIMUTH:
        return "back"
    return "side"


def spherical_to_cartesian(azimuth: torch.Tensor, elevation: torch.Tensor, distance: torch.Tensor) -> torch.Tensor:
    """Camera centre from (azimuth, elevation) in degrees and distance, [..., 3]."""
    az, el = torch.deg2rad(azimuth), torch.deg2rad(elevation)
    return torch.stack([el.cos() * az.cos(), el.cos() * az.sin(), el.sin()], dim=-1) * distance[..., None]


def look_at(positions: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """OpenGL camera-to-world matrices for cameras at ``positions`` [B, 3] looking at ``target``."""
    target = torch.zeros_like(positions) if target is None else target
    backward = torch.nn.functional.normalize(positions - target, dim=-1)
    world_up = torch.tensor([0.0, 0.0, 1.0], dtype=positions.dtype, device=positions.device).expand_as(backward)
    right = torch.linalg.cross(world_up, backward, dim=-1)
    # Straight overhead: world up is parallel to the view axis; pick +y as the fallback up.
    degenerate = right.norm(dim=-1, keepdim=True) < 1e-6
    fallback = torch.tensor([0.0, 1.0, 0.0], dtype=positions.dtype, device=positions.device).expand_as(backward)
    right = torch.where(degenerate, torch.linalg.cross(fallback, backward, dim=-1), right)
    right = torch.nn.functional.normalize(right, dim=-1)
    up = torch.linalg.cross(backward, right, dim=-1)
    matrix = torch.zeros(*positions.shape[:-1], 4, 4, dtype=positions.dtype, device=positions.device)
    matrix[..., :3, 0], matrix[..., :3, 1], matrix[..., :3, 2], matrix[..., :3, 3] = right, up, backward, positions
    matrix[..., 3, 3] = 1.0
    return matrix


def sample_cameras(
    batch_size: int, ranges: CameraRanges = CameraRanges(), generator: torch.Generator | None = None
) -> Cameras:
    """Random training cameras; azimuth is stratified over the batch so views are balanced."""

    def uniform(low_high: tuple[float, float]) -> torch.Tensor:
        low, high = low_high
        return low + (high - low) * torch.rand(batch_size, generator=generator)

    low, high = ranges.azimuth
    strata = (torch.arange(batch_size) + torch.rand(batch_size, generator=generator)) / batch_size
    offset = torch.rand(1, generator=generator)
    azimuth = wrap_azimuth(low + (high - low) * torch.remainder(strata + offset, 1.0))
    # Elevation uniform in sin(el) would favour the equator less; uniform degrees is the common choice.
    return Cameras(azimuth, uniform(ranges.elevation), uniform(ranges.distance), uniform(ranges.fov))


def orbit_cameras(
    count: int, elevation: float = 15.0, distance: float = 3.3, fov: float = 40.0, start_azimuth: float = 0.0
) -> Cameras:
    """``count`` cameras evenly spaced in azimuth at a fixed elevation (evaluation orbits, turntables)."""
    azimuth = wrap_azimuth(start_azimuth + torch.arange(count, dtype=torch.float32) * (360.0 / count))
    full = torch.full((count,), 1.0)
    return Cameras(azimuth, full * elevation, full * distance, full * fov)


def focal_length(fov_degrees: torch.Tensor, resolution: int) -> torch.Tensor:
    """Focal length in pixels for a square image of ``resolution`` pixels."""
    return 0.5 * resolution / torch.tan(torch.deg2rad(fov_degrees) / 2)


def generate_rays(cameras: Cameras, resolution: int,
                  offsets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """World-space ray origins and unit directions, each [B, H, W, 3], through pixel centres, or through
    ``offsets`` [B, H, W, 2] in [0, 1)² within each pixel (row, column) when given: a random offset per ray
    makes a render's expectation the pixel's area average (stochastic antialiasing).

    Row 0 is the top of the image; column 0 is the left.
    """
    device = cameras.azimuth.device
    pixel = torch.arange(resolution, dtype=torch.float32, device=device)
    rows, cols = torch.meshgrid(pixel, pixel, indexing="ij")
    if offsets is None:
        rows, cols = rows + 0.5, cols + 0.5
    else:
        rows, cols = rows + offsets[..., 0], cols + offsets[..., 1]
    focal = focal_length(cameras.fov, resolution)[:, None, None]
    x = (cols - resolution / 2) / focal
    y = -(rows - resolution / 2) / focal
    directions_camera = torch.stack([x, y, -torch.ones_like(x)], dim=-1)  # [B, H, W, 3]
    c2w = cameras.camera_to_world
    directions = torch.einsum("bij,bhwj->bhwi", c2w[:, :3, :3], directions_camera)
    directions = torch.nn.functional.normalize(directions, dim=-1)
    origins = c2w[:, None, None, :3, 3].expand_as(directions)
    return origins, directions

