"""Hash grid: tiny-cuda-nn conventions, the PyTorch reference (oracle) and our C++/CUDA kernels."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from dreamdistill.scene import hashgrid as hg
from dreamdistill.scene.hashgrid import HashGrid, grid_geometry, hash_grid_reference
from dreamdistill.scene.kernel import kernel_has_cuda, load_kernel, sources_dir

MASK = 0xFFFFFFFF


def tcnn_grid_index(cell: tuple[int, int, int], resolution: int, size: int) -> int:
    """A literal transcription of tiny-cuda-nn's grid_index (uint32 arithmetic) as the spec."""
    stride, index = 1, 0
    for dim in range(3):
        if stride > size:
            break
        index = (index + cell[dim] * stride) & MASK
        stride = (stride * resolution) & MASK
    if size < stride:
        index = 0
        for value, prime in zip(cell, (1, 2654435761, 805459861)):
            index ^= (value * prime) & MASK
    return index % size


def kernel_or_skip():
    ops = load_kernel()
    if ops is None:
        pytest.skip("hash-grid kernel unavailable (no compiler)")
    return ops


def test_geometry_follows_tcnn_formulas():
    g = grid_geometry(levels=16, features=2, log2_table_size=19, base_resolution=16, per_level_scale=1.3819)
    assert g.scales[0] == 15.0 and g.resolutions[0] == 16 and g.sizes[0] == 16**3
    for level in range(16):
        scale = 16 * 1.3819**level - 1
        assert g.scales[level] == pytest.approx(scale, rel=1e-5)
        assert g.resolutions[level] == int(torch.tensor(g.scales[level]).ceil()) + 1
        assert g.sizes[level] == min(-(-(g.resolutions[level] ** 3) // 8) * 8, 2**19)
        assert g.sizes[level] % 8 == 0
    assert g.offsets == tuple(sum(g.sizes[:level]) for level in range(16))
    assert g.parameter_count == sum(g.sizes) * 2
    assert g.dense(0) and not g.dense(15)
    # non-multiple-of-8 dense level: 3^3 = 27 -> 32 rows
    small = grid_geometry(levels=2, features=1, log2_table_size=10, base_resolution=3, per_level_scale=2.0)
    assert small.resolutions[0] == 3 and small.sizes[0] == 32
    assert HashGrid(levels=8, base_resolution=16, max_resolution=512).geometry.per_level_scale == pytest.approx(
        (512 / 16) ** (1 / 7)
    )


def test_reference_index_matches_tcnn_transcription():
    generator = torch.Generator().manual_seed(0)
    cells = torch.randint(0, 40, (200, 3), generator=generator)
    cells[:50] = torch.randint(0, 2**32, (50, 3), generator=generator)  # wrapped negative cells
    for resolution, size in [(16, 4096), (17, 4920), (37, 1024), (200, 2**19), (3, 32)]:
        got = hg.table_index(cells, resolution, size)
        expected = [tcnn_grid_index(tuple(int(v) for v in cell), resolution, size) for cell in cells]
        assert got.tolist() == expected


def test_init_range_and_layout():
    grid = HashGrid(levels=4, log2_table_size=12, base_resolution=8)
    assert grid.params.shape == (grid.geometry.parameter_count,)
    assert grid.params.abs().max() <= hg.INIT_RANGE
    assert grid(torch.rand(5, 7, 3)).shape == (5, 7, grid.output_dim)


def test_reference_gradcheck_float64():
    geometry = grid_geometry(levels=3, features=2, log2_table_size=6, base_resolution=3, per_level_scale=1.7)
    assert not geometry.dense(2)  # exercises the hash
    generator = torch.Generator().manual_seed(1)
    params = torch.rand(geometry.parameter_count, dtype=torch.float64, generator=generator).requires_grad_()
    x = (0.05 + 0.9 * torch.rand(12, 3, dtype=torch.float64, generator=generator)).requires_grad_()
    assert torch.autograd.gradcheck(lambda x_, p_: hash_grid_reference(x_, p_, geometry), (x, params))


def test_reference_reproduces_a_hand_computed_value():
    # one dense level, resolution 3 (scale 2): point (0.25, 0.25, 0.25) -> position 1.0: cell 1, fraction 0
    geometry = grid_geometry(levels=1, features=1, log2_table_size=10, base_resolution=3, per_level_scale=1.0)
    params = torch.arange(geometry.parameter_count, dtype=torch.float32)
    out = hash_grid_reference(torch.tensor([[0.25, 0.25, 0.25], [0.5, 0.25, 0.25]]), params, geometry)
    assert out[0, 0] == 1 + 1 * 3 + 1 * 9
    assert out[1, 0] == pytest.approx(0.5 * (13 + 14))  # position 1.5 along x: halfway between vertices


def random_points(count: int, geometry, generator: torch.Generator) -> torch.Tensor:
    """Uniform points, points outside [0, 1], exactly on cell borders of several levels, and the corners."""
    x = torch.rand(count, 3, generator=generator)
    x[: count // 8] = torch.rand(count // 8, 3, generator=generator) * 1.6 - 0.3
    border = []
    for level in range(geometry.levels):
        scale = geometry.scales[level]
        cells = torch.randint(0, int(scale) + 2, (count // (4 * geometry.levels) + 1, 3), generator=generator)
        border.append(((cells.double() - 0.5) / scale).float())
    border_points = torch.cat(border)
    x = torch.cat([x, border_points, torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.0, 0.0, 0.5]])])
    return x


CONFIGS = [
    dict(levels=16, features_per_level=2, log2_table_size=14, base_resolution=16, per_level_scale=1.3819),
    dict(levels=4, features_per_level=1, log2_table_size=10, base_resolution=3, per_level_scale=2.0),
    dict(levels=3, features_per_level=4, log2_table_size=12, base_resolution=5, per_level_scale=3.3),
    dict(levels=2, features_per_level=8, log2_table_size=9, base_resolution=7, max_resolution=41),
    dict(levels=6, features_per_level=2, log2_table_size=11, base_resolution=2, per_level_scale=1.9),
]


CONFIG_IDS = [f"L{c['levels']}F{c['features_per_level']}" for c in CONFIGS]


def check_kernel_against_reference(config: dict, backend: str) -> None:
    """Forward, d/dparams and d/dx of one kernel backend against the PyTorch reference on tricky points."""
    device = torch.device(backend)
    generator = torch.Generator().manual_seed(2)
    grid = HashGrid(backend=backend, **config)
    geometry = grid.geometry
    assert any(geometry.dense(level) for level in range(geometry.levels))
    with torch.no_grad():
        grid.params.copy_(torch.rand(grid.params.shape, generator=generator) * 2 - 1)
    grid = grid.to(device)
    x = random_points(2000, geometry, generator).to(device).requires_grad_()
    out = grid(x)
    grad_out = torch.randn(out.shape, generator=generator).to(device)
    grad_params, grad_x = torch.autograd.grad(out, [grid.params, x], grad_out)

    reference = hash_grid_reference(x, grid.params, geometry)
    ref_params, ref_x = torch.autograd.grad(reference, [grid.params, x], grad_out)
    torch.testing.assert_close(out, reference, rtol=0, atol=1e-6)
    torch.testing.assert_close(grad_params, ref_params, rtol=1e-5, atol=1e-5 * ref_params.abs().max().item())
    torch.testing.assert_close(grad_x, ref_x, rtol=1e-5, atol=1e-5 * ref_x.abs().max().item())


@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_cpu_kernel_matches_reference(config):
    kernel_or_skip()
    check_kernel_against_reference(config, "cpu")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("config", CONFIGS, ids=CONFIG_IDS)
def test_cuda_kernel_matches_reference(config):
    """Runs on GPU machines only (never in CI); benchmarks/gpu_check.sh runs it."""
    if not kernel_has_cuda():
        pytest.fail("a CUDA device is present but the hash-grid kernel was built without CUDA (nvcc / CUDA_HOME?)")
    check_kernel_against_reference(config, "cuda")
    grid = HashGrid(levels=4, log2_table_size=10, base_resolution=4, per_level_scale=2.0).cuda()
    assert grid.resolve_backend(torch.device("cuda")) == "cuda"
    empty = grid(torch.zeros(0, 3, device="cuda", requires_grad=True))
    assert empty.shape == (0, grid.output_dim)
    empty.sum().backward()


def test_cpu_kernel_partial_gradients_and_empty_input():
    kernel_or_skip()
    grid = HashGrid(levels=4, log2_table_size=10, base_resolution=4, per_level_scale=2.0, backend="cpu")
    x = torch.rand(100, 3, requires_grad=True)
    (grad_x,) = torch.autograd.grad(grid(x).square().sum(), [x])  # params' gradient not requested
    assert grad_x.shape == (100, 3) and torch.isfinite(grad_x).all()
    grid(torch.rand(100, 3)).sum().backward()  # positions' gradient not requested
    assert grid.params.grad is not None and grid.params.grad.abs().sum() > 0
    empty = grid(torch.zeros(0, 3, requires_grad=True))
    assert empty.shape == (0, grid.output_dim)
    empty.sum().backward()


def test_auto_backend_and_fallback(monkeypatch):
    grid = HashGrid(levels=2, log2_table_size=8, base_resolution=4)
    expected = "cpu" if load_kernel() is not None else "torch"
    assert grid.resolve_backend(torch.device("cpu")) == expected
    monkeypatch.setattr(hg, "load_kernel", lambda: None)
    assert grid.resolve_backend(torch.device("cpu")) == "torch"
    with pytest.raises(RuntimeError):
        HashGrid(levels=2, log2_table_size=8, backend="cpu").resolve_backend(torch.device("cpu"))
    assert grid.double().resolve_backend(torch.device("cpu")) == "torch"


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_cuda_kernel_compiles(tmp_path: Path):
    """Compile-only check of the CUDA kernel (no GPU needed)."""
    source = sources_dir() / "hashgrid_cuda.cu"
    command = ["nvcc", "-std=c++17", "-O3", "-arch=sm_80", "-Xcompiler", "-Wall", "-c", str(source)]
    result = subprocess.run(command + ["-o", str(tmp_path / "hashgrid_cuda.o")], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    ours = [line for line in result.stderr.splitlines() if "warning" in line.lower() and "hashgrid" in line]
    assert not ours, result.stderr


def test_kernel_op_passes_opcheck():
    """The torch.library op: schema, fake (meta) implementation and autograd registration agree with the kernel."""
    kernel_or_skip()
    grid = HashGrid(levels=4, log2_table_size=10, base_resolution=4, per_level_scale=2.0, backend="cpu")
    x = torch.rand(50, 3, requires_grad=True)
    torch.library.opcheck(hg.hashgrid_encode, (x, grid.params, *grid._kernel_args))
    grad_out = torch.randn(50, grid.output_dim)
    for need_params, need_x in ((True, True), (True, False), (False, True)):
        torch.library.opcheck(hg.hashgrid_encode_backward,
                              (x.detach(), grid.params.detach(), grad_out, *grid._kernel_args, need_params, need_x))


def test_torch_compile_traces_through_the_kernel():
    """torch.compile(fullgraph=True) captures the field (grid kernel op + MLP) as one graph with no break, and the
    compiled function gives the eager values and gradients exactly (aot_eager: fake tensors and the registered
    autograd formula are traced; the kernel itself runs in both)."""
    kernel_or_skip()
    from torch._dynamo.testing import CompileCounterWithBackend

    from dreamdistill.scene.field import Field

    torch._dynamo.reset()
    torch.manual_seed(0)
    grid = HashGrid(levels=4, log2_table_size=10, base_resolution=4, per_level_scale=2.0, backend="cpu")
    with torch.no_grad():
        grid.params.uniform_(-1, 1)
    field = Field(grid, hidden_dim=16, hidden_layers=1)
    x = torch.rand(300, 3) * 2 - 1

    def loss(points: torch.Tensor) -> torch.Tensor:
        density, albedo = field(points)
        return density.sum() + albedo.square().sum()

    explanation = torch._dynamo.explain(loss)(x)
    assert explanation.graph_break_count == 0 and explanation.graph_count == 1, explanation.break_reasons
    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(loss, backend=counter, fullgraph=True)
    results = []
    for fn in (loss, compiled):
        points = x.clone().requires_grad_(True)
        value = fn(points)
        grads = torch.autograd.grad(value, [points, grid.params, *field.mlp.parameters()])
        results.append((value, *grads))
    assert counter.frame_count == 1
    assert "hashgrid_encode" in str(counter.graphs[0].graph)
    for eager, compiled_value in zip(*results):
        torch.testing.assert_close(compiled_value, eager, rtol=0, atol=0)
