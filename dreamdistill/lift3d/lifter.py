"""One text-to-3D update: the scene, its optimiser and the guidance (SDS or VSD) for one prompt."""

from __future__ import annotations

import hashlib
import math

import torch

from dreamdistill.guidance.sds import SDS
from dreamdistill.guidance.vsd import VSD
from dreamdistill.lift3d import fast_path
from dreamdistill.lift3d.config import LiftConfig
from dreamdistill.lift3d.regularizers import regularizer_losses
from dreamdistill.lift3d.scene import build_scene, marching_step, render_orbit
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
from dreamdistill.render.volume import Shading, render


def field_digest(field) -> str:
    """SHA-1 of a field's parameters (to tell whether training moved them at all)."""
    digest = hashlib.sha1()
    for tensor in field.state_dict().values():
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def gradients_finite(loss: torch.Tensor, optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``loss`` and the gradient of every parameter ``optimizer`` steps are free of NaN and infinity."""
    checks = [torch.isfinite(loss.detach()).all()]
    checks += [torch.isfinite(p.grad).all() for group in optimizer.param_groups for p in group["params"]
               if p.grad is not None]
    return bool(torch.stack(checks).all())


def make_guidance(config: LiftConfig, teacher, fast: bool = False) -> SDS:
    """The guidance of ``config.method``: SDS, or VSD (SDS with a LoRA critic) for "vsd" (``fast``: fused AdamW
    and one UNet call for the teacher's and the critic's predictions)."""
    if config.method == "vsd":
        return VSD(teacher, config.prompt, config.guidance, config.critic, fast=fast)
    return SDS(teacher, config.prompt, config.guidance)


class Lifter:
    """Field, background, occupancy grid, optimiser and guidance for one prompt; one :meth:`step` per update."""

    def __init__(self, config: LiftConfig, teacher):
        self.config, self.teacher = config, teacher
        self.device = teacher.device
        init_seed = config.scene.init_seed
        torch.manual_seed(config.seed if init_seed is None else init_seed)
        self.field, self.background, self.occupancy = build_scene(config, self.device)
        self.step_size = marching_step(config.render)
        o = config.optim
        groups = [{"params": list(self.field.grid.parameters()), "lr": o.grid_learning_rate},
                  {"params": list(self.field.mlp.parameters()) + list(self.background.parameters()),
                   "lr": o.mlp_learning_rate}]
        for group in groups:
            group["initial_lr"] = group["lr"]
        self.fast_path = fast_path.fast_path_enabled(config.guidance.optimise, teacher)
        """The optimised step (:mod:`dreamdistill.lift3d.fast_path`): stats come back as device tensors."""
        self.optimizer = torch.optim.Adam(groups, betas=(0.9, 0.99), eps=1e-15, fused=self.fast_path or None)
        if self.fast_path:
            fast_path.compile_teacher(teacher)
        self.guidance = make_guidance(config, teacher, fast=self.fast_path)
        self.nonfinite_steps = 0
        self.initial_digest = field_digest(self.field)
        """The field's parameters at initialisation (the same for a resumed run: same seed)."""

    @property
    def nonfinite_steps(self) -> int:
        """Steps skipped because their loss or gradient was NaN or infinite (saved in checkpoints; on the fast path
        the count lives on the device and reading it waits for the device)."""
        return int(self._nonfinite_steps)

    @nonfinite_steps.setter
    def nonfinite_steps(self, value: int) -> None:
        self._nonfinite_steps = value

    # -- one update
    def step(self, step: int) -> dict[str, float] | dict[str, torch.Tensor]:
        """One scene update (and, for VSD, the critic's updates) at ``step`` of ``config.steps``.

        A step whose loss or gradients hold a NaN or an infinity (or whose guidance reports non-finite
        predictions) changes nothing — no optimiser step, so scene and Adam state stay as they were, and no
        critic update — and is counted in :attr:`nonfinite_steps`; its stats say ``nonfinite: 1``. On the fast path
        the same is decided on the device and the stats are 0-dim device tensors (no host sync)."""
        config, r = self.config, self.config.render
        if self.fast_path:
            fast_path.cudagraph_step_begin(self.device)
        progress = step / max(config.steps, 1)
        generator = torch.Generator().manual_seed(step_seed(config.seed, step))
        torch.manual_seed(step_seed(config.seed, step))  # global draws (e.g. a random background)
        for group in self.optimizer.param_groups:
            group["lr"] = group["initial_lr"] * learning_rate_factor(config.optim.final_learning_rate_factor,
                                                                     progress)
        self.field.train()
        self.field.active_levels = active_levels(config.scene, progress)
        if config.scene.geometry == "sdf":
            self.field.beta.fill_(sdf_beta_at(config.scene, progress))
        self.background.train()
        if self.occupancy is not None:
            self.occupancy.update(self.field.density, self.step_size, step=step, generator=generator)
        cameras = sample_cameras(r.batch_size, config.cameras, generator)
        shading = pick_shading(r, progress, generator)
        light = camera_light(cameras, r, generator)
        resolution = resolution_at(r, progress)
        out = render(self.field, self.background, cameras, resolution, shading=shading, light=light,
                     occupancy=self.occupancy, step_size=self.step_size, stratified=True, generator=generator,
                     return_normals=config.regularizers.needs_normals,
                     return_distortion=config.regularizers.distortion > 0,
                     distortion_window=math.ceil(config.regularizers.distortion_window / self.step_size),
                     pixel_jitter=r.pixel_jitter,
                     supersample=r.supersample,
                     return_eikonal=config.regularizers.eikonal > 0)
        views = cameras.view_labels()
        guidance_generator = (fast_path.guidance_generator(step_seed(config.seed, step), generator, self.device)
                              if self.fast_path else generator)
        result = self.guidance(out.image, views, progress, guidance_generator, camera=cameras.embedding())
        model_elements = math.prod(self.teacher.model_shape)
        regularizers = regularizer_losses(config.regularizers, out, progress, model_elements)
        loss = sum(regularizers.values(), result["loss"])
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.fast_path:
            return self._fast_update(loss, result, out, regularizers, guidance_generator)
        finite = int(result.get("nonfinite", 0)) == 0 and self.gradients_finite(loss)
        if finite:
            self.optimizer.step()
        else:
            self.optimizer.zero_grad(set_to_none=True)
            self.nonfinite_steps += 1
        stats = {"loss": float(loss.detach()), "grad_norm": float(result["grad_norm"]),
                 "opacity": float(out.opacity.detach().mean()), "t": float(result["t"].float().mean()),
                 "residual_rms": float(result["residual_rms"]), "nonfinite": float(not finite),
                 **{name: float(value.detach()) for name, value in regularizers.items()}}
        if finite:
            stats.update({k: float(v) for k, v in self.guidance.after_step(result, generator).items()})
        return stats

    def _fast_update(self, loss, result, out, regularizers, generator) -> dict[str, torch.Tensor]:
        """The fast path's optimiser steps: a non-finite step is skipped by the fused optimisers on the device."""
        parameters = [p for group in self.optimizer.param_groups for p in group["params"]]
        skip = fast_path.nonfinite_flag(loss, result, parameters)
        self.optimizer.found_inf = skip
        self.optimizer.step()
        self._nonfinite_steps = skip + self._nonfinite_steps
        stats = {"loss": loss.detach(), "grad_norm": result["grad_norm"].detach(),
                 "opacity": out.opacity.detach().mean(), "t": result["t"].float().mean(),
                 "residual_rms": result["residual_rms"].detach(), "nonfinite": skip,
                 **{name: value.detach() for name, value in regularizers.items()}}
        stats.update(self.guidance.after_step({**result, "skip": skip}, generator))
        return stats

    def gradients_finite(self, loss: torch.Tensor) -> bool:
        """Whether the loss and every scene gradient are free of NaN and infinity (one device sync)."""
        return gradients_finite(loss, self.optimizer)

    def field_moved(self) -> bool:
        """Whether the field's parameters differ from their initial values."""
        return field_digest(self.field) != self.initial_digest

    # -- views
    def render_views(self, cameras: Cameras, resolution: int, shading: Shading = "diffuse") -> torch.Tensor:
        """Deterministic renders [B, 3, H, W] with the training light (:func:`render_orbit`)."""
        return render_orbit(self.field, self.background, self.occupancy, self.config.render, cameras, resolution,
                            shading)

    # -- checkpoints
    def state_dict(self) -> dict:
        state = {"field": self.field.state_dict(), "background": self.background.state_dict(),
                 "optimizer": self.optimizer.state_dict(), "nonfinite_steps": self.nonfinite_steps,
                 "occupancy": self.occupancy.state_dict() if self.occupancy is not None else None}
        return {**state, **self.guidance.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.field.load_state_dict(state["field"])
        self.background.load_state_dict(state["background"])
        self.optimizer.load_state_dict(state["optimizer"])
        fast_path.keep_optimizer_mode(self.optimizer, self.fast_path)
        if self.occupancy is not None and state.get("occupancy") is not None:
            self.occupancy.load_state_dict(state["occupancy"])
        self.guidance.load_state_dict(state)
        if hasattr(self.guidance, "critic_optimizer"):
            fast_path.keep_optimizer_mode(self.guidance.critic_optimizer, self.fast_path)
        self.nonfinite_steps = int(state.get("nonfinite_steps", 0))

    def close(self) -> None:
        """Undo the guidance's changes to the shared teacher (VSD's adapter and hook)."""
        self.guidance.close()
