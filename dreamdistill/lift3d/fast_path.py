"""The fast text-to-3D step (issue #16): what ``guidance.optimise: on`` switches on, and when ``auto`` does.

With the fast path a :class:`~dreamdistill.lift3d.lifter.Lifter` step

- runs the teacher's fixed-shape calls compiled (:meth:`Teacher.compile`: UNet, VAE encoder with its backward;
  CUDA graphs on a GPU, shapes kept static);
- for VSD, gets ε̂_teacher and ε̂_critic from one UNet call (a mixed batch: the critic's LoRA term and camera
  offset switched per row, :meth:`VSD.teacher_and_critic_eps`), so the adapter is never toggled between calls;
- steps the scene and the VSD critic with fused Adam / AdamW, and skips a non-finite step on the device (the
  optimisers' ``found_inf``: weights, moments and step counts stay as they were) instead of asking the host;
- draws the guidance's randomness (timesteps, noise, critic draws) on the device from a generator seeded by the
  step's seed, so a resumed run still replays the same streams;
- returns its stats as device tensors: the run loop converts and writes them every :data:`LOG_EVERY` steps.

The renderer still decides on the host which samples to march (``render/volume.py``), so a step is not yet
free of host synchronisation as a whole; the teacher, guidance and optimiser parts are.
"""

from __future__ import annotations

import torch

from dreamdistill.guidance.sds import Optimise

COMPILE_BACKEND = "inductor"
"""``torch.compile`` backend of the teacher's calls (CPU tests use "aot_eager_decomp_partition": the same traced
graphs run by eager kernels, no C++ compiling)."""
LOG_EVERY = 25
"""With the fast path, steps between log writes (each write is one host sync)."""
GUIDANCE_SEED_OFFSET = 1
"""The device generator's seed is the step seed plus this (a stream of its own, not the CPU one replayed)."""


def fast_path_enabled(mode: Optimise, teacher) -> bool:
    """true (on) / false (off) as given; ``auto``: on for a latent (Stable-Diffusion-class) teacher on CUDA, where the
    teacher's calls dominate a step and the run is long enough to repay compiling them."""
    if mode == "auto":
        return teacher.device.type == "cuda" and teacher.info.format == "latent"
    return mode is True


def compile_teacher(teacher, backend: str | None = None) -> None:
    """Compile the teacher's UNet and VAE encoder in place; CUDA graphs ("reduce-overhead") on a GPU."""
    mode = "reduce-overhead" if teacher.device.type == "cuda" else None
    teacher.compile(backend=backend or COMPILE_BACKEND, mode=mode)


def guidance_generator(step_seed: int, generator: torch.Generator, device: torch.device) -> torch.Generator:
    """The generator of the guidance's draws: the step's own (CPU) generator on the CPU, so that there the fast
    path draws exactly what the eager path draws; on a GPU a generator on the device seeded from the step seed."""
    if device.type == "cpu":
        return generator
    return torch.Generator(device).manual_seed((step_seed + GUIDANCE_SEED_OFFSET) % (2**63 - 1))


def nonfinite_flag(loss: torch.Tensor, result: dict, parameters: list[torch.Tensor]) -> torch.Tensor:
    """1.0 where the loss, a guidance prediction (``result["nonfinite"]``) or a gradient of ``parameters`` holds
    a NaN or an infinity, else 0.0: a float32 scalar on the loss's device, computed without a host sync."""
    checks = [torch.isfinite(loss.detach()).all()]
    checks += [torch.isfinite(p.grad).all() for p in parameters if p.grad is not None]
    finite = torch.stack(checks).all()
    if "nonfinite" in result:
        finite = finite & (torch.as_tensor(result["nonfinite"], device=finite.device) == 0)
    return (~finite).float()


def keep_optimizer_mode(optimizer: torch.optim.Optimizer, fused: bool) -> None:
    """After ``load_state_dict`` (whose checkpoint may come from the other path, which it copies the flags of):
    the optimiser's own mode back, and its step counters where that mode keeps them (the parameter's device when
    fused, the CPU otherwise)."""
    for group in optimizer.param_groups:
        group["fused"] = fused or None
        if fused:
            group["foreach"] = None
        for parameter in group["params"]:
            state = optimizer.state.get(parameter, {})
            if torch.is_tensor(state.get("step")):
                state["step"] = state["step"].to(parameter.device if fused else "cpu", torch.float32)


def cudagraph_step_begin(device: torch.device) -> None:
    """Tell torch.compile's CUDA-graph trees that a new training iteration starts (their outputs may be reused)."""
    if device.type == "cuda":
        torch.compiler.cudagraph_mark_step_begin()
