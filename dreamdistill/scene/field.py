"""The radiance field: hash grid -> small MLP -> density and albedo over the scene box [-1, 1]^3.

Two geometries (``Field.geometry``):
- ``density`` (NeRF): the MLP's first output is a pre-activation density; it starts as a centred blob (a bias
  added before the activation) so optimisation does not begin from empty space;
- ``sdf`` (VolSDF, Yariv et al. 2021, Eq. 2-3): the first output is a signed distance d (negative inside; a
  sphere of radius ``blob_radius`` added as its initial value) and density = Ψ_β(−d)/β, the Laplace CDF, so the
  inside of every part is equally opaque however thin the part is, and the surface is the level set d = 0
  (density 1/(2β)). β (``Field.beta``) is annealed by the run; an eikonal term keeps |∇d| ≈ 1.
Albedo is a sigmoid. Normals point outwards (along −∇density, i.e. +∇d), by finite differences (a 4-point
tetrahedron stencil) of the density logit (pre-activation density, or −d) or analytically with autograd.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal

import torch
from torch import nn

from dreamdistill.scene.hashgrid import Backend, HashGrid

DensityActivation = Literal["trunc_exp", "softplus"]
Geometry = Literal["density", "sdf"]
NormalMethod = Literal["finite_difference", "analytic"]
ScalarField = Callable[[torch.Tensor], torch.Tensor]

SCENE_BOUND = 1.0
"""The scene box is [-SCENE_BOUND, SCENE_BOUND]^3."""


class _TruncExp(torch.autograd.Function):
    """exp(x) with the gradient computed from exp(min(x, 15)) (stable for large pre-activations)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return torch.exp(x)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return grad * torch.exp(x.clamp(max=15.0))


def trunc_exp(x: torch.Tensor) -> torch.Tensor:
    """Truncated exponential density activation (Instant-NGP); forward is exp(min(x, 30))."""
    return _TruncExp.apply(x.clamp(max=30.0))


def density_activation(raw: torch.Tensor, kind: DensityActivation) -> torch.Tensor:
    """Non-negative density from the pre-activation ``raw`` [...]."""
    if kind == "trunc_exp":
        return trunc_exp(raw)
    return nn.functional.softplus(raw)


def blob_bias(x: torch.Tensor, density: float, radius: float) -> torch.Tensor:
    """Centred density blob added before the activation: density * (1 - |x| / radius), [...]."""
    return density * (1.0 - x.norm(dim=-1) / radius)


def laplace_density(sdf: torch.Tensor, beta: float | torch.Tensor) -> torch.Tensor:
    """VolSDF density σ = Ψ_β(−d)/β (Eq. 2-3): Ψ_β the CDF of a zero-mean Laplace distribution of scale β;
    1/β deep inside, 1/(2β) on the surface d = 0, (1/2β)·exp(−d/β) outside."""
    half = 0.5 * torch.exp(-sdf.abs() / beta)
    return torch.where(sdf > 0, half, 1.0 - half) / beta


def sphere_sdf(x: torch.Tensor, radius: float) -> torch.Tensor:
    """Signed distance [...] of x [..., 3] to a centred sphere: |x| − radius (the SDF field's initial shape)."""
    return x.norm(dim=-1) - radius


def to_grid_coordinates(x: torch.Tensor) -> torch.Tensor:
    """World [-1, 1]^3 -> hash-grid input [0, 1]^3."""
    return (x / SCENE_BOUND + 1.0) * 0.5


def level_mask(levels: int, features: int, active: float) -> torch.Tensor:
    """Weights [levels * features] of a level-major encoding for coarse-to-fine training: levels below ``active``
    count fully, the next one fractionally (a smooth unmasking), the rest are zero."""
    weight = (active - torch.arange(levels, dtype=torch.float32)).clamp(0, 1)
    return weight.repeat_interleave(features)


class Field(nn.Module):
    """``forward(x [N, 3] world) -> (density [N], albedo [N, 3])``; ``normals(x) -> [N, 3]`` unit vectors."""

    def __init__(
        self,
        grid: HashGrid | None = None,
        hidden_dim: int = 64,
        hidden_layers: int = 2,
        activation: DensityActivation = "trunc_exp",
        blob_density: float = 10.0,
        blob_radius: float = 0.5,
        normal_method: NormalMethod = "finite_difference",
        normal_eps: float = 1e-2,
        backend: Backend = "auto",
        geometry: Geometry = "density",
        beta: float = 0.05,
    ) -> None:
        super().__init__()
        self.grid = grid if grid is not None else HashGrid(backend=backend)
        layers: list[nn.Module] = []
        width = self.grid.output_dim
        for _ in range(hidden_layers):
            layers += [nn.Linear(width, hidden_dim), nn.ReLU(inplace=True)]
            width = hidden_dim
        layers.append(nn.Linear(width, 4))
        self.mlp = nn.Sequential(*layers)
        self.activation: DensityActivation = activation
        self.blob_density = blob_density
        self.blob_radius = blob_radius
        self.normal_method: NormalMethod = normal_method
        self.normal_eps = normal_eps
        self.active_levels: float | None = None
        """Coarse-to-fine: hash-grid levels in use (None: all); see :func:`level_mask`."""
        self.geometry: Geometry = geometry
        if geometry == "sdf":
            self.register_buffer("beta", torch.tensor(float(beta)))
            """Laplace scale of the density (world units; annealed by the run, saved with the field)."""
            with torch.no_grad():  # start from the sphere itself, not one grown or shrunk at random
                self.mlp[-1].weight[0].zero_()
                self.mlp[-1].bias[0] = 0.0

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """MLP outputs [N, 4]: the density logit (:meth:`density_logit`: pre-activation density with the blob
        bias, or −d with d the signed distance, initial sphere included) and albedo logits."""
        features = self.grid(to_grid_coordinates(x))
        levels = len(self.grid.geometry.scales)
        if self.active_levels is not None and self.active_levels < levels:
            features = features * level_mask(levels, self.grid.geometry.features, self.active_levels).to(features)
        out = self.mlp(features)  # [N, 4]
        logit = out[:, :1]
        if self.geometry == "sdf":
            logit = logit - sphere_sdf(x, self.blob_radius)[:, None]
        elif self.blob_density:
            logit = logit + blob_bias(x, self.blob_density, self.blob_radius)[:, None]
        return torch.cat([logit, out[:, 1:]], dim=-1)

    def activate(self, logit: torch.Tensor) -> torch.Tensor:
        """Density from the density logit [...]: the activation, or the Laplace density of d = −logit."""
        if self.geometry == "sdf":
            return laplace_density(-logit, self.beta)
        return density_activation(logit, self.activation)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raw = self.raw(x)
        return self.activate(raw[:, 0]), torch.sigmoid(raw[:, 1:])

    def density_logit(self, x: torch.Tensor) -> torch.Tensor:
        """Density logit [N], monotone in density: the pre-activation density, or −d for the sdf geometry."""
        return self.raw(x)[:, 0]

    def density(self, x: torch.Tensor) -> torch.Tensor:
        """Density [N] at world points x [N, 3]."""
        return self.activate(self.density_logit(x))

    def surface_density(self) -> float | None:
        """The density on the surface: 1/(2β) at d = 0 for the sdf geometry; None (no such level) otherwise."""
        return 0.5 / float(self.beta) if self.geometry == "sdf" else None

    def logit_gradient(self, x: torch.Tensor) -> torch.Tensor:
        """∇(density logit) [N, 3] at x [N, 3] (−∇d for the sdf geometry), differentiable w.r.t. the field."""
        if self.normal_method == "analytic":
            return analytic_gradient(self.density_logit, x)
        return finite_difference_gradient(self.density_logit, x, self.normal_eps)

    def normals(self, x: torch.Tensor) -> torch.Tensor:
        """Outward unit normals [N, 3] = -grad(density) / |grad(density)|, differentiable w.r.t. the field."""
        return normals_from_gradient(self.logit_gradient(x))


def normals_from_gradient(gradient: torch.Tensor) -> torch.Tensor:
    """Outward unit normals [N, 3] from the density logit's gradient [N, 3] (density falls outwards)."""
    return -nn.functional.normalize(gradient, dim=-1, eps=1e-12)


TETRAHEDRON = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0], [-1.0, 1.0, -1.0], [1.0, 1.0, 1.0]])
"""Finite-difference stencil: sum_k v_k = 0 and sum_k v_k v_k^T = 4 I, so 4 evaluations give the gradient
exactly for linear fields (error eps * mixed second derivatives; central differences need 6 evaluations)."""


def finite_difference_gradient(fn: ScalarField, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Gradient [N, 3] of a scalar field ``fn(x [M, 3]) -> [M]`` at x [N, 3] by the tetrahedron stencil:
    sum_k v_k fn(x + eps v_k) / (4 eps)."""
    stencil = TETRAHEDRON.to(x)  # [4, 3]
    values = fn((x[:, None, :] + eps * stencil).reshape(-1, 3)).reshape(-1, 4)  # [N, 4]
    return values @ stencil / (4 * eps)


def analytic_gradient(fn: ScalarField, x: torch.Tensor) -> torch.Tensor:
    """Autograd gradient [N, 3] of ``fn(x) -> [N]``. Training through it needs double backward, which only
    the ``torch`` hash-grid backend supports; with the kernels use it without grad (e.g. for export)."""
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (gradient,) = torch.autograd.grad(fn(x).sum(), x, create_graph=create_graph)
    return gradient
