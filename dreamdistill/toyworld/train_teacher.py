"""Train the embedded toy teacher: a pixel-space v-prediction UNet on toy-world renders.

Recipe (CPU, about 2 hours on 2 cores at ~1.6 s per step): a ~3M-parameter ``UNet2DConditionModel`` at 32×32
with cross-attention on MiniLM token embeddings at the coarse levels only, diffusers'
cosine schedule (``squaredcos_cap_v2``) with **v-prediction** (ᾱ_999 = 2.4e-9 makes an
ε-model's first DDIM step from pure noise unstable), min-SNR-5 loss weighting, 10% caption
dropout for classifier-free guidance, an EMA of the weights (exported), a fixed pre-rendered
data set, and fixed seeds. Checkpoints are atomic; rerunning the same command resumes.
``--device cuda`` trains the same recipe (or a larger ``--width``) on a GPU.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import torch
import torch.nn.functional as F

from dreamdistill.config import Device, OutputPath, Range, Seed, validate
from dreamdistill.diffusion.schedule import NoiseSchedule, add_noise, output_from_x0_eps
from dreamdistill.errors import DreamDistillError
from dreamdistill.fileio import first_line, torch_load_checked, torch_save_atomic, write_json_atomic
from dreamdistill.interrupt import StopRequest


@dataclass
class TeacherTrainConfig:
    """Settings of a toy-teacher training run (all seeded)."""

    out: Annotated[str, OutputPath()] = "assets/toy-teacher"
    """Where the finished teacher folder is written (fp16 safetensors)."""
    work_dir: Annotated[str, OutputPath()] = "runs/toy-teacher"
    """Checkpoints, the rendered data set cache, sample grids and the log."""
    steps: Annotated[int, Range(1, 10**8)] = 4200
    """Optimiser steps (the cosine learning-rate decay spans them; the shipped teacher was resumed with 2,600,
    then 4,600, then 4,200 as the target, so its learning-rate path differs slightly from an uninterrupted run)."""
    batch_size: Annotated[int, Range(1, 65536)] = 32
    learning_rate: Annotated[float, Range(0, 1, open_low=True)] = 4e-4
    warmup_steps: Annotated[int, Range(0, None)] = 200
    ema_decay: Annotated[float, Range(0, 1, open_high=True)] = 0.999
    dataset_size: Annotated[int, Range(1, 10**7)] = 50000
    """Pre-rendered toy-world images (uint8, cached in work_dir)."""
    resolution: Annotated[int, Range(8, 512, multiple_of=4)] = 32
    width: Annotated[int, Range(16, 1024, multiple_of=16)] = 32
    """Channels of the first UNet level; the levels use (w, 2w, 4w)."""
    caption_dropout: Annotated[float, Range(0, 1)] = 0.1
    min_snr_gamma: Annotated[float, Range(0, 1e3, open_low=True)] = 5.0
    checkpoint_every: Annotated[int, Range(1, None)] = 100
    preview_every: Annotated[int, Range(1, None)] = 500
    """Export ``work_dir/latest`` and a sample grid this often."""
    seed: Seed = 0
    device: Device = "cpu"
    threads: Annotated[int, Range(0, 1024)] = 0
    """CPU threads (0: torch's default; 1 is faster while other jobs share a 2-core machine)."""


def build_unet(width: int = 32, resolution: int = 32, text_dim: int = 384):
    """The toy UNet (4.2M parameters at width 32): levels of (w, 2w, 4w) channels at 32², 16², 8²;
    attention (self + cross to the text) only at 8² and in the middle block, where it is cheap on a CPU."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=resolution, in_channels=3, out_channels=3, layers_per_block=1,
        block_out_channels=(width, 2 * width, 4 * width),
        down_block_types=("DownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "UpBlock2D"),
        mid_block_type="UNetMidBlock2DCrossAttn", cross_attention_dim=text_dim,
        attention_head_dim=32, norm_num_groups=16,
    )


def build_scheduler():
    """Cosine schedule, v-prediction, trailing spacing (the first DDIM step starts at t = 999)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="squaredcos_cap_v2", prediction_type="v_prediction",
        clip_sample=False, set_alpha_to_one=True, timestep_spacing="trailing",
    )


def min_snr_weight(log_snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ weight for a v-prediction loss: min(SNR, γ) / (SNR + 1) (Hang et al. 2023)."""
    snr = log_snr.exp()
    return snr.clamp(max=gamma) / (snr + 1)


def learning_rate_at(step: int, config: TeacherTrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def diffusion_loss(unet, schedule: NoiseSchedule, x0: torch.Tensor, text: torch.Tensor, generator,
                   gamma: float) -> torch.Tensor:
    """Weighted denoising loss E_t,ε [w(λ_t) ‖v̂(x_t) − v‖²] for the schedule's prediction type."""
    batch = x0.shape[0]
    t = torch.randint(0, schedule.num_train_timesteps, (batch,), generator=generator).to(x0.device)
    eps = torch.randn(x0.shape, generator=generator).to(x0.device)
    alpha, sigma = schedule.alpha_sigma(t)
    x_t = add_noise(x0=x0, eps=eps, alpha=alpha, sigma=sigma)
    target = output_from_x0_eps(x0=x0, eps=eps, alpha=alpha, sigma=sigma, prediction_type=schedule.prediction_type)
    prediction = unet(x_t, t, encoder_hidden_states=text).sample
    per_sample = F.mse_loss(prediction.float(), target, reduction="none").mean(dim=(1, 2, 3))
    weight = min_snr_weight(schedule.log_snr(t), gamma).float().to(x0.device)
    if schedule.prediction_type != "v_prediction":
        weight = torch.ones_like(weight)
    return (weight * per_sample).mean()


def load_or_render_dataset(config: TeacherTrainConfig, work_dir: Path):
    """The fixed training set: rendered once (seeded) and cached as a tensor file."""
    from dreamdistill.toyworld.dataset import render_dataset

    cache = work_dir / f"dataset-{config.dataset_size}-{config.resolution}-seed{config.seed}.pt"
    if cache.is_file():
        return torch.load(cache)
    print(f"rendering {config.dataset_size} toy-world images at {config.resolution}²...", flush=True)
    batch = render_dataset(config.dataset_size, seed=config.seed + 1000, resolution=config.resolution, progress=True)
    data = {"images": batch.images, "captions": batch.captions}
    torch_save_atomic(cache, data)
    return data


def train_teacher(config: TeacherTrainConfig) -> Path:
    """Run (or resume) a training run, then export the EMA weights as a teacher folder."""
    from tqdm import tqdm

    from dreamdistill.diffusion.teacher import MINILM_NAME, PixelCodec, Teacher, TeacherInfo, TextEncoder, minilm_path

    validate(config)
    if config.threads:
        torch.set_num_threads(config.threads)
    device = torch.device(config.device)
    work_dir = Path(config.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    data = load_or_render_dataset(config, work_dir)

    from transformers import AutoModel, AutoTokenizer

    encoder_dir = minilm_path()
    text_encoder = TextEncoder(AutoTokenizer.from_pretrained(encoder_dir), AutoModel.from_pretrained(encoder_dir),
                               16, device, torch.float32)
    unique = sorted(set(data["captions"])) + [""]
    caption_table = text_encoder(unique)  # [C+1, L, D]; the last row is the empty prompt
    caption_index = torch.tensor([unique.index(c) for c in data["captions"]])
    empty_index = len(unique) - 1

    unet = build_unet(config.width, config.resolution).to(device)
    ema = copy.deepcopy(unet).requires_grad_(False)
    scheduler = build_scheduler()
    schedule = NoiseSchedule.from_scheduler(scheduler)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=config.learning_rate, weight_decay=0.0)
    step = 0
    checkpoint_path = work_dir / "checkpoint.pt"
    if checkpoint_path.is_file():
        state = torch_load_checked(checkpoint_path, ("unet", "ema", "optimizer", "step"),
                                   "move it away to train from step 0")
        try:
            unet.load_state_dict(state["unet"])
            ema.load_state_dict(state["ema"])
            optimizer.load_state_dict(state["optimizer"])
        except (RuntimeError, ValueError, KeyError) as error:
            raise DreamDistillError(f"{checkpoint_path} was trained with other settings ({first_line(error)}); "
                                    "pass the same --width, or another --work-dir") from None
        step = state["step"]
        print(f"resumed from {checkpoint_path} at step {step}", flush=True)
    write_json_atomic(work_dir / "config.json", asdict(config))

    def save_checkpoint():
        torch_save_atomic(checkpoint_path, {"unet": unet.state_dict(), "ema": ema.state_dict(),
                                            "optimizer": optimizer.state_dict(), "step": step})

    info = TeacherInfo(Path(config.out), "pixel", toy_vocabulary())

    def export(folder: Path) -> None:
        teacher = Teacher(ema, scheduler, text_encoder, PixelCodec(config.resolution), info, device, torch.float32)
        half = copy.deepcopy(ema).half()
        teacher.save_pretrained(folder, unet=half, extra={"trained_steps": step, "recipe": asdict(config),
                                                          "default_steps": 64, "default_cfg": 4.0})
        samples = teacher.sample(preview_prompts(), steps=32, guidance_scale=4.0, seed=0)
        save_grid(samples, work_dir / f"samples-{step:06d}.png", columns=8)

    images, num_images = data["images"], data["images"].shape[0]
    bar = tqdm(total=config.steps, initial=step, desc="train-teacher", unit="step")
    started = time.time()
    unet.train()
    stop = StopRequest()
    while step < config.steps and not stop.requested:
        generator = torch.Generator().manual_seed(config.seed * 1_000_003 + step)
        index = torch.randint(0, num_images, (config.batch_size,), generator=generator)
        x0 = (images[index].float() / 127.5 - 1).to(device)
        drop = torch.rand(config.batch_size, generator=generator) < config.caption_dropout
        text = caption_table[torch.where(drop, empty_index, caption_index[index])].to(device)
        for group in optimizer.param_groups:
            group["lr"] = learning_rate_at(step, config)
        loss = diffusion_loss(unet, schedule, x0, text, generator, config.min_snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(unet.parameters(), 1.0)
        optimizer.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for p_ema, p in zip(ema.parameters(), unet.parameters()):
                p_ema.lerp_(p, 1 - decay)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % config.checkpoint_every == 0 or step == config.steps:
            save_checkpoint()
            with open(work_dir / "log.txt", "a") as log:
                log.write(f"step {step} loss {loss.item():.5f} elapsed {time.time() - started:.0f}s\n")
        if step % config.preview_every == 0:
            export(work_dir / "latest")
    bar.close()
    stop.restore()
    if stop.requested:
        save_checkpoint()
        export(work_dir / "latest")
        print(f"stopped at step {step}: checkpoint saved, {work_dir / 'latest'} exported; "
              "run the same command to resume", flush=True)
        return work_dir / "latest"
    export(Path(config.out))
    print(f"teacher written to {config.out} ({step} steps, MiniLM text encoder {MINILM_NAME})", flush=True)
    return Path(config.out)


def toy_vocabulary() -> dict[str, list[str]]:
    """The words the toy teacher was trained on (stored in its folder for prompt warnings)."""
    from dreamdistill.toyworld.world import CATEGORIES, COLOURS, VIEWS

    return {"categories": list(CATEGORIES), "colours": list(COLOURS), "views": list(VIEWS)}


def preview_prompts() -> list[str]:
    """16 prompts covering every category, several colours and all views."""
    from dreamdistill.toyworld.captions import caption
    from dreamdistill.toyworld.world import CATEGORIES, COLOURS

    colours = list(COLOURS)
    views = ["front", "side", "back", "overhead"]
    return [caption(colours[i % len(colours)], CATEGORIES[i % len(CATEGORIES)], views[(i // 2) % 4]) for i in range(16)]


def save_grid(images: torch.Tensor, path: Path, columns: int = 8, scale: int = 2) -> Path:
    """Save [B, 3, H, W] images in [0, 1] as one PNG grid (nearest-neighbour upscaled)."""
    from dreamdistill.fileio import save_image_atomic

    images = F.interpolate(images.float().cpu(), scale_factor=scale, mode="nearest") if scale > 1 else images
    batch, _, height, width = images.shape
    rows = math.ceil(batch / columns)
    grid = torch.ones(3, rows * (height + 2), columns * (width + 2))
    for i, image in enumerate(images):
        top, left = (i // columns) * (height + 2) + 1, (i % columns) * (width + 2) + 1
        grid[:, top: top + height, left: left + width] = image
    array = (grid.clamp(0, 1).permute(1, 2, 0) * 255).round().byte().numpy()
    return save_image_atomic(path, array)
