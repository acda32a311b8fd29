"""Where the shipped files live: the presets (configs/), the toy models (assets/) and the kernel sources (cuda_ext/).

In a source checkout (and an editable install) they sit at the top of the repository, beside this package; an
installed wheel carries them inside the package (``dreamdistill/configs``, ``dreamdistill/assets``,
``dreamdistill/cuda_ext``: the mapping is in pyproject.toml). Every lookup goes through :func:`shipped`.
Environment: ``$DREAMDISTILL_ASSETS`` and ``$DREAMDISTILL_CUDA_EXT`` point at other folders.
"""

from __future__ import annotations

import os
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def shipped(name: str) -> Path:
    """The shipped folder ``name``: inside the installed package when there, else the checkout's top level."""
    installed = PACKAGE / name
    return installed if installed.is_dir() else PACKAGE.parent / name


def assets_dir() -> Path:
    """The folder holding toy-teacher/ and toy-evaluator/."""
    override = os.environ.get("DREAMDISTILL_ASSETS")
    return Path(override) if override else shipped("assets")


def configs_dir() -> Path:
    """The shipped presets (toy-sds.yaml, ..., distill-pd.yaml)."""
    return shipped("configs")


def cuda_ext_dir() -> Path:
    """The folder holding the kernel sources (hashgrid/)."""
    override = os.environ.get("DREAMDISTILL_CUDA_EXT")
    return Path(override) if override else shipped("cuda_ext")


def repo_relative(path: str | Path) -> str:
    """``path`` relative to the checkout this package runs from (the folder above it), or else to the current
    folder, when inside one of them; as given otherwise. Committed files (benchmarks/results/*.json) record this
    instead of one machine's absolute folders."""
    resolved = Path(path).resolve()
    for root in (PACKAGE.parent, Path.cwd().resolve()):
        if resolved.is_relative_to(root):
            return resolved.relative_to(root).as_posix()
    return str(path)
