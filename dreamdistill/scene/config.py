"""The radiance field's settings (hash grid + MLP, coarse-to-fine levels)."""

from __future__ import annotations

from dataclasses import dataclass

from dreamdistill.scene.hashgrid import Backend


@dataclass
class SceneConfig:
    """The radiance field (hash grid + MLP)."""

    levels: int = 8
    """Hash-grid levels."""
    features_per_level: int = 2
    """Features per level."""
    log2_table_size: int = 14
    """log2 of the largest per-level table (small = fast on a CPU)."""
    base_resolution: int = 8
    """Coarsest grid resolution."""
    max_resolution: int = 128
    """Finest grid resolution."""
    hidden_dim: int = 32
    """MLP width."""
    hidden_layers: int = 1
    """MLP hidden layers."""
    blob_density: float = 5.0
    """Pre-activation density bias at the centre (the initial blob)."""
    blob_radius: float = 0.5
    """Radius where the blob bias reaches zero."""
    backend: Backend = "auto"
    """Hash-grid backend (auto: our CPU/CUDA kernel when it builds)."""
    levels_start: int = 0
    """Coarse-to-fine: hash-grid levels in use at the start (0: all levels throughout)."""
    levels_full_at: float = 0.5
    """Fraction of the run by which the levels in use have grown linearly to all of them."""
