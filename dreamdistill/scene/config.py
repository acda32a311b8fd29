"""The radiance field's settings (hash grid + MLP, coarse-to-fine levels)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from dreamdistill.config import Range, Seed
from dreamdistill.scene.field import Geometry
from dreamdistill.scene.hashgrid import Backend


@dataclass
class SceneConfig:
    """The radiance field (hash grid + MLP)."""

    levels: Annotated[int, Range(1, 32)] = 8
    """Hash-grid levels."""
    features_per_level: Annotated[int, Range(1, 8)] = 2
    """Features per level."""
    log2_table_size: Annotated[int, Range(4, 24)] = 14
    """log2 of the largest per-level table (small = fast on a CPU)."""
    base_resolution: Annotated[int, Range(2, 4096)] = 8
    """Coarsest grid resolution."""
    max_resolution: Annotated[int, Range(2, 65536)] = 128
    """Finest grid resolution."""
    hidden_dim: Annotated[int, Range(1, 1024)] = 32
    """MLP width."""
    hidden_layers: Annotated[int, Range(0, 16)] = 1
    """MLP hidden layers."""
    blob_density: Annotated[float, Range(-30, 30)] = 5.0
    """Pre-activation density bias at the centre (the initial blob)."""
    blob_radius: Annotated[float, Range(0, 2, open_low=True)] = 0.5
    """Radius where the blob bias reaches zero."""
    geometry: Geometry = "density"
    """density (NeRF: the MLP gives a density) or sdf (VolSDF: a signed distance d, density Ψ_β(−d)/β, the surface
    at d = 0; ``blob_radius`` is the initial sphere's radius and ``blob_density`` is not used)."""
    sdf_beta: Annotated[float, Range(1e-4, 1)] = 0.1
    """sdf: the Laplace scale β at the start (world units; the density's transition width, 1/β inside)."""
    sdf_beta_end: Annotated[float, Range(1e-4, 1)] = 0.02
    """sdf: β at the end of the run (annealed geometrically from ``sdf_beta``)."""
    backend: Backend = "auto"
    """Hash-grid backend (auto: our CPU/CUDA kernel when it builds)."""
    levels_start: Annotated[int, Range(0, 32)] = 0
    """Coarse-to-fine: hash-grid levels in use at the start (0: all levels throughout)."""
    levels_full_at: Annotated[float, Range(0, 1)] = 0.5
    """Fraction of the run by which the levels in use have grown linearly to all of them."""
    init_seed: Seed | None = None
    """Seed of the field's initial weights (None: the run's ``seed``, which also seeds the cameras, timesteps and
    noise). Apart, they show which one a result hangs on: the red chair's seat survives seed 1's draws from seed 0's
    initial field and is lost from seed 1's (benchmarks/results/chair_seed_diagnosis.json)."""
