"""One amortised SDS update of the generator G_θ over a batch of training prompts (ATT3D-style).

Each step, with every random draw from the step's own generator (seed, step):
  1. draw ``prompts_per_step`` training prompts y_1..y_P (never a held-out pair: :mod:`.prompts`);
  2. render G_θ(y_i) (:meth:`InstantField.bind`) from ``cameras_per_prompt`` random cameras each, marching only
     the occupied cells of its grid's occupancy grid when the shape depends on the grid alone
     (``modulate: albedo``; each grid's occupancy is refreshed on its own count of updates, as in a per-prompt run);
  3. SDS on the whole batch, each render with its own prompt:
     grad_j = w(t_j) (ε̂_teacher(x_t,j; y_i(j), view_j, cfg) − ε_j), loss = ½‖x − sg(x − grad)‖² / B;
  4. plus each render's regularisers (as in a per-prompt run), one backward, one Adam step on θ.

Under W processes (``torchrun`` / ``accelerate launch``, :class:`Processes`) the step's P prompts are the global
batch: every process draws the step's whole stream as one process would (prompts, cameras, shading and lights for
all P prompts, every drawn prompt's occupancy refresh, so the grids and their clocks stay identical everywhere, and
the SDS timesteps and noise for all P × cameras renders) but renders and scores only its own contiguous rows
(:meth:`Processes.share`); for another process's prompt it replays the render's random draws on a blank field
(:class:`BlankField`). Each process's loss is its share of the global loss, the gradients are summed over the
processes (:meth:`InstantTrainer.merge`), and W processes take the step one process takes on the same P prompts,
to float rounding (tests/test_distributed.py).
"""

from __future__ import annotations

import math
import os
import zlib
from dataclasses import dataclass

import torch
from torch import nn

from dreamdistill.diffusion.schedule import add_noise
from dreamdistill.errors import DreamDistillError
from dreamdistill.guidance.sds import SDS, draw_device, sample_timesteps, timestep_range
from dreamdistill.instant.config import InstantConfig
from dreamdistill.instant.generator import InstantField
from dreamdistill.instant.prompts import draw_prompts, training_prompts
from dreamdistill.lift3d.lifter import gradients_finite
from dreamdistill.lift3d.regularizers import regularizer_losses
from dreamdistill.lift3d.scene import marching_step, occupancy_grid
from dreamdistill.lift3d.schedules import (
    active_levels,
    learning_rate_factor,
    pick_shading,
    resolution_at,
    sdf_beta_at,
    step_seed,
)
from dreamdistill.render.cameras import Cameras, sample_cameras
from dreamdistill.render.lights import camera_light
from dreamdistill.render.occupancy import OccupancyGrid
from dreamdistill.render.volume import Light, render
from dreamdistill.scene.background import Background


def camera_slice(cameras: Cameras, part: slice) -> Cameras:
    """The cameras ``part`` of a batch."""
    return Cameras(*(t[part] for t in (cameras.azimuth, cameras.elevation, cameras.distance, cameras.fov)))


def light_slice(light: Light, part: slice) -> Light:
    """The lights ``part`` of a batch."""
    return Light(light.position[part], light.ambient[part])


@dataclass
class Processes:
    """This process's place among the processes that train one generator together (torch.distributed); one
    process is rank 0 of 1 and never communicates."""

    rank: int = 0
    world: int = 1
    device: torch.device | None = None
    """Where collective operations put their tensors (the training device)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def share(self, count: int) -> range:
        """This process's rows of ``count`` rows: contiguous, in rank order, sizes differing by at most one (all of
        them for one process)."""
        return range(self.rank * count // self.world, (self.rank + 1) * count // self.world)

    def reduce(self, values: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """``values`` summed (or ``max``) over the processes, in place (unchanged with one process)."""
        if self.world > 1:
            import torch.distributed as dist

            dist.all_reduce(values, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM)
        return values

    def largest(self, value: float) -> float:
        """The largest of every process's ``value``."""
        return float(self.reduce(torch.tensor([float(value)], dtype=torch.float64, device=self.device), "max"))

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()


def join_processes(device: str | None) -> Processes:
    """This process's :class:`Processes`: rank 0 of 1 unless a launcher (``torchrun``, ``accelerate launch``) set
    WORLD_SIZE > 1; then accelerate joins the processes (over gloo on the CPU: ``device: cpu`` or no CUDA; else
    each process trains on its own GPU, whatever cuda:N ``device`` names)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Processes()
    from accelerate import Accelerator

    accelerator = Accelerator(cpu=device == "cpu" or not torch.cuda.is_available())
    return Processes(accelerator.process_index, accelerator.num_processes, accelerator.device)


def check_shares(config: InstantConfig, processes: Processes) -> None:
    """Every process needs at least one of each step's prompts (one line otherwise)."""
    if config.prompts_per_step < processes.world:
        raise DreamDistillError(f"prompts_per_step {config.prompts_per_step} is below the {processes.world} "
                                "processes: each process renders its share of every step's prompts; set "
                                f"prompts_per_step to {processes.world} or more, or launch fewer processes")


class RowsSDS(SDS):
    """SDS scoring this process's ``rows`` of a global batch of ``total`` renders: the timesteps and the noise are
    drawn for all ``total`` renders from the step's generator (the draws one process makes) and the process keeps
    its rows. With ``total`` None it is plain SDS."""

    rows: slice = slice(None)
    total: int | None = None

    def noised(self, images: torch.Tensor, progress: float, generator=None):
        if self.total is None:
            return super().noised(images, progress, generator)
        x = self.teacher.images_to_model(images, self.config.encoder)
        t_min, t_max = timestep_range(self.config, progress)
        t = sample_timesteps(self.total, t_min, t_max, self.teacher.schedule.num_train_timesteps, generator)
        t = t[self.rows].to(self.teacher.device)
        eps = torch.randn((self.total, *x.shape[1:]), generator=generator, device=draw_device(generator))
        eps = eps[self.rows].to(x)
        alpha, sigma = self.teacher.schedule.alpha_sigma(t)
        return x, t, eps, add_noise(x0=x.detach().float(), eps=eps.float(), alpha=alpha, sigma=sigma), alpha, sigma


class BlankField(nn.Module):
    """Zero density everywhere: rendering it draws exactly the random numbers a render of the same cameras draws
    (ray jitter, marching offsets, random backgrounds: none depends on the field) at almost no cost, so a process
    keeps the step's stream in step with the processes that render that prompt."""

    def __init__(self, device: torch.device):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros((), device=device), requires_grad=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return x.new_zeros(x.shape[0]), x.new_zeros(x.shape[0], 3)

    def density(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape[0])

    def normals(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape)

    def logit_gradient(self, x: torch.Tensor) -> torch.Tensor:
        return x.new_zeros(x.shape)


def stream_checksum(generator: torch.Generator) -> int:
    """A checksum of the state of ``generator`` and of torch's global CPU generator (equal on every process at the
    end of a step, or the processes drew different numbers)."""
    return zlib.crc32(generator.get_state().numpy().tobytes() + torch.get_rng_state().numpy().tobytes())


class InstantTrainer:
    """The generator, the background, Adam and SDS; one :meth:`step` per update."""

    def __init__(self, config: InstantConfig, teacher, prompts: list[str] | None = None,
                 processes: Processes | None = None):
        self.config, self.teacher = config, teacher
        self.device = teacher.device
        self.processes = processes if processes is not None else Processes()
        """The processes training together (each renders its share of every step's prompts)."""
        check_shares(config, self.processes)
        self.prompts = list(prompts) if prompts is not None else training_prompts()
        """The prompts training draws from (by default every pair but the held-out ones)."""
        torch.manual_seed(config.seed)
        text_dim = teacher.encode_text([""]).shape[-1]
        self.model = InstantField(config.scene, config.conditioning, text_dim).to(self.device)
        r = config.render
        self.background = Background(r.background, r.background_color).to(self.device)
        self.step_size = marching_step(r)
        self.occupancy = None
        """One occupancy grid per hash grid (None: every sample is marched). Only with ``modulate: albedo``,
        where every prompt of a grid has that grid's one density; with ``all`` the colour may move the shape."""
        if r.occupancy_resolution > 0 and self.model.albedo_only:
            self.occupancy = nn.ModuleList(occupancy_grid(r) for _ in self.model.grids).to(self.device)
        self.grid_updates = [0] * len(self.model.grids)
        """How many steps have rendered each grid (the occupancy schedule's clock for that grid)."""
        o = config.optim
        grid_parameters = list(self.model.grids.parameters())
        grid_ids = {id(p) for p in grid_parameters}
        other = [p for p in self.model.parameters() if id(p) not in grid_ids] + list(self.background.parameters())
        groups = [{"params": grid_parameters, "lr": o.grid_learning_rate},
                  {"params": other, "lr": o.mlp_learning_rate}]
        for group in groups:
            group["initial_lr"] = group["lr"]
        self.optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15)
        self.guidance = SDS(teacher, "", config.guidance) if self.processes.world == 1 else \
            RowsSDS(teacher, "", config.guidance)
        self.blank = BlankField(self.device) if self.processes.world > 1 else None
        self.nonfinite_steps = 0

    def text(self, prompt: str) -> torch.Tensor:
        """The teacher's token embeddings [L, D] of ``prompt`` (no view suffix; cached by the teacher)."""
        return self.teacher.encode_text([prompt])[0]

    def bound_field(self, prompt: str, progress: float):
        """G_θ(prompt) with the schedules of ``progress`` applied (coarse-to-fine levels, sdf β)."""
        field_ = self.model.bind(prompt, self.text(prompt))
        field_.active_levels = active_levels(self.config.scene, progress)
        if self.config.scene.geometry == "sdf":
            field_.beta.fill_(sdf_beta_at(self.config.scene, progress))
        return field_

    def update_occupancy(self, prompt: str, field_, generator: torch.Generator) -> OccupancyGrid | None:
        """The occupancy grid of ``prompt``'s hash grid, refreshed from ``field_``'s density on that grid's own
        schedule (every cell while warming up, then every ``occupancy_update_every``-th time it is drawn)."""
        if self.occupancy is None:
            return None
        index = self.model.grid_index(prompt)
        occupancy = self.occupancy[index]
        occupancy.update(field_.density, self.step_size, step=self.grid_updates[index], generator=generator)
        self.grid_updates[index] += 1
        return occupancy

    def step(self, step: int) -> dict[str, float]:
        """One update at ``step`` of ``config.steps`` (a non-finite loss or gradient skips the Adam step and is
        counted in :attr:`nonfinite_steps`). Stats include the drawn prompts."""
        config, r = self.config, self.config.render
        progress = step / max(config.steps, 1)
        generator = torch.Generator().manual_seed(step_seed(config.seed, step))
        torch.manual_seed(step_seed(config.seed, step))  # global draws (e.g. a random background)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * learning_rate_factor(config.optim.final_learning_rate_factor,
                                                                     progress)
        self.model.train()
        self.background.train()
        prompts = draw_prompts(self.prompts, config.prompts_per_step, generator)
        per = config.cameras_per_prompt
        cameras = sample_cameras(len(prompts) * per, config.cameras, generator)
        shading = pick_shading(r, progress, generator)
        light = camera_light(cameras, r, generator)
        resolution = resolution_at(r, progress)
        model_elements = math.prod(self.teacher.model_shape)
        own = self.processes.share(len(prompts))
        images, opacities, regularizers = [], [], {}
        for i, prompt in enumerate(prompts):
            part = slice(i * per, (i + 1) * per)
            if i not in own:  # another process renders it; draw what its occupancy refresh and render draw
                self.replay(prompt, progress, camera_slice(cameras, part), resolution, shading,
                            light_slice(light, part), generator)
                continue
            field_ = self.bound_field(prompt, progress)
            occupancy = self.update_occupancy(prompt, field_, generator)
            out = render(field_, self.background, camera_slice(cameras, part),
                         resolution, shading=shading, light=light_slice(light, part), occupancy=occupancy,
                         **self.render_settings(generator))
            images.append(out.image)
            opacities.append(out.opacity.detach().mean())
            for name, value in regularizer_losses(config.regularizers, out, progress, model_elements).items():
                regularizers[name] = regularizers.get(name, 0.0) + value / len(prompts)
        render_prompts = [prompt for prompt in prompts[own.start:own.stop] for _ in range(per)]
        views = cameras.view_labels()
        if self.processes.world > 1:  # score this process's rows of the global batch
            rows = slice(own.start * per, own.stop * per)
            self.guidance.rows, self.guidance.total, views = rows, len(views), views[rows]
        result = self.guidance(torch.cat(images), views, progress, generator, prompts=render_prompts)
        sds_loss = result["loss"]
        if self.processes.world > 1:  # this process's share of the global batch's mean
            sds_loss = sds_loss * (len(own) / len(prompts))
        loss = sum(regularizers.values(), sds_loss)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        finite = int(result.get("nonfinite", 0)) == 0 and gradients_finite(loss, self.optimizer)
        stats = {"loss": float(loss.detach()), "grad_norm": float(result["grad_norm"]),
                 "opacity": float(torch.stack(opacities).mean()), "t": float(result["t"].float().mean())}
        regularizer_stats = {name: float(value.detach()) for name, value in regularizers.items()}
        if self.processes.world > 1:
            finite, stats, regularizer_stats = self.merge(finite, stats, regularizer_stats,
                                                          len(own) / len(prompts), stream_checksum(generator))
        if finite:
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_steps += 1
        return {**stats, "nonfinite": float(not finite), "prompts": prompts, **regularizer_stats}

    def render_settings(self, generator: torch.Generator) -> dict:
        """The keyword arguments of every training render but the field, cameras, shading, light and occupancy."""
        config, r = self.config, self.config.render
        return dict(step_size=self.step_size, stratified=True, generator=generator,
                    return_normals=config.regularizers.needs_normals,
                    return_distortion=config.regularizers.distortion > 0,
                    distortion_window=math.ceil(config.regularizers.distortion_window / self.step_size),
                    pixel_jitter=r.pixel_jitter, supersample=r.supersample,
                    return_eikonal=config.regularizers.eikonal > 0)

    @torch.no_grad()
    def replay(self, prompt: str, progress: float, cameras: Cameras, resolution: int, shading, light: Light,
               generator: torch.Generator) -> None:
        """Another process's prompt: refresh its grid's occupancy as that process does (the same draws, the same
        densities, so every process keeps the same grids and clocks), then render the blank field with its cameras,
        which draws the random numbers that process's render draws (several processes only)."""
        occupancy = None
        if self.occupancy is not None:
            occupancy = self.update_occupancy(prompt, self.bound_field(prompt, progress), generator)
        render(self.blank, self.background, cameras, resolution, shading=shading, light=light, occupancy=occupancy,
               prune=False, **self.render_settings(generator))

    def merge(self, finite: bool, stats: dict[str, float], regularizers: dict[str, float], share: float,
              checksum: int) -> tuple[bool, dict[str, float], dict[str, float]]:
        """Several processes: every gradient summed over the processes (each loss is its process's share of the
        global loss, so the sum is the global batch's gradient; a parameter no process reached keeps no gradient,
        as in one process), the step skipped everywhere if any process saw a non-finite value, and the step's
        stats of the global batch (means over its renders). Raises if the processes drew different streams."""
        processes = self.processes
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        means = {"loss": 1.0, "grad_norm": share, "opacity": share, "t": share}  # loss: already a share
        slots = torch.zeros(processes.world, dtype=torch.float64)
        slots[processes.rank] = float(checksum)
        meta = torch.cat([torch.tensor([float(not finite)], dtype=torch.float64),
                          torch.tensor([float(p.grad is not None) for p in params], dtype=torch.float64),
                          torch.tensor([stats[k] * w for k, w in means.items()], dtype=torch.float64),
                          torch.tensor(list(regularizers.values()), dtype=torch.float64), slots])
        meta = processes.reduce(meta.to(processes.device)).cpu()
        checksums = meta[-processes.world:]
        if not bool((checksums == checksums[0]).all()):
            raise DreamDistillError("the training processes drew different random numbers in one step (a render "
                                    "draws something that depends on its field); train with one process")
        reached = [p for p, flag in zip(params, meta[1:1 + len(params)].tolist()) if flag > 0]
        if reached:
            flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1) for p in reached])
            processes.reduce(flat)
            for p, grad in zip(reached, flat.split([p.numel() for p in reached])):
                p.grad = grad.view_as(p).clone() if p.grad is None else p.grad.copy_(grad.view_as(p))
        values = meta[1 + len(params):-processes.world].tolist()
        stats = dict(zip(means, values[:len(means)]))
        regularizers = dict(zip(regularizers, values[len(means):]))
        return meta[0].item() == 0, stats, regularizers

    # -- checkpoints
    def state_dict(self) -> dict:
        return {"model": self.model.state_dict(), "background": self.background.state_dict(),
                "optimizer": self.optimizer.state_dict(), "nonfinite_steps": self.nonfinite_steps,
                "occupancy": self.occupancy.state_dict() if self.occupancy is not None else None,
                "grid_updates": list(self.grid_updates)}

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.background.load_state_dict(state["background"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))
        if self.occupancy is not None and state.get("occupancy") is not None:
            self.occupancy.load_state_dict(state["occupancy"])
        self.grid_updates = list(state.get("grid_updates", self.grid_updates))
