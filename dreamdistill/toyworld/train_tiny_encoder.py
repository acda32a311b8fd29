"""The ``tiny_encoder`` stage of toy-sd's training: regress a :class:`TinyEncoder` onto the frozen VAE's latents.

    L = ‖ z_tiny(resize(x, input_size)) − scaling_factor · mean(VAE.encode(x)) ‖²          (x: a 128-px training render)

The targets are the ``latents`` stage's cached posterior means, so the stage costs only the tiny encoder's own
steps. Its held-out error (the data set's last ``held_out`` renders, encoded here by the VAE) is logged as the
relative RMS error ‖z_tiny − z‖ / ‖z‖. Checkpointed in ``work_dir/tiny_encoder.pt`` and resumed like every stage;
the export writes it into the pipeline folder as ``tiny_encoder/``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from dreamdistill.diffusion.teacher import LATENT_NOTES_NAME, TINY_ENCODER_DIR, resize
from dreamdistill.diffusion.tiny_encoder import TinyEncoder
from dreamdistill.fileio import torch_save_atomic, write_json_atomic
from dreamdistill.interrupt import StopRequest
from dreamdistill.toyworld.train_sd_teacher import (
    LATENT_FACTOR,
    SDTeacherTrainConfig,
    StageTimer,
    _end_stage,
    _load_stage,
    _log,
    _restore,
    step_generator,
    to_model_space,
    trained_vae,
    training_count,
)

CHECKPOINT_NAME = "tiny_encoder.pt"


def tiny_inputs(images: torch.Tensor, input_size: int) -> torch.Tensor:
    """uint8 renders [B, 3, H, W] → the tiny encoder's input: [0, 1] floats at ``input_size`` (antialiased)."""
    return resize(images.float() / 255, input_size)


def regression_loss(encoder: TinyEncoder, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the tiny encoder's latents of uint8 ``images`` and scaled VAE latents."""
    return F.mse_loss(encoder(tiny_inputs(images, encoder.config.input_size)), targets)


def relative_error(encoder: TinyEncoder, images: torch.Tensor, targets: torch.Tensor) -> float:
    """‖z_tiny − z‖ / ‖z‖ over a batch (0: exact; 1: as far off as predicting zeros)."""
    with torch.no_grad():
        predicted = encoder(tiny_inputs(images, encoder.config.input_size))
    return float((predicted - targets).norm() / targets.norm())


@torch.no_grad()
def held_out_targets(config: SDTeacherTrainConfig, images: torch.Tensor, scale: float) -> torch.Tensor:
    """Scaled VAE latents (posterior means) of the held-out renders."""
    vae = trained_vae(config, decoder=False).to(config.device).eval()
    return torch.cat([vae.encode(to_model_space(images[i: i + 64]).to(config.device)).latent_dist.mean.cpu() * scale
                      for i in range(0, images.shape[0], 64)])


def build_tiny_encoder(config: SDTeacherTrainConfig) -> TinyEncoder:
    """Input at half the teacher's resolution, latents at the VAE's size (three levels: factor 4)."""
    encoder = TinyEncoder(input_size=config.resolution // 2)
    assert encoder.latent_size == config.resolution // LATENT_FACTOR
    return encoder


def stage_tiny_encoder(config: SDTeacherTrainConfig, images: torch.Tensor, latents: dict) -> None:
    """Train (or resume) the tiny encoder on the cached latents; ``tiny_encoder.pt`` in the work folder."""
    from tqdm import tqdm

    work_dir = Path(config.work_dir)
    path = work_dir / CHECKPOINT_NAME
    state = _load_stage(path, ("encoder", "step", "finished"))
    if config.tiny_encoder_steps == 0 or state is not None and state["finished"]:
        return
    device = torch.device(config.device)
    scale = float(latents["scaling_factor"])
    targets = latents["latents"].float() * scale
    count = min(training_count(config, images.shape[0]), targets.shape[0])
    held_out = images[-config.held_out:] if config.held_out else images[:0]
    held_targets = held_out_targets(config, held_out, scale) if len(held_out) else None
    encoder = build_tiny_encoder(config).to(device)
    optimizer = torch.optim.AdamW(encoder.parameters(), lr=config.tiny_encoder_learning_rate, weight_decay=0.0)
    step = 0
    if state is not None:
        _restore(encoder, state["encoder"], path)
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        print(f"tiny encoder: resumed at step {step}", flush=True)

    def save(finished: bool) -> None:
        torch_save_atomic(path, {"encoder": encoder.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                                 "finished": finished})

    timer, stop = StageTimer(config.checkpoint_minutes, config.tiny_encoder_minutes), StopRequest()
    bar = tqdm(total=config.tiny_encoder_steps, initial=step, desc="toy-sd tiny encoder", unit="step")
    encoder.train()
    while step < config.tiny_encoder_steps and not stop.requested and not timer.out_of_time():
        generator = step_generator(config.seed, "tiny_encoder", step)
        index = torch.randint(0, count, (config.tiny_encoder_batch_size,), generator=generator)
        for group in optimizer.param_groups:
            group["lr"] = cosine_rate(config.tiny_encoder_learning_rate, step, config.tiny_encoder_steps)
        loss = regression_loss(encoder, images[index].to(device), targets[index].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 100 == 0:
            record = {"stage": "tiny_encoder", "step": step, "loss": round(loss.item(), 6)}
            if held_targets is not None:
                record["val_relative_error"] = round(relative_error(encoder, held_out, held_targets), 4)
            _log(work_dir, record)
        if timer.checkpoint_due():
            save(False)
    _end_stage("tiny encoder", step, bar, stop, save)


def cosine_rate(peak: float, step: int, steps: int) -> float:
    """Cosine decay from ``peak`` to 0 over ``steps``."""
    return 0.5 * peak * (1 + math.cos(math.pi * min(step / max(steps, 1), 1.0)))


def export_tiny_encoder(config: SDTeacherTrainConfig, folder: Path) -> bool:
    """Write ``folder/tiny_encoder/`` (fp16 safetensors) from a finished stage; False when there is none."""
    path = Path(config.work_dir) / CHECKPOINT_NAME
    state = _load_stage(path, ("encoder", "finished"))
    if state is None or not state["finished"]:
        return False
    encoder = build_tiny_encoder(config)
    _restore(encoder, state["encoder"], path)
    encoder.half().save_pretrained(Path(folder) / TINY_ENCODER_DIR, safe_serialization=True)
    return True


def add_to_folder(config: SDTeacherTrainConfig, folder: Path) -> bool:
    """Give an already exported pipeline ``folder`` this work folder's finished tiny encoder (replacing its own) and
    record the stage's steps and settings in its notes; the rest of the folder is left as it is. False when
    ``folder`` is not a pipeline folder or the stage has not finished."""
    import json
    import shutil

    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        return False
    staging = folder / (TINY_ENCODER_DIR + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    if not export_tiny_encoder(config, staging):
        shutil.rmtree(staging)
        return False
    shutil.rmtree(folder / TINY_ENCODER_DIR, ignore_errors=True)
    (staging / TINY_ENCODER_DIR).rename(folder / TINY_ENCODER_DIR)
    staging.rmdir()
    notes_path = folder / LATENT_NOTES_NAME
    notes = json.loads(notes_path.read_text()) if notes_path.is_file() else {}
    state = torch.load(Path(config.work_dir) / CHECKPOINT_NAME, map_location="cpu")
    notes.setdefault("trained_steps", {})["tiny_encoder"] = int(state["step"])
    recipe = Path(config.work_dir) / "config-tiny_encoder.json"
    if recipe.is_file():
        notes.setdefault("recipe", {})["tiny_encoder"] = json.loads(recipe.read_text())
    write_json_atomic(notes_path, notes)
    return True
