"""Variational score distillation (ProlificDreamer): grad = w(t) (ε̂_teacher(x_t; y, cfg) − ε̂_critic(x_t; y, c)).

The critic s_ζ is a LoRA on the teacher's own UNet (peft, adapter "vsd_critic"), made
camera-conditioned by adding an MLP embedding of the camera to the UNet's time embedding
(a forward hook on ``unet.time_embedding`` that is active only while the critic runs).
With the adapter switched off and the hook idle the UNet is exactly the frozen teacher.
The critic's LoRA tensors and camera MLP (nothing else) are trained by denoising score matching
on the current renders (detached), in the teacher's prediction type, with their own AdamW,
``steps_per_scene_step`` steps per scene step and condition dropout for the critic's own CFG.
Replacing ε̂_critic by the sampled noise ε (s_ζ ≡ 0 in score terms) recovers SDS.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Annotated

import torch

from dreamdistill.config import Range
from dreamdistill.diffusion.denoiser import Denoiser, Prediction, classifier_free_guidance
from dreamdistill.diffusion.dsm import denoising_loss
from dreamdistill.diffusion.schedule import add_noise
from dreamdistill.errors import DreamDistillError
from dreamdistill.guidance.sds import (
    SDS,
    GuidanceConfig,
    distillation_gradient,
    draw_device,
    nonfinite_elements,
    residual_rms,
    sample_timesteps,
    surrogate_loss,
    timestep_weight,
)

ADAPTER_NAME = "vsd_critic"


@dataclass
class CriticConfig:
    """The VSD critic (LoRA + camera embedding) and its training."""

    lora_rank: Annotated[int, Range(1, 1024)] = 8
    lora_alpha: Annotated[float, Range(0, 1e4, open_low=True)] = 8.0
    learning_rate: Annotated[float, Range(0, 1, open_low=True)] = 1e-3
    steps_per_scene_step: Annotated[int, Range(1, 100)] = 1
    condition_dropout: Annotated[float, Range(0, 1)] = 0.1
    """Probability of dropping text and camera when training the critic (for its CFG)."""
    guidance_scale: Annotated[float, Range(0, 1000)] = 1.0
    """CFG of the critic's own prediction (ProlificDreamer: 1)."""
    t_range: Annotated[tuple[float, float], Range(0, 1, ordered=True)] = (0.02, 0.98)


class CameraEmbedding(torch.nn.Module):
    """Camera descriptor [B, 6] -> time-embedding offset [B, D]; the last layer starts at zero."""

    def __init__(self, time_dim: int, camera_dim: int = 6, hidden: int = 128):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(camera_dim, hidden), torch.nn.SiLU(),
                                       torch.nn.Linear(hidden, time_dim))
        torch.nn.init.zeros_(self.net[-1].weight)
        torch.nn.init.zeros_(self.net[-1].bias)

    def forward(self, camera: torch.Tensor) -> torch.Tensor:
        return self.net(camera)


class LoRACritic(torch.nn.Module):
    """s_ζ: LoRA adapter on the teacher's UNet plus a camera embedding added to the time embedding.

    The adapter is switched by flipping each LoRA layer's own on/off flag (a cached list of layers, no module
    walk, and — unlike peft's ``disable_adapters`` — no change to ``requires_grad``): a forward pass run while the
    critic is on keeps its LoRA tensors in the autograd graph, so ``backward`` after the context still reaches
    them. :meth:`close` removes the adapter and the hook, leaving the teacher as it was.
    """

    def __init__(self, teacher, config: CriticConfig):
        super().__init__()
        from peft import LoraConfig
        from peft.tuners.tuners_utils import BaseTunerLayer

        self.teacher, self.config = teacher, config
        unet = teacher.unet
        lora = LoraConfig(r=config.lora_rank, lora_alpha=config.lora_alpha, init_lora_weights=True,
                          target_modules=["to_q", "to_k", "to_v", "to_out.0"])
        unet.add_adapter(lora, adapter_name=ADAPTER_NAME)
        self._lora_layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
        for name, parameter in unet.named_parameters():
            parameter.requires_grad_(ADAPTER_NAME in name)
        # LoRA weights train in float32 even when the teacher runs in half precision.
        self.lora_parameters = [p for n, p in unet.named_parameters() if ADAPTER_NAME in n]
        for p in self.lora_parameters:
            p.data = p.data.float()
        time_dim = unet.time_embedding.linear_2.out_features
        self.camera_embedding = CameraEmbedding(time_dim).to(teacher.device)
        self._camera: torch.Tensor | None = None
        self._rows: torch.Tensor | None = None
        """Per-row switch [N] of a mixed call (1: critic row, 0: frozen-teacher row); None: every row is the critic."""
        self._hook = unet.time_embedding.register_forward_hook(self._add_camera)
        self._row_hooks = [layer.lora_B[ADAPTER_NAME].register_forward_hook(self._mask_rows)
                           for layer in self._lora_layers if ADAPTER_NAME in getattr(layer, "lora_B", {})]
        self._switch(False)

    def _switch(self, on: bool) -> None:
        """Adapter on (the UNet is the critic) or off (the frozen teacher); requires_grad is left alone."""
        for layer in self._lora_layers:
            layer._disable_adapters = not on  # peft's own flag, read by every LoRA layer's forward

    def _add_camera(self, module, inputs, output):
        if self._camera is None:
            return output
        offset = self.camera_embedding(self._camera).to(output.dtype)
        return output + (offset if self._rows is None else offset * self._rows[:, None].to(offset.dtype))

    def _mask_rows(self, module, inputs, output):
        """The LoRA term of each row times its switch (a teacher row's term is exactly 0)."""
        if self._rows is None:
            return output
        return output * self._rows.reshape(-1, *([1] * (output.dim() - 1))).to(output.dtype)

    def close(self) -> None:
        """Remove the adapter and the hooks: the teacher's UNet is exactly as before the critic (idempotent)."""
        if self._hook is None:
            return
        self._hook.remove()
        self._hook = None
        for hook in self._row_hooks:
            hook.remove()
        self.teacher.unet.delete_adapters(ADAPTER_NAME)
        self._lora_layers = []

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return self.lora_parameters + list(self.camera_embedding.parameters())

    def adapter_state_dict(self) -> dict[str, dict[str, torch.Tensor]]:
        """The critic's own weights (LoRA tensors by UNet parameter name, camera MLP), for checkpoints."""
        lora = {n: p.detach().cpu().clone() for n, p in self.teacher.unet.named_parameters() if ADAPTER_NAME in n}
        return {"lora": lora, "camera_embedding": self.camera_embedding.state_dict()}

    def load_adapter_state_dict(self, state: dict[str, dict[str, torch.Tensor]]) -> None:
        """Restore weights saved by :meth:`adapter_state_dict` (in place, so optimiser references stay valid)."""
        parameters = dict(self.teacher.unet.named_parameters())
        missing = set(state["lora"]) ^ {n for n in parameters if ADAPTER_NAME in n}
        if missing:
            raise ValueError(f"critic checkpoint does not match the UNet ({len(missing)} LoRA tensors differ)")
        with torch.no_grad():
            for name, value in state["lora"].items():
                parameters[name].copy_(value)
        self.camera_embedding.load_state_dict(state["camera_embedding"])

    @contextlib.contextmanager
    def active(self, camera: torch.Tensor | None):
        """Within this context the teacher's UNet is the critic (adapter on, camera added)."""
        self._switch(True)
        self._camera = camera
        try:
            yield
        finally:
            self._camera = None
            self._switch(False)

    def network(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, camera: torch.Tensor) -> torch.Tensor:
        """The critic's raw output f_ζ(x_t; y, c) in the teacher's prediction type (float32)."""
        with self.active(camera):
            return self.teacher.model_output(x_t, t, text)

    def mixed_output(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor, camera: torch.Tensor,
                     critic_rows: torch.Tensor) -> torch.Tensor:
        """Raw outputs [N, C, H, W] of one UNet call in which the rows where ``critic_rows`` [N] is 1 are the critic
        (LoRA term and camera offset on) and the others the frozen teacher (both multiplied by 0): peft's
        mixed-batch idea, with the switch as a per-row factor so that the call keeps one static graph."""
        self._rows = critic_rows
        try:
            return self.network(x_t, t, text, camera)
        finally:
            self._rows = None

    def denoiser(self) -> Denoiser:
        """The critic behind the project's one denoiser convention (its CFG drops text and camera together)."""
        return Denoiser(self.network, self.teacher.schedule, self.teacher.uncond_embedding)

    def predict_eps(self, x_t, t, text, camera, guidance_scale: float | None = None) -> torch.Tensor:
        """ε̂_critic(x_t; y, c) with the critic's CFG (unconditional = empty prompt and no camera)."""
        scale = self.config.guidance_scale if guidance_scale is None else guidance_scale
        prediction = self.denoiser()(x_t, t, text, scale, camera=camera,
                                     uncond_conditions={"camera": torch.zeros_like(camera)})
        return prediction.eps

    def denoising_loss(self, x0: torch.Tensor, text: torch.Tensor, camera: torch.Tensor,
                       generator: torch.Generator | None = None, *, t: torch.Tensor | None = None,
                       eps: torch.Tensor | None = None) -> torch.Tensor:
        """DSM on renders x0 (model space): ‖f_ζ(α x0 + σ ε; y, c) − target‖², target in the teacher's prediction
        type; t uniform in ``t_range`` and ε ~ N(0, I) unless given; text and camera dropped together with
        probability ``condition_dropout``."""
        batch = x0.shape[0]
        schedule = self.teacher.schedule
        if t is None:
            low, high = self.config.t_range
            t = sample_timesteps(batch, low, high, schedule.num_train_timesteps, generator)
        t = t.to(x0.device)
        device = draw_device(generator)
        eps = torch.randn(x0.shape, generator=generator, device=device).to(x0) if eps is None else eps.to(x0)
        alpha, sigma = schedule.alpha_sigma(t)
        x_t = add_noise(x0=x0.float(), eps=eps.float(), alpha=alpha, sigma=sigma)
        drop = torch.rand(batch, generator=generator, device=device).to(x0.device) < self.config.condition_dropout
        text = torch.where(drop[:, None, None], self.teacher.uncond_embedding(batch), text)
        camera = torch.where(drop[:, None], torch.zeros_like(camera), camera)
        return denoising_loss(self.network(x_t, t, text, camera), x0=x0, eps=eps, alpha=alpha, sigma=sigma,
                              prediction_type=schedule.prediction_type)


class VSD(SDS):
    """VSD: SDS's noising and surrogate loss, with the critic's ε̂ in place of the sampled ε."""

    def __init__(self, teacher, prompt: str, config: GuidanceConfig, critic_config: CriticConfig,
                 fast: bool = False):
        super().__init__(teacher, prompt, config)
        if config.space != "latent":
            raise DreamDistillError("guidance.space: image is for SDS; VSD takes its step in the teacher's model "
                                    "space: use guidance.space=latent")
        self.critic = LoRACritic(teacher, critic_config)
        self.critic_optimizer = torch.optim.AdamW(self.critic.trainable_parameters(), lr=critic_config.learning_rate,
                                                  fused=fast or None)
        self.one_call = fast
        """ε̂_teacher and ε̂_critic from one UNet call (:meth:`teacher_and_critic_eps`) where the settings allow."""

    def teacher_and_critic_eps(self, x_t: torch.Tensor, t: torch.Tensor, text: torch.Tensor,
                               camera: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ε̂_teacher(x_t; y, w) and ε̂_critic(x_t; y, c, w_critic) from one UNet call (:meth:`LoRACritic.mixed_output`)
        on the rows [teacher uncond, teacher cond, critic uncond, critic cond] (an unguided side, w = 1, has its
        cond rows only; the critic's uncond rows drop text and camera), each CFG on the raw output as in
        :class:`Denoiser`. The same predictions as :meth:`teacher_eps` and :meth:`LoRACritic.predict_eps`."""
        batch, device = x_t.shape[0], x_t.device
        w_teacher, w_critic = self.config.guidance_scale, self.critic.config.guidance_scale
        uncond, no_camera = self.teacher.uncond_embedding(batch), torch.zeros_like(camera)
        blocks = {"teacher_uncond": (uncond, no_camera, 0.0), "teacher": (text, no_camera, 0.0),
                  "critic_uncond": (uncond, no_camera, 1.0), "critic": (text, camera, 1.0)}
        if w_teacher == 1.0:
            del blocks["teacher_uncond"]
        if w_critic == 1.0:
            del blocks["critic_uncond"]
        rows = torch.cat([torch.full((batch,), flag, device=device) for _, _, flag in blocks.values()])
        out = self.critic.mixed_output(x_t.repeat(len(blocks), 1, 1, 1), t.repeat(len(blocks)),
                                       torch.cat([b[0] for b in blocks.values()]),
                                       torch.cat([b[1] for b in blocks.values()]), rows)
        out = dict(zip(blocks, out.chunk(len(blocks))))

        def guided(name: str, w: float) -> torch.Tensor:
            if w == 1.0:
                return out[name]
            return classifier_free_guidance(out[f"{name}_uncond"], out[name], torch.tensor(w, device=device))

        alpha, sigma = self.teacher.schedule.alpha_sigma(t)

        def eps(raw: torch.Tensor) -> torch.Tensor:
            return Prediction(raw, x_t.float(), alpha, sigma, self.teacher.schedule.prediction_type).eps

        return eps(guided("teacher", w_teacher)), eps(guided("critic", w_critic))

    def one_call_applies(self, views: list[str] | None) -> bool:
        """Whether :meth:`teacher_and_critic_eps` can stand in for the separate calls (plain CFG teacher, no view
        contrast)."""
        contrast = self.config.view_contrast and views is not None and self.config.view_prompts
        return self.one_call and not contrast and not self.teacher.info.guidance_embedding

    def __call__(self, images: torch.Tensor, views: list[str] | None = None, progress: float = 0.0,
                 generator: torch.Generator | None = None, camera: torch.Tensor | None = None):
        """Generator surrogate loss for renders [B, 3, H, W]; ``camera`` is the [B, 6] descriptor."""
        batch = images.shape[0]
        camera = torch.zeros(batch, 6, device=self.teacher.device) if camera is None else camera.to(
            self.teacher.device)
        x, t, eps, x_t, alpha, sigma = self.noised(images, progress, generator)
        text = self.text_for(views, batch)
        with torch.no_grad():
            if self.one_call_applies(views):
                eps_teacher, eps_critic = self.teacher_and_critic_eps(x_t, t, text, camera)
            else:
                eps_teacher = self.teacher_eps(x_t, t, text, views)
                eps_critic = self.critic.predict_eps(x_t, t, text, camera)
        weight = timestep_weight(alpha, sigma, self.config.weighting).float()
        grad = distillation_gradient(eps_teacher, eps_critic, weight, self.config.grad_clip)
        return {"loss": surrogate_loss(x, grad), "grad_norm": grad.flatten(1).norm(dim=1).mean(), "t": t,
                "eps": eps, "residual_rms": residual_rms(eps_teacher, eps_critic), "model_x": x.detach(), "text": text,
                "camera": camera, "nonfinite": nonfinite_elements(eps_teacher, eps_critic)}

    def train_critic(self, model_x: torch.Tensor, text: torch.Tensor, camera: torch.Tensor,
                     generator: torch.Generator | None = None, skip: torch.Tensor | None = None) -> torch.Tensor:
        """Several DSM steps of the critic on the current (detached) renders in model space; returns their mean
        loss (0-dim tensor). ``skip`` (0-dim float tensor, fused optimiser only): where it is 1 the optimiser
        leaves weights and state as they were, decided on the device without a host sync."""
        losses = []
        for _ in range(self.critic.config.steps_per_scene_step):
            loss = self.critic.denoising_loss(model_x.detach(), text, camera, generator)
            self.critic_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.critic_optimizer.found_inf = skip
            self.critic_optimizer.step()
            losses.append(loss.detach())
        return torch.stack(losses).mean()

    def after_step(self, result: dict, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        """The critic's DSM steps on this step's renders (skipped on the device where ``result["skip"]`` is 1)."""
        return {"critic_loss": self.train_critic(result["model_x"], result["text"], result["camera"], generator,
                                                 skip=result.get("skip"))}

    def state_dict(self) -> dict:
        return {"critic": self.critic.adapter_state_dict(), "critic_optimizer": self.critic_optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if "critic" in state:
            self.critic.load_adapter_state_dict(state["critic"])
            self.critic_optimizer.load_state_dict(state["critic_optimizer"])

    def close(self) -> None:
        self.critic.close()
