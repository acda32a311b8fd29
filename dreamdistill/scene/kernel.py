"""Build and load the hash-grid kernels in ``cuda_ext/hashgrid`` (JIT, cached, built once per machine).

The C++ sources are compiled with ``torch.utils.cpp_extension.load`` (ninja) into a per-user cache
(``$TORCH_EXTENSIONS_DIR`` or ``~/.cache/torch_extensions``), in a folder named by a hash of the sources
and build flags, so a machine builds each version once. With a CUDA device and ``nvcc``, the CUDA kernel
is built into the same library. When no compiler is available, :func:`load_kernel` says so in one line and
returns ``None``; callers then use the PyTorch reference.

Environment: ``DREAMDISTILL_HASHGRID_KERNEL=0`` disables the kernel; ``DREAMDISTILL_CUDA_EXT`` points at
another ``cuda_ext`` folder.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from dreamdistill.paths import cuda_ext_dir

OPS_NAMESPACE = "dreamdistill_hashgrid"
CXX_FLAGS = ["-O3", "-ffp-contract=off"]  # no -march=native: the cache may be shared across CPUs
NVCC_FLAGS = ["-O3", "-lineinfo"]  # no fast math: it would flush denormals (the host kernel does not)

_state: dict[str, Any] = {}


def sources_dir() -> Path:
    """The ``cuda_ext/hashgrid`` folder (shipped, or ``$DREAMDISTILL_CUDA_EXT/hashgrid``)."""
    return cuda_ext_dir() / "hashgrid"


def _source_hash(paths: list[Path], flags: list[str]) -> str:
    digest = hashlib.sha256(torch.__version__.encode())
    for path in paths:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    digest.update(" ".join(flags).encode())
    return digest.hexdigest()[:12]


def _first_error_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    errors = [line for line in lines if "error" in line.lower()]
    return (errors or lines or [repr(error)])[0][:300]


def _fallback(reason: str) -> None:
    warnings.warn(f"dreamdistill: hash-grid kernel unavailable ({reason}); using the PyTorch reference", stacklevel=3)


def _build(with_cuda: bool) -> None:
    from torch.utils import cpp_extension

    folder = sources_dir()
    sources = [folder / "hashgrid.cpp"] + ([folder / "hashgrid_cuda.cu"] if with_cuda else [])
    headers = [folder / "hashgrid_core.h", folder / "hashgrid_cuda.h"]
    cflags = CXX_FLAGS + (["-DDREAMDISTILL_WITH_CUDA"] if with_cuda else [])
    name = f"{OPS_NAMESPACE}_{'cuda' if with_cuda else 'cpu'}_{_source_hash(sources + headers, cflags + NVCC_FLAGS)}"
    cpp_extension.load(
        name=name,
        sources=[str(path) for path in sources],
        extra_cflags=cflags,
        extra_cuda_cflags=NVCC_FLAGS if with_cuda else None,
        extra_include_paths=[str(folder)],
        is_python_module=False,
        verbose=os.environ.get("DREAMDISTILL_VERBOSE_BUILD") == "1",
    )


def load_kernel() -> Any | None:
    """The kernel ops (``torch.ops.dreamdistill_hashgrid``), building them on first use; ``None`` if unavailable."""
    if "ops" in _state:
        return _state["ops"]
    _state["ops"] = None
    if os.environ.get("DREAMDISTILL_HASHGRID_KERNEL", "1") == "0":
        return None
    if not (sources_dir() / "hashgrid.cpp").exists():
        _fallback(f"sources not found in {sources_dir()}")
        return None
    from torch.utils import cpp_extension

    if shutil.which(os.environ.get("CXX", "c++")) is None:
        _fallback("no C++ compiler found")
        return None
    if not cpp_extension.is_ninja_available():
        _fallback("ninja not found")
        return None
    with_cuda = torch.cuda.is_available() and cpp_extension.CUDA_HOME is not None
    try:
        _build(with_cuda)
    except Exception as error:  # noqa: BLE001 - any build failure means "use the reference"
        if not with_cuda:
            _fallback(f"build failed: {_first_error_line(error)}")
            return None
        try:  # the CUDA toolchain may be broken while the host compiler works
            _build(False)
        except Exception as cpu_error:  # noqa: BLE001
            _fallback(f"build failed: {_first_error_line(cpu_error)}")
            return None
    _state["ops"] = getattr(torch.ops, OPS_NAMESPACE)
    return _state["ops"]


def kernel_has_cuda() -> bool:
    """Whether the loaded kernel includes the CUDA path."""
    if "has_cuda" not in _state:  # cached: HashGrid asks on every CUDA forward
        ops = load_kernel()
        _state["has_cuda"] = bool(ops is not None and ops.has_cuda())
    return _state["has_cuda"]
