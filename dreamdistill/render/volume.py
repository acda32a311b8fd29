"""Differentiable volume rendering of a field inside the scene box [-1, 1]^3.

``render(field, background, cameras, resolution)`` returns a :class:`RenderOutput` with channel-first
images: colour [B, 3, H, W] in [0, 1] composited over the background, opacity [B, 1, H, W], expected depth
[B, 1, H, W] (distance along the ray, sum of w * t; 0 where nothing is hit) and composited normals
[B, 3, H, W] (world space, unnormalised; when computed).

Rays march with a constant step inside the box. Sampling:
- on CPU (and on CUDA without nerfacc): our own marching; with an :class:`OccupancyGrid`, samples in empty
  cells are dropped before the field is evaluated. Samples are packed (one row per kept sample) and
  transmittance is a per-ray exclusive cumulative sum of density * step. While autograd records, a first
  pass without gradients evaluates the density alone and keeps only the samples that can matter
  (:func:`contributing_samples`: step opacity above ``SKIP_OPACITY`` and transmittance above ``EARLY_STOP``,
  the alpha threshold and early termination of Instant-NGP and nerfacc); the field and its gradients are then
  computed at those (about a tenth of the marched samples once the shape has formed). Without autograd the
  field is evaluated front to back in blocks of steps, each block only on rays not yet opaque
  (:func:`field_until_opaque`);
- on CUDA with nerfacc: nerfacc's ``OccGridEstimator`` marches (fed by our occupancy grid, with early ray
  termination) and ``render_weight_from_density`` computes the weights.
Per-ray sums are ``index_add`` over packed samples.

Shading (DreamFusion): ``albedo`` (colour = albedo), ``diffuse`` (albedo * (ambient + (1 - ambient) *
max(0, n . l)) with a point light), ``textureless`` (the same with white albedo) and ``geometry`` (the diffuse
image with the albedo detached: the teacher sees the object's colours, the gradient reaches density and normals
only). Normals are computed only at samples whose weight exceeds ``normal_weight_threshold``; with
``return_eikonal`` the same gradient gives the per-ray eikonal penalty Σ_i sg(w_i) (|∇ logit_i| − 1)² (for a
signed-distance field, |∇d| = 1).

Typical training step::

    occupancy = OccupancyGrid()
    occupancy.update(field.density, DEFAULT_STEP_SIZE, step=step)  # every 16 steps, all cells while warming up
    cameras = sample_cameras(4)
    out = render(field, background, cameras, 64, shading="diffuse", light=sample_lights(cameras),
                 occupancy=occupancy)
    loss = some_loss(out.image)  # [4, 3, 64, 64]
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn

from dreamdistill.render.cameras import Cameras, generate_rays
from dreamdistill.render.occupancy import OccupancyGrid
from dreamdistill.scene.field import normals_from_gradient

Shading = Literal["albedo", "diffuse", "textureless", "geometry"]
SHADINGS: tuple[Shading, ...] = ("albedo", "diffuse", "textureless", "geometry")

BOX_BOUND = 1.0
DEFAULT_STEP_SIZE = 2 * math.sqrt(3) * BOX_BOUND / 256
"""Marching step: 256 steps across the box diagonal."""
SKIP_OPACITY = 1e-4
"""Training samples whose step opacity 1 - exp(-σδ) is below this are skipped (their share of any pixel is
below it, and the gradient reaching their pre-activation density is of the same order)."""
EARLY_STOP = 1e-3
"""Training samples behind this transmittance are skipped (early ray termination)."""


class RadianceField(Protocol):
    """What the renderer needs from a field (``dreamdistill.scene.field.Field`` is one)."""

    def __call__(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Density [N] and albedo [N, 3] at world points x [N, 3]."""
        ...

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """Density [N] at x [N, 3]."""
        ...

    def normals(self, x: torch.Tensor) -> torch.Tensor:
        """Outward unit normals [N, 3] at x [N, 3]."""
        ...


@dataclass
class Light:
    """Point lights, one per image."""

    position: torch.Tensor  # [B, 3] world
    ambient: torch.Tensor  # [B] ambient fraction in [0, 1]


def sample_lights(
    cameras: Cameras,
    generator: torch.Generator | None = None,
    jitter: float = 1.0,
    ambient: float = 0.1,
    distance_range: tuple[float, float] = (0.8, 1.5),
) -> Light:
    """Random point lights around each camera (DreamFusion): the camera position scaled by a random factor
    in ``distance_range`` plus Gaussian noise of std ``jitter``."""
    positions = cameras.positions  # [B, 3]
    batch = positions.shape[0]
    low, high = distance_range
    scale = low + (high - low) * torch.rand(batch, 1, generator=generator)
    noise = jitter * torch.randn(batch, 3, generator=generator)
    position = positions * scale.to(positions) + noise.to(positions)
    return Light(position, torch.full((batch,), ambient, dtype=positions.dtype, device=positions.device))


def headlights(cameras: Cameras, ambient: float = 0.1) -> Light:
    """A light at each camera (deterministic shading for evaluation)."""
    positions = cameras.positions
    return Light(positions, torch.full((positions.shape[0],), ambient, dtype=positions.dtype, device=positions.device))


@dataclass
class RayOutput:
    """Per-ray results of :func:`render_rays`."""

    color: torch.Tensor  # [R, 3] composited over the background
    opacity: torch.Tensor  # [R]
    depth: torch.Tensor  # [R] sum of w * t
    normal: torch.Tensor | None  # [R, 3] sum of w * n
    samples: int  # field samples evaluated
    orientation: torch.Tensor | None = None  # [R] Σ_i sg(w_i) max(0, n_i·d)² (with normals)
    distortion: torch.Tensor | None = None  # [R] Mip-NeRF 360 distortion (when asked for)
    eikonal: torch.Tensor | None = None  # [R] Σ_i sg(w_i) (|∇ logit_i| − 1)² (when asked for)


@dataclass
class RenderOutput:
    """Images of :func:`render`, channel-first."""

    image: torch.Tensor  # [B, 3, H, W] in [0, 1]
    opacity: torch.Tensor  # [B, 1, H, W]
    depth: torch.Tensor  # [B, 1, H, W]
    normal: torch.Tensor | None  # [B, 3, H, W]
    samples: int
    orientation: torch.Tensor | None = None  # [B, 1, H, W] per-ray orientation penalty (with normals)
    distortion: torch.Tensor | None = None  # [B, 1, H, W] per-ray distortion (when asked for)
    eikonal: torch.Tensor | None = None  # [B, 1, H, W] per-ray eikonal penalty (when asked for)


# ---- pure helpers -------------------------------------------------------------------------------------


def ray_box_intersection(
    origins: torch.Tensor,
    directions: torch.Tensor,
    box_min: torch.Tensor | float = -BOX_BOUND,
    box_max: torch.Tensor | float = BOX_BOUND,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Entry and exit distances [R], [R] of rays with an axis-aligned box (exit <= entry: a miss)."""
    safe = torch.where(directions.abs() < 1e-9, torch.full_like(directions, 1e-9), directions)
    t0 = (box_min - origins) / safe
    t1 = (box_max - origins) / safe
    near = torch.minimum(t0, t1).amax(dim=-1).clamp(min=0.0)
    far = torch.maximum(t0, t1).amin(dim=-1)
    return near, far


def march(
    origins: torch.Tensor,
    directions: torch.Tensor,
    step_size: float,
    occupancy: OccupancyGrid | None = None,
    stratified: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Constant-step samples inside the box, empty cells dropped (rays are clipped to the occupied cells' box,
    keeping the positions the samples would have without the grid, so culling changes no sample it keeps).

    Returns packed ray indices [S], sample distances t [S] (interval midpoints), step indices [S] (position of
    the sample along its ray) and the number of steps K of the longest ray. Samples are sorted by ray, then t.
    """
    device = origins.device
    near, far = ray_box_intersection(origins, directions)
    if occupancy is not None:  # start at the occupied cells' box, on the same sample positions as without it
        near_occupied, far = ray_box_intersection(origins, directions, *occupancy.occupied_bounds())
        near = near + ((near_occupied - near) / step_size).floor().clamp(min=0.0) * step_size
    span = (far - near).clamp(min=0.0)
    steps = int(math.ceil(float(span.max()) / step_size)) if span.numel() else 0
    if steps == 0:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, torch.zeros(0, device=device), empty, 0
    if stratified:
        offset = torch.rand(origins.shape[0], 1, generator=generator).to(device)
    else:
        offset = torch.full((origins.shape[0], 1), 0.5, device=device)
    t = near[:, None] + (torch.arange(steps, device=device) + offset) * step_size  # [R, K]
    rays, columns = torch.nonzero(t < far[:, None], as_tuple=True)
    t = t[rays, columns]
    if occupancy is not None:
        keep = occupancy.occupied(origins[rays] + t[:, None] * directions[rays])
        rays, columns, t = rays[keep], columns[keep], t[keep]
    return rays, t, columns, steps


def exclusive_transmittance(
    sigma_delta: torch.Tensor, rays: torch.Tensor, columns: torch.Tensor, ray_count: int, steps: int
) -> torch.Tensor:
    """T_i = exp(-sum_{j<i} sigma_j delta_j) along each ray, for packed samples [S] at (ray, step) positions."""
    dense = sigma_delta.new_zeros(ray_count, steps).index_put((rays, columns), sigma_delta)  # [R, K]
    before = torch.cumsum(torch.cat([dense.new_zeros(ray_count, 1), dense[:, :-1]], dim=1), dim=1)  # [R, K]
    return torch.exp(-before[rays, columns])


@torch.no_grad()
def contributing_samples(density: torch.Tensor, rays: torch.Tensor, columns: torch.Tensor, ray_count: int,
                         steps: int, step_size: float, skip_opacity: float = SKIP_OPACITY,
                         early_stop: float = EARLY_STOP) -> torch.Tensor:
    """Mask [S] of the packed samples with step opacity above ``skip_opacity`` and transmittance (over all
    samples of the ray) above ``early_stop``; ``density`` [S] from a pass without gradients."""
    sigma_delta = density * step_size
    transmittance = exclusive_transmittance(sigma_delta, rays, columns, ray_count, steps)
    return (-torch.expm1(-sigma_delta) > skip_opacity) & (transmittance > early_stop)


def positions_along_rays(rays: torch.Tensor, ray_count: int) -> tuple[torch.Tensor, int]:
    """Index of each packed sample along its ray [S] (samples sorted by ray) and the most samples on one ray."""
    counts = torch.bincount(rays, minlength=ray_count)
    starts = torch.cumsum(counts, 0) - counts
    return torch.arange(rays.numel(), device=rays.device) - starts[rays], int(counts.max()) if rays.numel() else 0


def distortion_penalty(weights: torch.Tensor, t: torch.Tensor, rays: torch.Tensor, columns: torch.Tensor,
                       ray_count: int, steps: int, step_size: float, window: int = 0) -> torch.Tensor:
    """Per-ray distortion [R] of Mip-NeRF 360 (Barron et al. 2022, Eq. 15) for packed samples sorted by ray and t
    with intervals of length δ = ``step_size``: Σ_{i,j} w_i w_j |t_i − t_j| + δ/3 Σ_i w_i².

    ``window`` k > 0 counts only the pairs at most k steps apart (a local distortion: a haze thicker than a
    surface still pays for its spread, but two surfaces on one ray, a chair's backrest in front of its seat,
    do not pay for the gap between them). ``window`` 0: all pairs, in O(S) as
    2 Σ_i w_i (t_i Σ_{j<i} w_j − Σ_{j<i} w_j t_j) for t sorted along the ray."""
    def dense(values: torch.Tensor) -> torch.Tensor:  # [R, K] by step index
        return values.new_zeros(ray_count, steps).index_put((rays, columns), values)

    self_term = segment_sum(step_size / 3 * weights.square(), rays, ray_count)
    if window > 0:
        w, s = dense(weights), dense(t)
        offsets = range(1, min(window, steps - 1) + 1)
        pairs = sum((w[:, k:] * w[:, :-k] * (s[:, k:] - s[:, :-k]).abs()).sum(1) for k in offsets)
        return 2 * pairs + self_term

    def before(values: torch.Tensor) -> torch.Tensor:  # Σ_{j<i} values_j on the same ray, packed [S]
        cumulative = dense(values)
        return (torch.cumsum(cumulative, dim=1) - cumulative)[rays, columns]

    pairs = 2 * weights * (t * before(weights) - before(weights * t))
    return segment_sum(pairs, rays, ray_count) + self_term


@torch.no_grad()
def field_until_opaque(field: RadianceField, positions: torch.Tensor, rays: torch.Tensor, columns: torch.Tensor,
                       ray_count: int, steps: int, step_size: float, early_stop: float = EARLY_STOP,
                       block: int = 8) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Field values of packed samples front to back in blocks of ``block`` steps, each block only on the rays
    whose transmittance is still above ``early_stop`` (early ray termination without gradients: the interior
    and far side of a solid object are never evaluated). Returns the evaluated samples' mask [S], their
    density [S'] and albedo [S', 3], in packed order."""
    evaluated = torch.zeros_like(rays, dtype=torch.bool)
    density = positions.new_zeros(rays.shape[0])
    albedo = positions.new_zeros(rays.shape[0], 3)
    optical_depth = positions.new_zeros(ray_count)
    limit = -math.log(early_stop)
    for start in range(0, steps, block):
        chosen = torch.nonzero((columns >= start) & (columns < start + block) & (optical_depth[rays] < limit))[:, 0]
        if chosen.numel() == 0:
            continue
        density[chosen], albedo[chosen] = field(positions[chosen])
        evaluated[chosen] = True
        optical_depth.index_add_(0, rays[chosen], density[chosen] * step_size)
    return evaluated, density[evaluated], albedo[evaluated]


def lambertian(normals: torch.Tensor, light_directions: torch.Tensor, ambient: torch.Tensor) -> torch.Tensor:
    """Shading factor [S]: ambient + (1 - ambient) * max(0, n . l)."""
    return ambient + (1 - ambient) * (normals * light_directions).sum(dim=-1).clamp(min=0.0)


def segment_sum(values: torch.Tensor, rays: torch.Tensor, ray_count: int) -> torch.Tensor:
    """Per-ray sums [R, ...] of packed values [S, ...]."""
    return values.new_zeros(ray_count, *values.shape[1:]).index_add(0, rays, values)


# ---- rendering ----------------------------------------------------------------------------------------


_nerfacc_state: dict[str, bool] = {}


def nerfacc_available() -> bool:
    """Whether nerfacc and its CUDA ops load (nerfacc JIT-compiles them on first use; cached afterwards)."""
    if "ok" not in _nerfacc_state:
        try:
            from nerfacc.cuda._backend import _C

            _nerfacc_state["ok"] = _C is not None
        except Exception as error:  # noqa: BLE001 - missing package, toolkit or failed build
            message = f"dreamdistill: nerfacc CUDA ops unavailable ({error!r:.200}); using our own marching"
            warnings.warn(message, stacklevel=2)
            _nerfacc_state["ok"] = False
    return _nerfacc_state["ok"]


def _use_nerfacc(origins: torch.Tensor, occupancy: OccupancyGrid | None) -> bool:
    return origins.is_cuda and occupancy is not None and nerfacc_available()


def render_rays(
    field: RadianceField,
    origins: torch.Tensor,
    directions: torch.Tensor,
    background: torch.Tensor | None = None,
    shading: Shading = "albedo",
    light_positions: torch.Tensor | None = None,
    ambient: torch.Tensor | None = None,
    occupancy: OccupancyGrid | None = None,
    step_size: float = DEFAULT_STEP_SIZE,
    stratified: bool = False,
    generator: torch.Generator | None = None,
    return_normals: bool = False,
    normal_weight_threshold: float = 1e-4,
    prune: bool = True,
    return_distortion: bool = False,
    distortion_window: int = 0,
    return_eikonal: bool = False,
) -> RayOutput:
    """Render rays (origins [R, 3], unit directions [R, 3]); ``background`` [R, 3] (default black).

    ``prune``: while autograd records, evaluate the field only at :func:`contributing_samples`; without
    autograd, only until each ray is opaque (:func:`field_until_opaque`) (our marching).
    ``return_distortion``: also the per-ray :func:`distortion_penalty` (over pairs at most ``distortion_window``
    steps apart; 0: all pairs).
    ``return_eikonal``: also the per-ray :func:`eikonal_penalty` (needs ``field.logit_gradient``).

    ``light_positions`` [R, 3] and ``ambient`` [R] are needed by the lit shadings.
    """
    if shading not in SHADINGS:
        raise ValueError(f"shading must be one of {SHADINGS}, got {shading!r}")
    lit = shading != "albedo"
    if lit and (light_positions is None or ambient is None):
        raise ValueError(f"shading {shading!r} needs light_positions and ambient")
    ray_count = origins.shape[0]
    if _use_nerfacc(origins, occupancy):
        assert occupancy is not None
        rays, t, density, albedo, weights, positions = _sample_nerfacc(
            field, origins, directions, occupancy, step_size, stratified
        )
        columns, steps = positions_along_rays(rays, ray_count)
    else:
        rays, t, columns, steps = march(origins, directions, step_size, occupancy, stratified, generator)
        positions = origins[rays] + t[:, None] * directions[rays]  # [S, 3]
        if torch.is_grad_enabled() and prune:
            with torch.no_grad():
                keep = contributing_samples(field.density(positions), rays, columns, ray_count, steps, step_size)
            rays, t, columns, positions = rays[keep], t[keep], columns[keep], positions[keep]
        if not torch.is_grad_enabled() and prune:
            keep, density, albedo = field_until_opaque(field, positions, rays, columns, ray_count, steps, step_size)
            rays, t, columns, positions = rays[keep], t[keep], columns[keep], positions[keep]
        else:
            density, albedo = field(positions)  # [S], [S, 3]
        sigma_delta = density * step_size
        weights = exclusive_transmittance(sigma_delta, rays, columns, ray_count, steps) * (
            1 - torch.exp(-sigma_delta)
        )  # [S]

    normals = eikonal = None
    if lit or return_normals or return_eikonal:
        normals = torch.zeros_like(positions)
        visible = torch.nonzero(weights.detach() > normal_weight_threshold)[:, 0]
        gradient_norm = torch.ones_like(weights)
        if visible.numel() and return_eikonal:
            gradient = field.logit_gradient(positions[visible])  # type: ignore[attr-defined]
            normals = normals.index_put((visible,), normals_from_gradient(gradient))
            gradient_norm = gradient_norm.index_put((visible,), gradient.norm(dim=-1))
        elif visible.numel():
            normals = normals.index_put((visible,), field.normals(positions[visible]))
        if return_eikonal:
            eikonal = segment_sum(eikonal_penalty(weights, gradient_norm), rays, ray_count)
    if lit:
        assert normals is not None and light_positions is not None and ambient is not None
        to_light = nn.functional.normalize(light_positions[rays] - positions, dim=-1)
        shade = lambertian(normals, to_light, ambient[rays])[:, None]  # [S, 1]
        if shading == "textureless":
            rgb = shade.expand(-1, 3)
        else:
            rgb = shade * (albedo.detach() if shading == "geometry" else albedo)
    else:
        rgb = albedo

    opacity = segment_sum(weights, rays, ray_count)  # [R]
    color = segment_sum(weights[:, None] * rgb, rays, ray_count)  # [R, 3]
    depth = segment_sum(weights * t, rays, ray_count)  # [R]
    normal = segment_sum(weights[:, None] * normals, rays, ray_count) if normals is not None else None
    orientation = None
    if return_normals:
        orientation = segment_sum(orientation_penalty(weights, normals, directions[rays]), rays, ray_count)
    distortion = None
    if return_distortion:
        distortion = distortion_penalty(weights, t, rays, columns, ray_count, steps, step_size, distortion_window)
    if background is not None:
        color = color + (1 - opacity)[:, None] * background
    return RayOutput(color, opacity, depth, normal, int(rays.numel()), orientation, distortion, eikonal)


def eikonal_penalty(weights: torch.Tensor, gradient_norm: torch.Tensor) -> torch.Tensor:
    """Per sample sg(w_i)·(|∇d_i| − 1)² (the eikonal term of IGR / NeuS / VolSDF, weighted by the render weights
    so it holds where the surface is seen; summed per ray by the caller)."""
    return weights.detach() * (gradient_norm - 1).square()


def orientation_penalty(weights: torch.Tensor, normals: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Per sample sg(w_i)·max(0, n_i·d)² (DreamFusion / Ref-NeRF orientation loss; summed per ray by the caller):
    normals facing away from the camera are penalised, with the weights detached so the loss cannot fall by
    lowering opacity, and per sample so opposite normals along a ray cannot cancel."""
    return weights.detach() * (normals * directions).sum(dim=-1).clamp(min=0.0).pow(2)


def _sample_nerfacc(
    field: RadianceField,
    origins: torch.Tensor,
    directions: torch.Tensor,
    occupancy: OccupancyGrid,
    step_size: float,
    stratified: bool,
) -> tuple[torch.Tensor, ...]:
    """nerfacc marching with our occupancy grid and early ray termination; weights by nerfacc's scan."""
    import nerfacc

    estimator = occupancy.nerfacc_estimator()
    near, far = ray_box_intersection(origins, directions)

    def sigma_fn(t_starts: torch.Tensor, t_ends: torch.Tensor, ray_indices: torch.Tensor) -> torch.Tensor:
        t_mid = (t_starts + t_ends)[:, None] / 2
        return field.density(origins[ray_indices] + t_mid * directions[ray_indices])

    rays, t_starts, t_ends = estimator.sampling(
        origins,
        directions,
        sigma_fn=sigma_fn,
        t_min=near,
        t_max=far,
        render_step_size=step_size,
        stratified=stratified,
    )
    rays = rays.long()
    t = (t_starts + t_ends) / 2
    positions = origins[rays] + t[:, None] * directions[rays]
    density, albedo = field(positions)
    weights, _, _ = nerfacc.render_weight_from_density(
        t_starts, t_ends, density, ray_indices=rays, n_rays=origins.shape[0]
    )
    return rays, t, density, albedo, weights, positions


def average_pool(out: RenderOutput, factor: int) -> RenderOutput:
    """A render with every image averaged over ``factor`` × ``factor`` pixel blocks (box-filter downsampling)."""
    def pool(image: torch.Tensor | None) -> torch.Tensor | None:
        return None if image is None else nn.functional.avg_pool2d(image, factor)

    return RenderOutput(pool(out.image), pool(out.opacity), pool(out.depth), pool(out.normal), out.samples,
                        pool(out.orientation), pool(out.distortion), pool(out.eikonal))


def render(
    field: RadianceField,
    background: nn.Module | torch.Tensor | None,
    cameras: Cameras,
    resolution: int,
    shading: Shading = "albedo",
    light: Light | None = None,
    occupancy: OccupancyGrid | None = None,
    step_size: float = DEFAULT_STEP_SIZE,
    stratified: bool | None = None,
    generator: torch.Generator | None = None,
    return_normals: bool = False,
    chunk_rays: int = 1 << 14,
    prune: bool = True,
    return_distortion: bool = False,
    distortion_window: int = 0,
    pixel_jitter: bool = False,
    supersample: int = 1,
    return_eikonal: bool = False,
) -> RenderOutput:
    """Render ``cameras`` at ``resolution`` x ``resolution``.

    ``background`` is a module mapping directions [B, H, W, 3] to colours (``scene.background.Background``),
    a colour tensor [3], or None (black). ``stratified`` jitters samples (default: while ``field`` trains).
    Lit shadings use ``light`` (default: headlights). Rays are rendered in chunks of ``chunk_rays``.
    ``prune``: skip samples that cannot matter while training (see :func:`render_rays`).
    ``return_distortion``: also the per-ray distortion (:func:`distortion_penalty`, over pairs at most
    ``distortion_window`` steps apart; 0: all pairs). ``return_eikonal``: also the per-ray eikonal penalty.
    ``pixel_jitter``: each ray through a random point of its pixel (drawn from ``generator``) instead of the
    centre. ``supersample`` s > 1: render at s × ``resolution`` and average s × s blocks (:func:`average_pool`),
    as the toy world's ray tracer renders its images (2 × 2).
    """
    if supersample > 1:
        fine = render(field, background, cameras, resolution * supersample, shading=shading, light=light,
                      occupancy=occupancy, step_size=step_size, stratified=stratified, generator=generator,
                      return_normals=return_normals, chunk_rays=chunk_rays, prune=prune,
                      return_distortion=return_distortion, distortion_window=distortion_window,
                      pixel_jitter=pixel_jitter, return_eikonal=return_eikonal)
        return average_pool(fine, supersample)
    device = next(iter(field.parameters())).device if isinstance(field, nn.Module) else cameras.azimuth.device
    cameras = cameras.to(device)
    batch = len(cameras)
    offsets = None
    if pixel_jitter:
        offsets = torch.rand(batch, resolution, resolution, 2, generator=generator).to(device)
    origins, directions = generate_rays(cameras, resolution, offsets)  # [B, H, W, 3] each
    if isinstance(background, nn.Module):
        background_colors = background(directions).reshape(-1, 3)
    elif background is not None:
        background_colors = background.to(device).expand(batch * resolution * resolution, 3)
    else:
        background_colors = None
    if stratified is None:
        stratified = bool(getattr(field, "training", False))
    light_positions = ambient = None
    if shading != "albedo":
        light = light if light is not None else headlights(cameras)
        pixels = resolution * resolution
        light_positions = light.position.to(device).repeat_interleave(pixels, dim=0)  # [R, 3]
        ambient = light.ambient.to(device).repeat_interleave(pixels, dim=0)  # [R]
    origins, directions = origins.reshape(-1, 3), directions.reshape(-1, 3)
    parts: list[RayOutput] = []
    for start in range(0, origins.shape[0], chunk_rays):
        part = slice(start, start + chunk_rays)
        parts.append(
            render_rays(
                field,
                origins[part],
                directions[part],
                background_colors[part] if background_colors is not None else None,
                shading,
                light_positions[part] if light_positions is not None else None,
                ambient[part] if ambient is not None else None,
                occupancy,
                step_size,
                stratified,
                generator,
                return_normals,
                prune=prune,
                return_distortion=return_distortion,
                distortion_window=distortion_window,
                return_eikonal=return_eikonal,
            )
        )

    def image(values: list[torch.Tensor], channels: int) -> torch.Tensor:
        flat = torch.cat(values).reshape(batch, resolution, resolution, channels)
        return flat.permute(0, 3, 1, 2).contiguous()

    normals = [p.normal for p in parts if p.normal is not None]
    orientation = [p.orientation[:, None] for p in parts if p.orientation is not None]
    distortion = [p.distortion[:, None] for p in parts if p.distortion is not None]
    eikonal = [p.eikonal[:, None] for p in parts if p.eikonal is not None]
    return RenderOutput(
        image=image([p.color for p in parts], 3),
        opacity=image([p.opacity[:, None] for p in parts], 1),
        depth=image([p.depth[:, None] for p in parts], 1),
        normal=image(normals, 3) if len(normals) == len(parts) else None,
        samples=sum(p.samples for p in parts),
        orientation=image(orientation, 1) if len(orientation) == len(parts) else None,
        distortion=image(distortion, 1) if len(distortion) == len(parts) else None,
        eikonal=image(eikonal, 1) if len(eikonal) == len(parts) else None,
    )
