"""Multi-resolution hash-grid encoding (Instant-NGP) with tiny-cuda-nn's exact conventions.

One ``nn.Module``, :class:`HashGrid`, with four backends computing the same function:

- ``cpu``: our C++ kernel (``cuda_ext/hashgrid``), parallel over points;
- ``cuda``: our CUDA kernel (one thread per point and level);
- ``torch``: :func:`hash_grid_reference`, pure PyTorch, the oracle in tests (any float dtype);
- ``tcnn``: tiny-cuda-nn's ``HashGrid`` encoding, used only when ``tinycudann`` is importable.

``backend="auto"`` picks by device: ``cpu`` or ``cuda`` kernel when it builds, else ``tcnn`` on CUDA if
present, else ``torch``. Parameters are one flat vector in tiny-cuda-nn's layout (level, table row, feature),
so they can be copied between backends and to/from tiny-cuda-nn. See DESIGN.md, "The hash grid".
"""

from __future__ import annotations

import contextlib
import functools
import math
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from torch.autograd.function import once_differentiable

from dreamdistill.scene.kernel import kernel_has_cuda, load_kernel

Backend = Literal["auto", "cpu", "cuda", "torch", "tcnn"]

PRIMES = (1, 2654435761, 805459861)
"""CoherentPrime hash factors (x, y, z)."""
UINT32_MASK = 0xFFFFFFFF
INIT_RANGE = 1e-4
"""Parameters start uniform in (-INIT_RANGE, INIT_RANGE), as in tiny-cuda-nn."""


KernelArgs = tuple[list[int], list[int], list[int], list[float], int]
"""(offsets, sizes, resolutions, scales, features): the geometry as the kernel ops take it."""


@dataclass(frozen=True)
class GridGeometry:
    """Per-level layout of a hash grid (all tuples have one entry per level)."""

    features: int
    """Features per level (F)."""
    log2_table_size: int
    """log2 of the largest per-level table (T)."""
    base_resolution: int
    """Coarsest resolution N_min."""
    per_level_scale: float
    """Growth factor b between levels."""
    scales: tuple[float, ...]
    """N_min * b^l - 1, in float32 as tiny-cuda-nn computes it."""
    resolutions: tuple[int, ...]
    """ceil(scale) + 1 grid vertices per axis."""
    sizes: tuple[int, ...]
    """Table rows: min(next multiple of 8 of resolution^3, 2^T)."""
    offsets: tuple[int, ...]
    """First table row of each level."""

    @property
    def levels(self) -> int:
        return len(self.scales)

    @property
    def output_dim(self) -> int:
        return self.levels * self.features

    @property
    def parameter_count(self) -> int:
        return (self.offsets[-1] + self.sizes[-1]) * self.features

    def dense(self, level: int) -> bool:
        """Whether a level stores every vertex (else it is hashed)."""
        return self.resolutions[level] ** 3 <= self.sizes[level]

    def kernel_args(self) -> KernelArgs:
        """(offsets, sizes, resolutions, scales, features) as the C++ ops take them."""
        return list(self.offsets), list(self.sizes), list(self.resolutions), list(self.scales), self.features


def per_level_scale_for(levels: int, base_resolution: int, max_resolution: int) -> float:
    """The growth factor b that takes N_min to ``max_resolution`` over ``levels`` levels."""
    if levels == 1:
        return 1.0
    return math.exp((math.log(max_resolution) - math.log(base_resolution)) / (levels - 1))


def grid_geometry(
    levels: int, features: int, log2_table_size: int, base_resolution: int, per_level_scale: float
) -> GridGeometry:
    """Per-level scales, resolutions, table sizes and offsets (tiny-cuda-nn's formulas, float32 scales)."""
    if features not in (1, 2, 4, 8):
        raise ValueError(f"features per level must be 1, 2, 4 or 8, got {features}")
    if not 3 <= log2_table_size <= 30:
        raise ValueError(f"log2_table_size must be in [3, 30], got {log2_table_size}")
    if not 1 <= levels <= 32:
        raise ValueError(f"levels must be in [1, 32], got {levels}")
    f32 = torch.float32
    log2_scale = torch.log2(torch.tensor(per_level_scale, dtype=f32))
    scales, resolutions, sizes, offsets = [], [], [], []
    offset = 0
    for level in range(levels):  # float32 throughout, like exp2f(level * log2(b)) * N_min - 1.0f
        scale = torch.exp2(torch.tensor(level, dtype=f32) * log2_scale) * torch.tensor(base_resolution, dtype=f32)
        scale = scale - torch.tensor(1.0, dtype=f32)
        resolution = int(torch.ceil(scale)) + 1
        size = min(-(-(resolution**3) // 8) * 8, 2**log2_table_size)
        scales.append(float(scale))
        resolutions.append(resolution)
        sizes.append(size)
        offsets.append(offset)
        offset += size
    return GridGeometry(
        features,
        log2_table_size,
        base_resolution,
        float(per_level_scale),
        tuple(scales),
        tuple(resolutions),
        tuple(sizes),
        tuple(offsets),
    )


# ---- the PyTorch reference ---------------------------------------------------------------------------


def _mul_u32(values: torch.Tensor, factor: int) -> torch.Tensor:
    """(values * factor) mod 2^32 for int64 tensors holding uint32 values, without int64 overflow."""
    high, low = factor >> 16, factor & 0xFFFF
    return (values * low + (((values * high) & 0xFFFF) << 16)) & UINT32_MASK


def table_index(cell: torch.Tensor, resolution: int, size: int) -> torch.Tensor:
    """Table row of grid vertices ``cell`` [..., 3] (int64 holding uint32): dense row-major or hashed, mod size."""
    x, y, z = cell.unbind(-1)
    if resolution**3 <= size:
        index = (x + y * resolution + z * ((resolution * resolution) & UINT32_MASK)) & UINT32_MASK
    else:
        index = x ^ _mul_u32(y, PRIMES[1]) ^ _mul_u32(z, PRIMES[2])
    return index % size


def grid_fraction(x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Fraction in the cell [..., 3] (differentiable) and the cell [..., 3] as int64 holding uint32.

    position = x * scale + 0.5 with one rounding for float32 inputs (the product is exact in float64).
    """
    if x.dtype == torch.float32:
        position = (x.double() * scale + 0.5).float()
    else:
        position = x * scale + 0.5
    cell = torch.floor(position).detach()
    return position - cell, cell.long() & UINT32_MASK


CORNER_OFFSETS = torch.tensor([[(c >> d) & 1 for d in range(3)] for c in range(8)])  # [8, 3]


def hash_grid_reference(x: torch.Tensor, params: torch.Tensor, geometry: GridGeometry) -> torch.Tensor:
    """Encode positions ``x`` [N, 3] (in [0, 1]^3) with flat ``params`` [P]: returns [N, levels * features].

    Pure PyTorch and differentiable (twice) in ``x`` and ``params``; works in float32 and float64.
    """
    offsets = CORNER_OFFSETS.to(x.device)
    bits = offsets.to(x.dtype)  # [8, 3]
    rows, weights = [], []
    for level in range(geometry.levels):
        fraction, cell = grid_fraction(x, geometry.scales[level])  # [N, 3], [N, 3]
        corners = (cell[:, None, :] + offsets) & UINT32_MASK  # [N, 8, 3]
        level_rows = table_index(corners, geometry.resolutions[level], geometry.sizes[level])  # [N, 8]
        rows.append(level_rows + geometry.offsets[level])
        # weight of corner c: product over axes of (fraction if bit set else 1 - fraction), left to right
        axis_weights = bits * fraction[:, None, :] + (1 - bits) * (1 - fraction[:, None, :])  # [N, 8, 3]
        weights.append((axis_weights[..., 0] * axis_weights[..., 1]) * axis_weights[..., 2])  # [N, 8]
    values = params.view(-1, geometry.features)[torch.stack(rows, dim=1)]  # [N, L, 8, F]
    out = (torch.stack(weights, dim=1)[..., None] * values).sum(dim=2)  # [N, L, F]
    return out.reshape(x.shape[0], geometry.output_dim)


# ---- our kernels --------------------------------------------------------------------------------------


# The kernel as torch.library ops (namespace "dreamdistill"), defined with the low-level Library API rather than
# @custom_op: the same schema, fake implementation and autograd formula for torch.compile, without custom_op's eager
# wrapper, which imports torch._dynamo on the first call (seconds on a busy CPU) and costs a little on every call.
_LIBRARY = torch.library.Library("dreamdistill", "DEF")
_LIBRARY.define("hashgrid_encode(Tensor x, Tensor params, int[] offsets, int[] sizes, int[] resolutions, "
                "float[] scales, int features) -> Tensor")
_LIBRARY.define("hashgrid_encode_backward(Tensor x, Tensor params, Tensor grad_out, int[] offsets, int[] sizes, "
                "int[] resolutions, float[] scales, int features, bool need_params, bool need_x) -> (Tensor, Tensor)")


def _encode_impl(x: torch.Tensor, params: torch.Tensor, offsets: list[int], sizes: list[int],
                 resolutions: list[int], scales: list[float], features: int) -> torch.Tensor:
    """x [N, 3] float32, params [P] float32 -> [N, L * F]; the CUDA stream is read when the op runs, never baked
    into a traced graph (so CUDA-graph capture uses its own stream)."""
    with _device_scope(x):
        return load_kernel().forward(x, params, offsets, sizes, resolutions, scales, features, _stream(x))


def _encode_backward_impl(x: torch.Tensor, params: torch.Tensor, grad_out: torch.Tensor, offsets: list[int],
                          sizes: list[int], resolutions: list[int], scales: list[float], features: int,
                          need_params: bool, need_x: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(d loss / d params [P], d loss / d x [N, 3]); a gradient not asked for comes back empty ([0] / [0, 3])."""
    with _device_scope(x):
        grad_params, grad_x = load_kernel().backward(x, params, grad_out, offsets, sizes, resolutions, scales,
                                                     features, need_params, need_x, _stream(x))
    return (grad_params if need_params else params.new_empty(0)), (grad_x if need_x else x.new_empty((0, 3)))


for _key in ("CPU", "CUDA"):
    _LIBRARY.impl("hashgrid_encode", _encode_impl, _key)
    _LIBRARY.impl("hashgrid_encode_backward", _encode_backward_impl, _key)


@torch.library.register_fake("dreamdistill::hashgrid_encode", lib=_LIBRARY)
def _hashgrid_encode_fake(x, params, offsets, sizes, resolutions, scales, features):
    return x.new_empty((x.shape[0], len(scales) * features))


@torch.library.register_fake("dreamdistill::hashgrid_encode_backward", lib=_LIBRARY)
def _hashgrid_encode_backward_fake(x, params, grad_out, offsets, sizes, resolutions, scales, features, need_params,
                                   need_x):
    return params.new_empty(params.shape if need_params else (0,)), x.new_empty(x.shape if need_x else (0, 3))


def _encode_setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
    x, params, *geometry = inputs
    ctx.save_for_backward(x, params)
    ctx.geometry = geometry


def _encode_backward(ctx: Any, grad_out: torch.Tensor) -> tuple:
    """First derivatives only (the kernels have no double backward; the ``torch`` backend has)."""
    x, params = ctx.saved_tensors
    need_x, need_params = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
    grad_params, grad_x = torch.ops.dreamdistill.hashgrid_encode_backward(
        x, params, grad_out.float().contiguous(), *ctx.geometry, need_params, need_x)
    return (grad_x if need_x else None), (grad_params if need_params else None), None, None, None, None, None


torch.library.register_autograd("dreamdistill::hashgrid_encode", _encode_backward, setup_context=_encode_setup_context,
                                lib=_LIBRARY)
hashgrid_encode = torch.ops.dreamdistill.hashgrid_encode.default
"""Our C++/CUDA kernel as a ``torch.library`` op: ``torch.compile`` traces through it (fake implementation above)
without a graph break; first derivatives in x and params."""
hashgrid_encode_backward = torch.ops.dreamdistill.hashgrid_encode_backward.default


class _EagerKernelEncoding(torch.autograd.Function):
    """The same kernel calls as :data:`hashgrid_encode` for eager mode, without the Python-op dispatch (about
    0.1 ms less per forward and backward on a CPU)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, params: torch.Tensor, kernel_args: KernelArgs) -> torch.Tensor:
        ctx.save_for_backward(x, params)
        ctx.kernel_args = kernel_args
        return _encode_impl(x, params, *kernel_args)

    @staticmethod
    @once_differentiable
    def backward(ctx: Any, grad_out: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None, None]:
        x, params = ctx.saved_tensors
        need_x, need_params = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        grad_params, grad_x = _encode_backward_impl(x, params, grad_out.float().contiguous(), *ctx.kernel_args,
                                                    need_params, need_x)
        return (grad_x if need_x else None), (grad_params if need_params else None), None


def _stream(x: torch.Tensor) -> int:
    return torch.cuda.current_stream(x.device).cuda_stream if x.is_cuda else 0


def _device_scope(x: torch.Tensor) -> Any:
    return torch.cuda.device(x.device) if x.is_cuda else contextlib.nullcontext()


@functools.cache
def tcnn_available() -> bool:
    """Whether tiny-cuda-nn's PyTorch bindings import."""
    try:
        import tinycudann  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or a broken CUDA install
        return False
    return True


# ---- the module ---------------------------------------------------------------------------------------


class HashGrid(nn.Module):
    """Hash-grid encoding of points in [0, 1]^3: ``forward(x [..., 3]) -> [..., levels * features_per_level]``.

    Give either ``per_level_scale`` (b) or ``max_resolution`` (b is then chosen to reach it); with neither,
    ``max_resolution`` is 2048.
    """

    def __init__(
        self,
        levels: int = 16,
        features_per_level: int = 2,
        log2_table_size: int = 19,
        base_resolution: int = 16,
        per_level_scale: float | None = None,
        max_resolution: int | None = None,
        backend: Backend = "auto",
    ) -> None:
        super().__init__()
        if per_level_scale is not None and max_resolution is not None:
            raise ValueError("give per_level_scale or max_resolution, not both")
        if per_level_scale is None:
            per_level_scale = per_level_scale_for(levels, base_resolution, max_resolution or 2048)
        self.geometry = grid_geometry(levels, features_per_level, log2_table_size, base_resolution, per_level_scale)
        self.backend: Backend = backend
        self.params = nn.Parameter(torch.empty(self.geometry.parameter_count))
        self._tcnn: Any = None
        self._kernel_args = self.geometry.kernel_args()  # built once: no per-call list building in forward
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.params.uniform_(-INIT_RANGE, INIT_RANGE)

    @property
    def output_dim(self) -> int:
        return self.geometry.output_dim

    def resolve_backend(self, device: torch.device) -> Literal["cpu", "cuda", "torch", "tcnn"]:
        """The backend that ``forward`` uses for inputs on ``device``."""
        float32 = self.params.dtype == torch.float32
        if self.backend == "torch":
            return "torch"
        if self.backend in ("cpu", "cuda"):
            if device.type != self.backend:
                raise ValueError(f"backend {self.backend!r} cannot run on {device}")
            if load_kernel() is None or (self.backend == "cuda" and not kernel_has_cuda()):
                raise RuntimeError(f"the {self.backend} hash-grid kernel could not be built; use backend='torch'")
            if not float32:
                raise ValueError("the hash-grid kernels need float32 parameters")
            return self.backend
        if self.backend == "tcnn":
            if device.type != "cuda" or not tcnn_available():
                raise RuntimeError("backend 'tcnn' needs a CUDA device and tinycudann")
            return "tcnn"
        if float32 and device.type == "cpu" and load_kernel() is not None:
            return "cpu"
        if float32 and device.type == "cuda" and kernel_has_cuda():
            return "cuda"
        if float32 and device.type == "cuda" and tcnn_available():
            return "tcnn"
        return "torch"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch_shape = x.shape[:-1]
        x = x.reshape(-1, 3)
        backend = self.resolve_backend(x.device)
        if backend == "torch":
            out = hash_grid_reference(x.to(self.params.dtype), self.params, self.geometry)
        elif backend == "tcnn":
            out = self._tcnn_forward(x)
        else:
            x = x.float().contiguous()
            if torch.compiler.is_compiling():  # the registered op: traced through, no graph break
                out = hashgrid_encode(x, self.params, *self._kernel_args)
            else:
                out = _EagerKernelEncoding.apply(x, self.params, self._kernel_args)
        return out.reshape(*batch_shape, self.output_dim)

    def _tcnn_forward(self, x: torch.Tensor) -> torch.Tensor:
        import tinycudann as tcnn

        if self._tcnn is None:
            geometry = self.geometry
            config = {
                "otype": "HashGrid",
                "n_levels": geometry.levels,
                "n_features_per_level": geometry.features,
                "log2_hashmap_size": geometry.log2_table_size,
                "base_resolution": geometry.base_resolution,
                "per_level_scale": geometry.per_level_scale,
            }
            module = tcnn.Encoding(3, config, dtype=torch.float32)
            if module.params.numel() != geometry.parameter_count:
                raise RuntimeError(f"tcnn has {module.params.numel()} parameters, we have {geometry.parameter_count}")
            self._tcnn = (module,)  # a tuple: not registered as a submodule, its own parameters are unused
        module = self._tcnn[0]
        module.params = self.params  # share our parameter (same layout)
        return module(x.float().contiguous()).float()

    def extra_repr(self) -> str:
        g = self.geometry
        return (
            f"levels={g.levels}, features={g.features}, log2_table_size={g.log2_table_size}, "
            f"base_resolution={g.base_resolution}, per_level_scale={g.per_level_scale:.4f}, backend={self.backend!r}"
        )
