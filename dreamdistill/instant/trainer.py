"""One amortised SDS update of the generator G_θ over a batch of training prompts (ATT3D-style).

Each step, with every random draw from the step's own generator (seed, step):
  1. draw ``prompts_per_step`` training prompts y_1..y_P (never a held-out pair: :mod:`.prompts`);
  2. render G_θ(y_i) (:meth:`InstantField.bind`) from ``cameras_per_prompt`` random cameras each, marching only
     the occupied cells of its grid's occupancy grid when the shape depends on the grid alone
     (``modulate: albedo``; each grid's occupancy is refreshed on its own count of updates, as in a per-prompt run);
  3. SDS on the whole batch, each render with its own prompt:
     grad_j = w(t_j) (ε̂_teacher(x_t,j; y_i(j), view_j, cfg) − ε_j), loss = ½‖x − sg(x − grad)‖² / B;
  4. plus each render's regularisers (as in a per-prompt run), one backward, one Adam step on θ.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from dreamdistill.guidance.sds import SDS
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


class InstantTrainer:
    """The generator, the background, Adam and SDS; one :meth:`step` per update."""

    def __init__(self, config: InstantConfig, teacher, prompts: list[str] | None = None):
        self.config, self.teacher = config, teacher
        self.device = teacher.device
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
        self.guidance = SDS(teacher, "", config.guidance)
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
        images, opacities, regularizers = [], [], {}
        for i, prompt in enumerate(prompts):
            part = slice(i * per, (i + 1) * per)
            field_ = self.bound_field(prompt, progress)
            occupancy = self.update_occupancy(prompt, field_, generator)
            out = render(field_, self.background, camera_slice(cameras, part),
                         resolution, shading=shading, light=light_slice(light, part), occupancy=occupancy,
                         step_size=self.step_size, stratified=True, generator=generator,
                         return_normals=config.regularizers.orientation > 0,
                         return_distortion=config.regularizers.distortion > 0,
                         distortion_window=math.ceil(config.regularizers.distortion_window / self.step_size),
                         pixel_jitter=r.pixel_jitter, supersample=r.supersample,
                         return_eikonal=config.regularizers.eikonal > 0)
            images.append(out.image)
            opacities.append(out.opacity.detach().mean())
            for name, value in regularizer_losses(config.regularizers, out, progress, model_elements).items():
                regularizers[name] = regularizers.get(name, 0.0) + value / len(prompts)
        render_prompts = [prompt for prompt in prompts for _ in range(per)]
        result = self.guidance(torch.cat(images), cameras.view_labels(), progress, generator,
                               prompts=render_prompts)
        loss = sum(regularizers.values(), result["loss"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        finite = int(result.get("nonfinite", 0)) == 0 and gradients_finite(loss, self.optimizer)
        if finite:
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_steps += 1
        return {"loss": float(loss.detach()), "grad_norm": float(result["grad_norm"]),
                "opacity": float(torch.stack(opacities).mean()), "t": float(result["t"].float().mean()),
                "nonfinite": float(not finite), "prompts": prompts,
                **{name: float(value.detach()) for name, value in regularizers.items()}}

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
