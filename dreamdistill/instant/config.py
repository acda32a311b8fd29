"""The config of amortised training (``dreamdistill train-instant``): the generator, the prompts per step and the
sections shared with a per-prompt run (cameras, render, optimiser, guidance, regularisers)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Annotated

from dreamdistill.config import Device, Range, Seed, validate
from dreamdistill.guidance.sds import GuidanceConfig
from dreamdistill.instant.generator import ConditioningConfig
from dreamdistill.lift3d.config import OptimConfig, RegularizerConfig
from dreamdistill.render.cameras import CameraRanges
from dreamdistill.render.config import RenderConfig
from dreamdistill.scene.config import SceneConfig


@dataclass
class InstantConfig:
    """Amortised SDS over the toy vocabulary's training prompts (written to OUT/config.yaml). Every section but
    ``conditioning`` means what it means in a per-prompt run (:class:`~dreamdistill.lift3d.config.LiftConfig`);
    schedules (learning rate, timestep range, ramps, coarse-to-fine) run over ``steps``."""

    teacher: str = "toy"
    """toy or a toy-teacher folder (its vocabulary is the generator's)."""
    steps: Annotated[int, Range(1, 10**8)] = 6000
    """Generator updates."""
    seed: Seed = 0
    """Seed of the initialisation and of every step's random stream (prompts, cameras, timesteps, noise)."""
    device: Device = None
    """cpu, cuda, cuda:N (None: cuda when available)."""
    threads: Annotated[int, Range(0, 1024)] = 1
    """CPU threads of torch (0: torch's default); one thread shares a small machine politely."""
    prompts_per_step: Annotated[int, Range(1, 1024)] = 4
    """Training prompts drawn (without replacement) for each update: the global batch, which several processes
    share out (each renders its own rows, so it must be at least the number of processes)."""
    cameras_per_prompt: Annotated[int, Range(1, 64)] = 1
    """Random cameras rendered per drawn prompt (batch = prompts_per_step × cameras_per_prompt)."""
    checkpoint_every: Annotated[int, Range(1, None)] = 200
    """Steps between checkpoints (OUT/checkpoint.pt and the fp16 generator folder OUT/generator/)."""
    validate_every: Annotated[int, Range(0, None)] = 1000
    """Steps between validation sheets (OUT/validation/step-N.png: held-out and training prompts; 0: only at the
    end)."""
    scene: SceneConfig = field(default_factory=SceneConfig)
    """The hash grid(s) and the MLP of the generator (a bound prompt is a Field of exactly these settings)."""
    conditioning: ConditioningConfig = field(default_factory=ConditioningConfig)
    """How the prompt reaches the field."""
    cameras: CameraRanges = field(default_factory=CameraRanges)
    """Ranges of the random training cameras."""
    render: RenderConfig = field(default_factory=RenderConfig)
    """Training renders. With ``conditioning.modulate: albedo`` each hash grid has its own occupancy grid
    (``occupancy_*``); with ``all`` there is none (a prompt's colour may move its shape), so every sample is
    marched."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    """Adam: ``grid_learning_rate`` for the hash grids, ``mlp_learning_rate`` for the MLP and the code MLP."""
    guidance: GuidanceConfig = field(default_factory=GuidanceConfig)
    """SDS, each sample with its own prompt."""
    regularizers: RegularizerConfig = field(default_factory=RegularizerConfig)
    """Regularisers per render, as in a per-prompt run, averaged over the batch."""


def check_instant_config(config: InstantConfig) -> None:
    """Every declared range and choice (one line each), before anything is loaded or written."""
    validate(config)
