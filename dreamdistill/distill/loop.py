"""The training loop every distillation method shares: accelerate, checkpoint/resume, progress bars.

A run is a sequence of *phases* (one PD round, guided stage 1, the whole KD or DMD run). A phase
trains a few named modules for ``LoopConfig.steps`` optimiser steps with a method's ``step_fn``
and checkpoints them atomically to ``WORK_DIR/PHASE.pt`` every ``checkpoint_every`` steps.
Rerunning the same command skips finished phases and resumes the current one. With ``ema_halflife`` > 0 a
phase also keeps an exponential moving average of its student's weights (the module it names as
``average``), checkpoints it with the rest and returns it in the student's place. Each step draws
its randomness from its own generator, seeded by (seed, phase, step), so a resumed run
repeats the uninterrupted one exactly.

The same code runs on one CPU, one GPU, or W processes under ``accelerate launch --multi_gpu`` / ``torchrun``
(GPUs, or CPUs over gloo): modules and optimisers go through ``Accelerator.prepare`` (DDP averages the
gradients), ``batch_size`` is per process, and only the main process writes files and shows progress bars.
Data are sharded by rows of the global batch: every process draws the step's random numbers for all
W × ``batch_size`` samples from the same stream and keeps its own ``batch_size`` rows (:class:`StepContext`),
so each sample of the global batch is drawn by exactly one process and W processes train what one process
with a W times larger batch trains (tests/test_distributed.py checks both to float tolerance).
"""

from __future__ import annotations

import copy
import json
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
from torch import nn

from dreamdistill.config import Range, Seed
from dreamdistill.errors import DreamDistillError
from dreamdistill.fileio import torch_load_checked, torch_save_atomic


@dataclass
class LoopConfig:
    """Optimisation and bookkeeping settings shared by every method."""

    steps: Annotated[int, Range(1, 10**8)] = 2000
    """Optimiser steps per phase (each PD round, guided stage 1, the whole KD or DMD run)."""
    batch_size: Annotated[int, Range(1, 65536)] = 64
    """Samples per step and per process (W processes train on a global batch of W × batch_size)."""
    learning_rate: Annotated[float, Range(0, 1, open_low=True)] = 1e-4
    """AdamW learning rate (no weight decay)."""
    warmup_steps: Annotated[int, Range(0, None)] = 100
    """Linear learning-rate warm-up at the start of each phase; constant afterwards."""
    grad_clip: Annotated[float, Range(0, 1e6)] = 1.0
    """Clip the gradient norm of each module to this (0: no clipping)."""
    checkpoint_every: Annotated[int, Range(1, None)] = 250
    """Write WORK_DIR/PHASE.pt this often (and at the end of every phase)."""
    log_every: Annotated[int, Range(1, None)] = 25
    """Append the step's losses to WORK_DIR/log.jsonl this often."""
    seed: Seed = 0
    """Seeds every random draw (data, noise, timesteps, guidance weights)."""
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    """Autocast of the forward passes (accelerate's mixed precision); weights stay float32."""
    device: Literal["auto", "cpu"] = "auto"
    """auto: accelerate's choice (this process's GPU when there is one, else the CPU); cpu: force the CPU."""
    threads: Annotated[int, Range(0, 1024)] = 0
    """CPU threads for torch (0: torch's default)."""
    ema_halflife: Annotated[float, Range(0, None)] = 0.0
    """Half-life, in steps, of an exponential moving average of the student's weights (the generator of DMD and
    SiD, the student of KD and PD), which the phase returns instead of the last weights, as SiD's and EDM's code
    sample from their EMA (:func:`ema_decay`); 0: no average."""
    max_minutes: Annotated[float, Range(0, None)] = 0.0
    """Wall-clock limit of each phase's training, counted from when this process starts or resumes the phase
    (0: none). A phase that reaches it stops there, is saved as finished at the step it reached (a rerun
    skips it) and that step is recorded in the student's folder (``steps_trained``)."""


def warmup_factor(step: int, warmup_steps: int) -> float:
    """Learning-rate multiplier: linear warm-up over ``warmup_steps``, then 1."""
    return min(1.0, (step + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def ema_decay(halflife: float) -> float:
    """Per-step decay β of an average that halves a weight's share every ``halflife`` steps: β^halflife = ½."""
    return 0.5 ** (1.0 / halflife)


@torch.no_grad()
def update_average(average: nn.Module, module: nn.Module, decay: float) -> None:
    """One EMA step, θ̄ ← β θ̄ + (1 − β) θ, for every parameter; buffers are copied."""
    for mean, value in zip(average.parameters(), module.parameters(), strict=True):
        mean.lerp_(value.detach(), 1.0 - decay)
    for mean, value in zip(average.buffers(), module.buffers(), strict=True):
        mean.copy_(value)


def step_seed(seed: int, phase: str, step: int, process: int = 0) -> int:
    """A stable seed for one (phase, step, process); independent of Python's hash randomisation. The loop uses
    process 0 on every process (one stream for the global batch, see :class:`StepContext`)."""
    return zlib.crc32(f"{seed}/{phase}/{step}/{process}".encode())


def accelerate_on_cpu(device: str) -> bool:
    """Whether to give accelerate ``cpu=True``: asked for (``device: cpu``), or several processes were launched on a
    machine without CUDA. accelerate joins CPU processes into one gloo group only with ``cpu=True``; without it,
    ``torchrun`` / ``accelerate launch --multi_gpu`` processes on a CPU machine would each train alone."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    return device == "cpu" or (world > 1 and not torch.cuda.is_available())


def shard_rows(rows: int, rank: int, world: int) -> slice:
    """This process's rows of a global batch of ``world`` × ``rows`` samples: [rank·rows, (rank + 1)·rows)."""
    return slice(rank * rows, (rank + 1) * rows)


@dataclass
class StepContext:
    """What a method's ``step_fn`` gets for one optimiser step."""

    step: int
    generator: torch.Generator
    """The step's own CPU generator: draw every random number from it."""
    models: dict[str, nn.Module]
    """The phase's modules as prepared by accelerate (call these, not the originals)."""
    device: torch.device
    accelerator: object
    optimizers: dict[str, torch.optim.Optimizer] = field(repr=False, default_factory=dict)
    grad_clip: float = 0.0
    average: nn.Module | None = None
    """The EMA of the phase's student before this step (None without ``ema_halflife``)."""
    rank: int = 0
    """This process's index among the ``world`` processes."""
    world: int = 1
    """Number of processes; the global batch is ``world`` × the per-process batch."""

    # Every draw is per sample: its first dimension is this process's batch B. The step's generator (the same
    # stream on every process) draws world × B rows and this process keeps rows [rank·B, (rank + 1)·B), so the
    # processes share out one global batch, each sample drawn by exactly one process.
    def randn(self, *shape: int) -> torch.Tensor:
        """Standard normal noise [B, ...] on the training device (this process's rows)."""
        full = torch.randn((self.world * shape[0], *shape[1:]), generator=self.generator)
        return full[shard_rows(shape[0], self.rank, self.world)].to(self.device)

    def rand(self, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) numbers [B, ...] on the training device (this process's rows)."""
        full = torch.rand((self.world * shape[0], *shape[1:]), generator=self.generator)
        return full[shard_rows(shape[0], self.rank, self.world)].to(self.device)

    def randint(self, high: int, size: int) -> torch.Tensor:
        """Integers in [0, high) [size] on the CPU (indices into CPU data and timestep tables; this process's rows)."""
        full = torch.randint(high, (self.world * size,), generator=self.generator)
        return full[shard_rows(size, self.rank, self.world)]

    def update(self, name: str, loss: torch.Tensor) -> None:
        """Backpropagate ``loss`` and take one optimiser step of module ``name``."""
        optimizer = self.optimizers[name]
        self.accelerator.backward(loss)
        if self.grad_clip > 0:
            params = [p for group in optimizer.param_groups for p in group["params"]]
            self.accelerator.clip_grad_norm_(params, self.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)


StepFunction = Callable[[StepContext], dict[str, float]]
"""One optimiser step of a method: draws a batch, calls ``ctx.update`` and returns losses to log."""


class Run:
    """One distillation run: the accelerator, the work folder and the phases already trained."""

    def __init__(self, config: LoopConfig, work_dir: str | Path):
        from accelerate import Accelerator

        if config.threads:
            torch.set_num_threads(config.threads)
        self.config = config
        self.work_dir = Path(work_dir)
        self.accelerator = Accelerator(cpu=accelerate_on_cpu(config.device), mixed_precision=config.mixed_precision)
        torch.manual_seed(config.seed)
        self.steps_trained: dict[str, int] = {}
        """Optimiser steps each phase of this run actually trained (fewer than ``steps`` after a time limit)."""

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def wait(self) -> None:
        """Barrier across processes (no-op with one process)."""
        self.accelerator.wait_for_everyone()

    def out_of_time(self, started: float) -> bool:
        """Whether this phase has used up ``max_minutes`` (decided by the main process, shared with all)."""
        if self.config.max_minutes <= 0:
            return False
        over = time.time() - started > 60 * self.config.max_minutes
        if self.accelerator.num_processes > 1:  # every process must stop at the same step
            flag = torch.tensor(float(over), device=self.device)
            over = bool(self.accelerator.reduce(flag, reduction="max").item())
        return over

    def mean_losses(self, losses: dict[str, float]) -> dict[str, float]:
        """Each loss averaged over the processes (every process must call this at the same step)."""
        if self.accelerator.num_processes == 1 or not losses:
            return losses
        values = torch.tensor([float(v) for v in losses.values()], dtype=torch.float32, device=self.device)
        return dict(zip(losses, self.accelerator.reduce(values, reduction="mean").tolist()))

    def log(self, record: dict) -> None:
        if self.is_main:
            self.work_dir.mkdir(parents=True, exist_ok=True)
            with open(self.work_dir / "log.jsonl", "a") as log:
                log.write(json.dumps(record) + "\n")

    def phase(self, name: str, modules: dict[str, nn.Module], step_fn: StepFunction,
              learning_rates: dict[str, float] | None = None,
              betas: dict[str, tuple[float, float]] | None = None,
              average: str | None = None) -> dict[str, nn.Module]:
        """Train ``modules`` for ``config.steps`` steps (resuming from WORK_DIR/NAME.pt); returns them unwrapped.

        A finished phase is loaded from its checkpoint and skipped. Every parameter with
        ``requires_grad`` gets an AdamW optimiser; ``learning_rates`` overrides the rate per module, ``betas``
        Adam's (β1, β2) per module (default (0.9, 0.999)). ``average`` names the student: with
        ``ema_halflife`` > 0 its EMA is updated after every step and returned (and saved) in its place.
        """
        config, accelerator = self.config, self.accelerator
        path = self.work_dir / f"{name}.pt"
        state = None
        if path.is_file():
            state = torch_load_checked(path, ("step", "modules"), "delete it to train that phase again")
        if state is not None:
            if set(state["modules"]) != set(modules):
                raise DreamDistillError(f"{path} holds other modules ({', '.join(state['modules'])}); "
                                        "delete the work folder or pass another --work-dir")
            for key, module in modules.items():
                module.load_state_dict(state["modules"][key])
            if state.get("finished") or state["step"] >= config.steps:
                if self.is_main:
                    print(f"{name}: finished earlier ({path}, step {state['step']}); skipping", flush=True)
                self.steps_trained[name] = int(state["step"])
                return {key: module.to(self.device).eval().requires_grad_(False) for key, module in modules.items()}
        start = state["step"] if state is not None else 0
        ema = None
        if average is not None and config.ema_halflife > 0:
            ema = copy.deepcopy(modules[average]).requires_grad_(False)
            if state is not None and "average" in state:
                ema.load_state_dict(state["average"])
            ema = ema.to(self.device)

        rates = {key: (learning_rates or {}).get(key, config.learning_rate) for key in modules}
        optimizers = {}
        for key, module in modules.items():
            params = [p for p in module.parameters() if p.requires_grad]
            if not params:
                raise DreamDistillError(f"phase {name}: module {key!r} has no trainable parameters")
            optimizers[key] = torch.optim.AdamW(params, lr=rates[key], weight_decay=0.0,
                                                betas=(betas or {}).get(key, (0.9, 0.999)))
            if state is not None and key in state.get("optimizers", {}):
                optimizers[key].load_state_dict(state["optimizers"][key])
        keys = list(modules)
        prepared = accelerator.prepare(*[modules[k] for k in keys], *[optimizers[k] for k in keys])
        prepared = prepared if isinstance(prepared, (list, tuple)) else (prepared,)
        models = dict(zip(keys, prepared[: len(keys)]))
        prepared_optimizers = dict(zip(keys, prepared[len(keys):]))

        def save(step: int, finished: bool) -> None:
            if self.is_main:
                weights = {k: accelerator.unwrap_model(m).state_dict() for k, m in models.items()}
                if ema is not None and finished:  # a finished phase's student is its average
                    weights[average] = ema.state_dict()
                checkpoint = {"step": step, "finished": finished, "modules": weights}
                if not finished:  # a finished phase needs only its weights
                    checkpoint["optimizers"] = {k: o.state_dict() for k, o in prepared_optimizers.items()}
                    if ema is not None:
                        checkpoint["average"] = ema.state_dict()
                torch_save_atomic(path, checkpoint)
            self.wait()

        from tqdm.auto import tqdm

        if start and self.is_main:
            print(f"{name}: resuming from {path} at step {start}", flush=True)
        bar = tqdm(total=config.steps, initial=start, desc=name, unit="step", disable=not self.is_main,
                   dynamic_ncols=True)
        started = time.time()
        reached = config.steps
        for step in range(start, config.steps):
            for key, optimizer in prepared_optimizers.items():
                for group in optimizer.param_groups:
                    group["lr"] = rates[key] * warmup_factor(step, config.warmup_steps)
            for model in models.values():
                model.train()
            generator = torch.Generator().manual_seed(step_seed(config.seed, name, step))  # one stream, all ranks
            context = StepContext(step, generator, models, self.device, accelerator, prepared_optimizers,
                                  config.grad_clip, ema, accelerator.process_index, accelerator.num_processes)
            with accelerator.autocast():
                losses = step_fn(context)
            if ema is not None:
                update_average(ema, accelerator.unwrap_model(models[average]), ema_decay(config.ema_halflife))
            bar.update(1)
            bar.set_postfix({k: f"{v:.4g}" for k, v in losses.items()})
            if (step + 1) % config.log_every == 0 or step + 1 == config.steps:  # losses of the global batch
                self.log({"phase": name, "step": step + 1, "elapsed_s": round(time.time() - started, 1),
                          **self.mean_losses(losses)})
            if self.out_of_time(started) and step + 1 < config.steps:
                reached = step + 1
                if self.is_main:
                    print(f"\n{name}: stopped at step {reached} of {config.steps} (loop.max_minutes = "
                          f"{config.max_minutes:g}); saved as finished", flush=True)
                self.log({"phase": name, "stopped_at": reached, "elapsed_s": round(time.time() - started, 1)})
                break
            if (step + 1) % config.checkpoint_every == 0 and step + 1 < config.steps:
                save(step + 1, finished=False)
        bar.close()
        save(reached, finished=True)
        self.steps_trained[name] = reached
        trained = {key: accelerator.unwrap_model(model).eval().requires_grad_(False) for key, model in models.items()}
        if ema is not None:
            trained[average] = ema.eval()
        accelerator.free_memory()  # drop accelerate's references to this phase's modules and optimisers
        return trained
