"""Train ``toy-sd``: Stable Diffusion in miniature on the toy world, in SD's own format (``assets/toy-sd``).

Stages, each checkpointed atomically in ``work_dir`` and skipped once finished, so rerunning the same command
resumes where it stopped (Ctrl-C or SIGTERM saves first):

1. ``data``: render and cache the 128-px data set (the toy world's ray tracer, uint8).
2. ``vae``: an ``AutoencoderKL`` (factor 8, 4 latent channels) on random crops (it is convolutional): L1 + MSE
   reconstruction and SD's small KL term.
3. ``latents``: encode the data set once (the posterior means, fp16) and measure ``scaling_factor`` = 1 / std of
   the latents, as SD's 0.18215 was measured on its own.
4. ``unet``: an ε-prediction ``UNet2DConditionModel`` on the cached latents with SD's scaled-linear schedule,
   trained jointly with a small ``CLIPTextModel`` on paraphrased captions (:mod:`toyworld.sd_text`), min-SNR-γ
   weighting, 10 % caption dropout for classifier-free guidance and an EMA of both (exported).
5. ``decoder``: the VAE decoder alone is fine-tuned further (the encoder, and so the latents the UNet learned,
   stay fixed: SD's ft-MSE VAE was made the same way). It can run beside ``unet``: on a 2-core machine run
   ``--stage unet --threads 1`` and ``--stage decoder --threads 1`` side by side, then ``--stage export``.
7. ``export``: the diffusers pipeline folder, fp16 safetensors, plus ``dreamdistill.json`` (the toy vocabulary and
   sampling defaults) and a sample grid in ``work_dir``.

``--stage all`` (the default) runs them in order.
"""

from __future__ import annotations

import copy
import json
import random
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F

from dreamdistill.config import Device, OutputPath, Range, Seed, validate
from dreamdistill.diffusion.schedule import NoiseSchedule
from dreamdistill.errors import DreamDistillError
from dreamdistill.fileio import torch_load_checked, torch_save_atomic, write_json_atomic
from dreamdistill.interrupt import StopRequest

Stage = Literal["all", "data", "vae", "latents", "unet", "decoder", "tiny_encoder", "export"]
LATENT_FACTOR = 8
"""The VAE's downsampling factor (SD's): 128-px images become 16 × 16 × 4 latents."""


@dataclass
class SDTeacherTrainConfig:
    """Settings of a toy-sd training run (all seeded)."""

    out: Annotated[str, OutputPath()] = "assets/toy-sd"
    """The finished pipeline folder (fp16 safetensors)."""
    work_dir: Annotated[str, OutputPath()] = "runs/toy-sd"
    """Data set cache, stage checkpoints, latents, sample grids and the log."""
    stage: Stage = "all"
    dataset_size: Annotated[int, Range(16, 10**7)] = 30000
    resolution: Annotated[int, Range(64, 1024, multiple_of=LATENT_FACTOR * 4)] = 128
    vae_width: Annotated[int, Range(16, 512, multiple_of=16)] = 32
    """Channels of the VAE's first level; the levels use (w, 2w, 4w, 4w) (three downsamplings: factor 8)."""
    vae_steps: Annotated[int, Range(0, 10**8)] = 20000
    """0 (with ``init_from``): keep the folder's VAE unchanged, and with it its latent space and scaling factor, so
    that a later session trains the UNet further on the same latents."""
    vae_batch_size: Annotated[int, Range(1, 4096)] = 16
    vae_crop: Annotated[int, Range(16, 1024, multiple_of=LATENT_FACTOR)] = 64
    """Side of the random crops the VAE trains on (the full image at ``resolution``)."""
    vae_learning_rate: Annotated[float, Range(0, 1, open_low=True)] = 1e-3
    kl_weight: Annotated[float, Range(0, 1)] = 1e-6
    vae_minutes: Annotated[float, Range(0, None)] = 0.0
    """Wall-clock cap of the VAE stage per process start (0: none); reaching it ends the stage (recorded)."""
    unet_width: Annotated[int, Range(16, 1024, multiple_of=32)] = 64
    """Channels of the UNet's first level; levels (w, 2w, 3w) at 16², 8², 4²."""
    text_width: Annotated[int, Range(32, 1024, multiple_of=32)] = 256
    text_layers: Annotated[int, Range(1, 24)] = 4
    max_text_length: Annotated[int, Range(4, 77)] = 24
    unet_steps: Annotated[int, Range(1, 10**8)] = 20000
    unet_batch_size: Annotated[int, Range(1, 65536)] = 32
    unet_learning_rate: Annotated[float, Range(0, 1, open_low=True)] = 3e-4
    warmup_steps: Annotated[int, Range(0, None)] = 200
    ema_decay: Annotated[float, Range(0, 1, open_high=True)] = 0.999
    caption_dropout: Annotated[float, Range(0, 1)] = 0.1
    min_snr_gamma: Annotated[float, Range(0, 1e3, open_low=True)] = 5.0
    unet_minutes: Annotated[float, Range(0, None)] = 0.0
    """Wall-clock cap of the UNet stage per process start (0: none)."""
    decoder_steps: Annotated[int, Range(0, 10**8)] = 20000
    """Decoder-only fine-tuning steps after the latents are fixed (0: skip)."""
    decoder_learning_rate: Annotated[float, Range(0, 1, open_low=True)] = 3e-4
    decoder_minutes: Annotated[float, Range(0, None)] = 0.0
    tiny_encoder_steps: Annotated[int, Range(0, 10**8)] = 3000
    """Steps of the tiny encoder regressed onto the VAE's latents (0: skip; :mod:`toyworld.train_tiny_encoder`)."""
    tiny_encoder_batch_size: Annotated[int, Range(1, 65536)] = 64
    tiny_encoder_learning_rate: Annotated[float, Range(0, 1, open_low=True)] = 2e-3
    tiny_encoder_minutes: Annotated[float, Range(0, None)] = 0.0
    latent_count: Annotated[int, Range(0, 10**7)] = 0
    """How many training images the latents stage encodes and the UNet trains on (0: all of them). Encoding costs
    about 0.15 s per 128-px image on a 2-core CPU, so the CPU recipe encodes a subset."""
    held_out: Annotated[int, Range(0, 100000)] = 256
    """The data set's last images, never trained on: the VAE's validation PSNR (logged) is measured on them."""
    init_from: str | None = None
    """A toy-sd folder (e.g. assets/toy-sd) whose weights start each stage that has no checkpoint yet, to train a
    shipped teacher further in a later session (the work folder's checkpoints do not travel with the repository)."""
    checkpoint_minutes: Annotated[float, Range(0, None, open_low=True)] = 3.0
    seed: Seed = 0
    device: Device = "cpu"
    threads: Annotated[int, Range(0, 1024)] = 0
    """CPU threads (0: torch's default)."""


# ------------------------------------------------------------------------------------------------- models
def build_vae(width: int = 32, resolution: int = 128):
    """``AutoencoderKL`` with levels (w, 2w, 4w, 4w), one ResNet block per level, 4 latent channels: factor 8."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=1, sample_size=resolution,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(width, 2 * width, 4 * width, 4 * width), norm_num_groups=16,
    )


def build_text_encoder(vocab_size: int, bos: int, eos: int, width: int = 256, layers: int = 4,
                       max_length: int = 24):
    """A small ``CLIPTextModel`` (SD's class): ``width`` hidden units, ``layers`` layers, 4 heads."""
    from transformers import CLIPTextConfig, CLIPTextModel

    config = CLIPTextConfig(vocab_size=vocab_size, hidden_size=width, intermediate_size=4 * width,
                            num_hidden_layers=layers, num_attention_heads=4, max_position_embeddings=max_length,
                            projection_dim=width, bos_token_id=bos, eos_token_id=eos, pad_token_id=eos)
    return CLIPTextModel(config)


def build_latent_unet(width: int = 64, latent_size: int = 16, text_dim: int = 256):
    """The ε UNet on 16² latents (11M parameters at width 64): levels (w, 2w, 3w) at 16², 8², 4², one ResNet
    block per level; attention (self + cross to the text) at 8², 4² and in the middle block (at 16² it would cost
    twice the step on a CPU)."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=latent_size, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(width, 2 * width, 3 * width),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=text_dim, attention_head_dim=32, norm_num_groups=32,
    )


def build_sd_scheduler():
    """Stable Diffusion's own schedule: scaled-linear β from 0.00085 to 0.012 over 1,000 steps, ε-prediction,
    DDIM with SD's "leading" spacing and offset 1."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
                         beta_schedule="scaled_linear", prediction_type="epsilon", clip_sample=False,
                         set_alpha_to_one=False, steps_offset=1, timestep_spacing="leading")


# ------------------------------------------------------------------------------------------------- losses
def vae_loss(vae, images: torch.Tensor, kl_weight: float, generator: torch.Generator) -> dict[str, torch.Tensor]:
    """L1 + MSE reconstruction of a posterior sample, plus ``kl_weight`` × KL(q(z|x) ‖ N(0, I)) per latent element."""
    posterior = vae.encode(images).latent_dist
    noise = torch.randn(posterior.mean.shape, generator=generator).to(images.device)
    z = posterior.mean + posterior.std * noise
    reconstruction = vae.decode(z).sample
    l1 = (reconstruction - images).abs().mean()
    mse = F.mse_loss(reconstruction, images)
    kl = 0.5 * (posterior.mean ** 2 + posterior.var - 1 - posterior.logvar).mean()
    return {"loss": l1 + mse + kl_weight * kl, "l1": l1, "mse": mse, "kl": kl}


def psnr(images: torch.Tensor, references: torch.Tensor) -> torch.Tensor:
    """Per-image PSNR in dB of [B, 3, H, W] images in [0, 1]."""
    mse = ((images.float() - references.float()) ** 2).mean(dim=(1, 2, 3)).clamp(min=1e-10)
    return -10 * torch.log10(mse)


# ------------------------------------------------------------------------------------------------- helpers
def step_generator(seed: int, stage: str, step: int) -> torch.Generator:
    """The step's own generator: a resumed stage draws what the uninterrupted one would."""
    import zlib

    return torch.Generator().manual_seed(zlib.crc32(f"{seed}/{stage}/{step}".encode()))


def random_crops(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """One random ``size``² crop per image of a [B, 3, H, W] batch."""
    if images.shape[-1] == size:
        return images
    limit = images.shape[-1] - size + 1
    tops = torch.randint(0, limit, (images.shape[0],), generator=generator)
    lefts = torch.randint(0, limit, (images.shape[0],), generator=generator)
    return torch.stack([image[:, t: t + size, s: s + size] for image, t, s in zip(images, tops, lefts)])


def training_count(config: SDTeacherTrainConfig, size: int) -> int:
    """How many of the data set's images are trained on (the last ``held_out`` are not)."""
    if size <= config.held_out:
        raise DreamDistillError(f"--dataset-size {size} leaves nothing to train on beside the {config.held_out} "
                                "held-out images: pass a larger --dataset-size")
    return size - config.held_out


@torch.no_grad()
def validation_psnr(vae, images: torch.Tensor, count: int = 32) -> float:
    """Mean PSNR (dB) of the VAE's reconstructions (posterior mean) of the first ``count`` of ``images`` (uint8)."""
    was_training = vae.training
    vae.eval()
    batch = to_model_space(images[:count]).to(vae.device)
    reconstruction = vae.decode(vae.encode(batch).latent_dist.mean).sample
    vae.train(was_training)
    return float(psnr((reconstruction + 1) / 2, (batch + 1) / 2).mean())


def to_model_space(images: torch.Tensor) -> torch.Tensor:
    """uint8 images to [−1, 1] floats."""
    return images.float() / 127.5 - 1


class StageTimer:
    """When to checkpoint (every few minutes) and when a stage's wall-clock cap is reached."""

    def __init__(self, checkpoint_minutes: float, cap_minutes: float):
        self.started = self.saved = time.time()
        self.checkpoint_s, self.cap_s = 60 * checkpoint_minutes, 60 * cap_minutes

    def checkpoint_due(self) -> bool:
        if time.time() - self.saved >= self.checkpoint_s:
            self.saved = time.time()
            return True
        return False

    def out_of_time(self) -> bool:
        return self.cap_s > 0 and time.time() - self.started >= self.cap_s


def _load_stage(path: Path, keys: tuple[str, ...]) -> dict | None:
    return torch_load_checked(path, keys, "move it away to train the stage again") if path.is_file() else None


def _warm_start(module, config: SDTeacherTrainConfig, part: str) -> None:
    """Load ``init_from/part`` (a saved diffusers or transformers model, fp16) into ``module`` (kept fp32)."""
    if not config.init_from:
        return
    path = Path(config.init_from) / part
    from safetensors.torch import load_file

    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise DreamDistillError(f"--set init_from={config.init_from}: {path} holds no safetensors weights")
    weights = load_file(files[0])
    _restore(module, {key: value.float() for key, value in weights.items()}, files[0])
    print(f"{part}: started from {files[0]}", flush=True)


def _log(work_dir: Path, record: dict) -> None:
    from dreamdistill.fileio import append_jsonl

    append_jsonl(work_dir / "log.jsonl", {"time": round(time.time(), 1), **record})


def _log_reconstruction(config: SDTeacherTrainConfig, stage: str, step: int, record: dict, vae,
                        images: torch.Tensor) -> None:
    """Log a VAE stage's losses, with the held-out PSNR every 250 steps."""
    if step % 250 == 0 and config.held_out:
        record["val_psnr"] = round(validation_psnr(vae, images[-config.held_out:]), 2)
    _log(Path(config.work_dir), {"stage": stage, "step": step, **record})


def _end_stage(name: str, step: int, bar, stop: StopRequest, save) -> None:
    """Close the bar, save the stage (finished unless a stop was requested), and re-raise a requested stop."""
    bar.close()
    stop.restore()
    save(finished=not stop.requested)
    if stop.requested:
        raise KeyboardInterrupt(f"{name} stopped at step {step}; checkpoint saved")


def _restore(module, state: dict, path: Path) -> None:
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError) as error:
        from dreamdistill.fileio import first_line

        raise DreamDistillError(f"{path} was trained with other model sizes ({first_line(error)}); pass the same "
                                "widths, or another --work-dir") from None


# ------------------------------------------------------------------------------------------------- stages
def dataset_path(config: SDTeacherTrainConfig) -> Path:
    return Path(config.work_dir) / f"dataset-{config.dataset_size}-{config.resolution}-seed{config.seed + 1000}.pt"


def stage_data(config: SDTeacherTrainConfig) -> dict:
    """The fixed training set: rendered once (seeded, seed + 1000 as the pixel teacher's) and cached."""
    from dreamdistill.toyworld.dataset import render_dataset

    cache = dataset_path(config)
    if cache.is_file():
        return torch.load(cache)
    print(f"rendering {config.dataset_size} toy-world images at {config.resolution}² (about 35 per second on one "
          "thread)...", flush=True)
    batch = render_dataset(config.dataset_size, seed=config.seed + 1000, resolution=config.resolution,
                           progress=True)
    data = {"images": batch.images, "captions": batch.captions}
    torch_save_atomic(cache, data)
    return data


def stage_vae(config: SDTeacherTrainConfig, images: torch.Tensor) -> None:
    """Train the VAE on random crops (resumable); ``vae.pt`` holds it."""
    from tqdm import tqdm

    path = Path(config.work_dir) / "vae.pt"
    state = _load_stage(path, ("vae", "step", "finished"))
    if state is not None and state["finished"]:
        return
    device = torch.device(config.device)
    torch.manual_seed(config.seed)  # the initial weights
    vae = build_vae(config.vae_width, config.resolution).to(device)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=config.vae_learning_rate, weight_decay=0.0)
    step = 0
    if state is not None:
        _restore(vae, state["vae"], path)
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        print(f"vae: resumed at step {step}", flush=True)
    else:
        _warm_start(vae, config, "vae")

    def save(finished: bool) -> None:
        torch_save_atomic(path, {"vae": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                                 "finished": finished})

    timer, stop = StageTimer(config.checkpoint_minutes, config.vae_minutes), StopRequest()
    bar = tqdm(total=config.vae_steps, initial=step, desc="toy-sd vae", unit="step")
    vae.train()
    while step < config.vae_steps and not stop.requested and not timer.out_of_time():
        generator = step_generator(config.seed, "vae", step)
        index = torch.randint(0, training_count(config, images.shape[0]), (config.vae_batch_size,), generator=generator)
        batch = to_model_space(random_crops(images[index], config.vae_crop, generator)).to(device)
        for group in optimizer.param_groups:
            group["lr"] = config.vae_learning_rate * min(1.0, (step + 1) / max(1, config.warmup_steps))
        losses = vae_loss(vae, batch, config.kl_weight, generator)
        optimizer.zero_grad(set_to_none=True)
        losses["loss"].backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(l1=f"{losses['l1'].item():.4f}", mse=f"{losses['mse'].item():.5f}")
        if step % 50 == 0:
            _log_reconstruction(config, "vae", step, {k: round(v.item(), 6) for k, v in losses.items()}, vae, images)
        if timer.checkpoint_due():
            save(False)
    _end_stage("vae", step, bar, stop, save)


@torch.no_grad()
def stage_latents(config: SDTeacherTrainConfig, data: dict) -> dict:
    """Encode the data set once with the finished encoder: posterior means (fp16) and the measured scale."""
    from tqdm import tqdm

    path = Path(config.work_dir) / "latents.pt"
    if path.is_file():
        return torch.load(path)
    vae = trained_vae(config, decoder=False).to(config.device).eval()
    count = training_count(config, data["images"].shape[0])
    count = min(count, config.latent_count) if config.latent_count else count
    images = data["images"][:count]  # training images only: the held-out ones stay unseen
    means = []
    for start in tqdm(range(0, images.shape[0], 64), desc="toy-sd latents", unit="batch"):
        batch = to_model_space(images[start: start + 64]).to(config.device)
        means.append(vae.encode(batch).latent_dist.mean.half().cpu())
    latents = torch.cat(means)
    scaling_factor = kept_scaling_factor(config) or float(1.0 / latents.float().std())
    result = {"latents": latents, "captions": data["captions"][:count], "scaling_factor": scaling_factor}
    torch_save_atomic(path, result)
    print(f"latents {tuple(latents.shape)}, scaling_factor {scaling_factor:.5f}", flush=True)
    return result


def kept_scaling_factor(config: SDTeacherTrainConfig) -> float | None:
    """init_from's scaling factor when its VAE is kept as is (``vae_steps=0``): its UNet learned that scale."""
    if not (config.init_from and config.vae_steps == 0):
        return None
    return float(json.loads((Path(config.init_from) / "vae" / "config.json").read_text())["scaling_factor"])


def continued_from(config: SDTeacherTrainConfig) -> dict:
    """What a warm start continues: init_from's ``trained_steps`` and ``recipe`` (and its own ``continued_from``),
    with the folder; {} without init_from. The export adds those steps to this run's and keeps the history."""
    from dreamdistill.diffusion.teacher import read_folder_notes

    if not config.init_from:
        return {}
    earlier = read_folder_notes(Path(config.init_from))
    return {"folder": config.init_from,
            **{key: earlier[key] for key in ("trained_steps", "recipe", "continued_from") if key in earlier}}


def trained_vae(config: SDTeacherTrainConfig, decoder: bool = True):
    """The VAE from ``vae.pt``, with the fine-tuned decoder from ``decoder.pt`` when ``decoder`` and it exists."""
    vae = build_vae(config.vae_width, config.resolution)
    path = Path(config.work_dir) / "vae.pt"
    state = _load_stage(path, ("vae",))
    if state is None:
        raise DreamDistillError(f"{path} is missing: run the vae stage first (--stage vae)")
    _restore(vae, state["vae"], path)
    decoder_path = Path(config.work_dir) / "decoder.pt"
    if decoder and decoder_path.is_file():
        _restore(vae, _load_stage(decoder_path, ("vae",))["vae"], decoder_path)
    return vae


def caption_parts(caption: str) -> tuple[str, str, str]:
    """(colour, category, view) of a training caption "a {colour} {category}, {view} view"."""
    words = caption.replace(",", "").split()
    return words[1], words[2], words[3]


def min_snr_eps_weight(log_snr: torch.Tensor, gamma: float) -> torch.Tensor:
    """Min-SNR-γ weight of an ε-prediction loss: min(SNR, γ) / SNR (Hang et al. 2023, eq. 9)."""
    snr = log_snr.exp()
    return snr.clamp(max=gamma) / snr


def eps_loss(unet, schedule: NoiseSchedule, latents: torch.Tensor, text: torch.Tensor, generator: torch.Generator,
             gamma: float) -> torch.Tensor:
    """E_t,ε [w(λ_t) ‖ε̂(α_t z + σ_t ε, t) − ε‖²] with the min-SNR-γ weight w (ε-prediction)."""
    batch = latents.shape[0]
    t = torch.randint(0, schedule.num_train_timesteps, (batch,), generator=generator).to(latents.device)
    eps = torch.randn(latents.shape, generator=generator).to(latents.device)
    alpha, sigma = schedule.alpha_sigma(t)
    x_t = alpha.float().view(-1, 1, 1, 1) * latents + sigma.float().view(-1, 1, 1, 1) * eps
    prediction = unet(x_t, t, encoder_hidden_states=text).sample
    per_sample = F.mse_loss(prediction.float(), eps, reduction="none").mean(dim=(1, 2, 3))
    return (min_snr_eps_weight(schedule.log_snr(t), gamma).float().to(latents.device) * per_sample).mean()


def stage_unet(config: SDTeacherTrainConfig, latents: dict) -> None:
    """Train the UNet and the text encoder on the cached latents (resumable); ``unet.pt`` holds both with EMAs."""
    from tqdm import tqdm

    from dreamdistill.toyworld.sd_text import build_tokenizer, paraphrase

    path = Path(config.work_dir) / "unet.pt"
    state = _load_stage(path, ("unet", "text", "unet_ema", "text_ema", "step", "finished"))
    if state is not None and state["finished"]:
        return
    device = torch.device(config.device)
    torch.manual_seed(config.seed)  # the initial weights
    tokenizer = build_tokenizer(config.max_text_length)
    text_encoder = build_text_encoder(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                                      config.text_width, config.text_layers, config.max_text_length).to(device)
    unet = build_latent_unet(config.unet_width, config.resolution // LATENT_FACTOR, config.text_width).to(device)
    if state is None:
        _warm_start(unet, config, "unet")
        _warm_start(text_encoder, config, "text_encoder")
    unet_ema, text_ema = copy.deepcopy(unet).requires_grad_(False), copy.deepcopy(text_encoder).requires_grad_(False)
    parameters = [*unet.parameters(), *text_encoder.parameters()]
    optimizer = torch.optim.AdamW(parameters, lr=config.unet_learning_rate, weight_decay=0.0)
    step = 0
    if state is not None:
        for module, key in ((unet, "unet"), (text_encoder, "text"), (unet_ema, "unet_ema"), (text_ema, "text_ema")):
            _restore(module, state[key], path)
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        print(f"unet: resumed at step {step}", flush=True)

    def save(finished: bool) -> None:
        torch_save_atomic(path, {"unet": unet.state_dict(), "text": text_encoder.state_dict(),
                                 "unet_ema": unet_ema.state_dict(), "text_ema": text_ema.state_dict(),
                                 "optimizer": optimizer.state_dict(), "step": step, "finished": finished})

    schedule = NoiseSchedule.from_scheduler(build_sd_scheduler())
    codes = latents["latents"]
    scale = latents["scaling_factor"]
    parts = [caption_parts(c) for c in latents["captions"]]
    timer, stop = StageTimer(config.checkpoint_minutes, config.unet_minutes), StopRequest()
    bar = tqdm(total=config.unet_steps, initial=step, desc="toy-sd unet", unit="step")
    unet.train()
    text_encoder.train()
    while step < config.unet_steps and not stop.requested and not timer.out_of_time():
        generator = step_generator(config.seed, "unet", step)
        words = random.Random(f"{config.seed}/unet/{step}")
        index = torch.randint(0, codes.shape[0], (config.unet_batch_size,), generator=generator)
        drop = torch.rand(config.unet_batch_size, generator=generator) < config.caption_dropout
        prompts = ["" if dropped else paraphrase(*parts[i], words) for i, dropped in zip(index.tolist(), drop)]
        tokens = tokenizer(prompts, padding="max_length", max_length=config.max_text_length, truncation=True,
                           return_tensors="pt").input_ids.to(device)
        text = text_encoder(input_ids=tokens).last_hidden_state
        for group in optimizer.param_groups:
            group["lr"] = config.unet_learning_rate * min(1.0, (step + 1) / max(1, config.warmup_steps))
        loss = eps_loss(unet, schedule, codes[index].float().to(device) * scale, text, generator,
                        config.min_snr_gamma)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(parameters, 1.0)
        optimizer.step()
        decay = min(config.ema_decay, (1 + step) / (10 + step))
        with torch.no_grad():
            for average, module in ((unet_ema, unet), (text_ema, text_encoder)):
                for mean, value in zip(average.parameters(), module.parameters()):
                    mean.lerp_(value, 1 - decay)
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 25 == 0:
            _log(Path(config.work_dir), {"stage": "unet", "step": step, "loss": round(loss.item(), 6)})
        if timer.checkpoint_due():
            save(False)
    _end_stage("unet", step, bar, stop, save)


def stage_decoder(config: SDTeacherTrainConfig, images: torch.Tensor) -> None:
    """Fine-tune the VAE decoder alone on posterior means of the frozen encoder (resumable); ``decoder.pt``."""
    from tqdm import tqdm

    path = Path(config.work_dir) / "decoder.pt"
    state = _load_stage(path, ("vae", "step", "finished"))
    if config.decoder_steps == 0 or state is not None and state["finished"]:
        return
    device = torch.device(config.device)
    vae = trained_vae(config, decoder=True).to(device)
    vae.requires_grad_(False)
    trainable = [*vae.decoder.parameters(), *vae.post_quant_conv.parameters()]
    for parameter in trainable:
        parameter.requires_grad_(True)
    optimizer = torch.optim.AdamW(trainable, lr=config.decoder_learning_rate, weight_decay=0.0)
    step = 0
    if state is not None:
        optimizer.load_state_dict(state["optimizer"])
        step = state["step"]
        print(f"decoder: resumed at step {step}", flush=True)

    def save(finished: bool) -> None:
        torch_save_atomic(path, {"vae": vae.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                                 "finished": finished})

    timer, stop = StageTimer(config.checkpoint_minutes, config.decoder_minutes), StopRequest()
    bar = tqdm(total=config.decoder_steps, initial=step, desc="toy-sd decoder", unit="step")
    vae.decoder.train()
    while step < config.decoder_steps and not stop.requested and not timer.out_of_time():
        generator = step_generator(config.seed, "decoder", step)
        index = torch.randint(0, training_count(config, images.shape[0]), (config.vae_batch_size,), generator=generator)
        batch = to_model_space(random_crops(images[index], config.vae_crop, generator)).to(device)
        with torch.no_grad():
            z = vae.encode(batch).latent_dist.mean
        reconstruction = vae.decode(z).sample
        loss = (reconstruction - batch).abs().mean() + F.mse_loss(reconstruction, batch)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(trainable, 1.0)
        optimizer.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if step % 50 == 0:
            _log_reconstruction(config, "decoder", step, {"loss": round(loss.item(), 6)}, vae, images)
        if timer.checkpoint_due():
            save(False)
    _end_stage("decoder", step, bar, stop, save)


def export_pipeline(config: SDTeacherTrainConfig, folder: Path | None = None) -> Path:
    """Write the diffusers pipeline folder (fp16 safetensors; the EMA UNet and text encoder), atomically."""
    from dreamdistill.diffusion.teacher import LATENT_NOTES_NAME
    from dreamdistill.toyworld.sd_text import build_tokenizer
    from dreamdistill.toyworld.train_teacher import toy_vocabulary
    from dreamdistill.toyworld.train_tiny_encoder import export_tiny_encoder

    folder = Path(folder or config.out)
    work_dir = Path(config.work_dir)
    latents = torch.load(work_dir / "latents.pt")
    state = _load_stage(work_dir / "unet.pt", ("unet_ema", "text_ema", "step"))
    if state is None:
        raise DreamDistillError(f"{work_dir / 'unet.pt'} is missing: run the unet stage first (--stage unet)")
    tokenizer = build_tokenizer(config.max_text_length)
    text_encoder = build_text_encoder(len(tokenizer), tokenizer.bos_token_id, tokenizer.eos_token_id,
                                      config.text_width, config.text_layers, config.max_text_length)
    unet = build_latent_unet(config.unet_width, config.resolution // LATENT_FACTOR, config.text_width)
    _restore(unet, state["unet_ema"], work_dir / "unet.pt")
    _restore(text_encoder, state["text_ema"], work_dir / "unet.pt")
    vae = trained_vae(config)
    vae.register_to_config(scaling_factor=latents["scaling_factor"])
    steps = {"unet": int(state["step"])}
    for name in ("vae", "decoder", "tiny_encoder"):
        if (work_dir / f"{name}.pt").is_file():
            steps[name] = int(torch.load(work_dir / f"{name}.pt", map_location="cpu")["step"])
    history = continued_from(config)
    earlier = history.get("trained_steps", {})  # a warm start continues the folder's training: its steps count too
    steps = {name: steps.get(name, 0) + int(earlier.get(name, 0)) for name in sorted({*steps, *earlier})}
    staging = folder.with_name(folder.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    for name, module in (("vae", vae), ("unet", unet), ("text_encoder", text_encoder)):
        module.half().save_pretrained(staging / name, safe_serialization=True)
    tokenizer.save_pretrained(staging / "tokenizer")
    export_tiny_encoder(config, staging)
    build_sd_scheduler().save_pretrained(staging / "scheduler")
    model_index = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": _diffusers_version(),
                   "feature_extractor": [None, None], "safety_checker": [None, None],
                   "requires_safety_checker": False, "image_encoder": [None, None],
                   "scheduler": ["diffusers", "DDIMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
                   "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
                   "vae": ["diffusers", "AutoencoderKL"]}
    (staging / "model_index.json").write_text(json.dumps(model_index, indent=2) + "\n")
    write_json_atomic(staging / LATENT_NOTES_NAME, {
        "vocabulary": {**toy_vocabulary(), "other_words": training_words()}, "default_steps": 64, "default_cfg": 5.0,
        "trained_steps": steps,
        "recipe": {path.stem.removeprefix("config-"): json.loads(path.read_text())
                   for path in sorted(work_dir.glob("config-*.json"))},
        **({"continued_from": history} if history else {})})
    if folder.exists():
        shutil.rmtree(folder)
    staging.rename(folder)
    return folder


def training_words() -> list[str]:
    """The words of the paraphrases toy-sd trained on beside the colour, category and view words (a prompt made
    of known words draws no vocabulary warning)."""
    from dreamdistill.toyworld.sd_text import corpus_words
    from dreamdistill.toyworld.world import CATEGORIES, COLOURS, VIEWS

    named = set(CATEGORIES) | set(COLOURS) | set(VIEWS)
    return sorted(word for word in corpus_words() if word.isalpha() and word not in named)


def _diffusers_version() -> str:
    import diffusers

    return diffusers.__version__


def save_samples(folder: Path, path: Path, steps: int = 32, guidance_scale: float = 5.0) -> Path:
    """A grid of 16 preview samples from the exported folder (every category, several colours and views)."""
    from dreamdistill.diffusion.teacher import Teacher
    from dreamdistill.toyworld.train_teacher import preview_prompts, save_grid

    teacher = Teacher.from_pretrained(folder, device="cpu", dtype=torch.float32)
    samples = teacher.sample(preview_prompts(), steps=steps, guidance_scale=guidance_scale, seed=0)
    return save_grid(samples, path, columns=8, scale=1)


def train_sd_teacher(config: SDTeacherTrainConfig) -> Path:
    """Run (or resume) the stages that ``config.stage`` names; returns the exported folder."""
    validate(config)
    if config.vae_steps == 0 and not config.init_from:
        raise DreamDistillError("--set vae_steps=0 keeps a warm-started VAE as it is: pass --set init_from=FOLDER "
                                "too, or train the VAE (vae_steps >= 1)")
    if config.threads:
        torch.set_num_threads(config.threads)
    work_dir = Path(config.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(work_dir / f"config-{config.stage}.json", asdict(config))
    run_all = config.stage == "all"
    data = stage_data(config) if config.stage in ("all", "data", "vae", "latents", "decoder", "tiny_encoder") else None
    if run_all or config.stage == "vae":
        stage_vae(config, data["images"])
    if run_all or config.stage in ("latents", "unet", "tiny_encoder"):
        latents = stage_latents(config, data if data is not None else stage_data(config))
    if run_all or config.stage == "unet":
        stage_unet(config, latents)
    if run_all or config.stage == "decoder":
        stage_decoder(config, data["images"])
    if run_all or config.stage == "tiny_encoder":
        from dreamdistill.toyworld.train_tiny_encoder import add_to_folder, stage_tiny_encoder

        stage_tiny_encoder(config, data["images"], latents)
        if config.stage == "tiny_encoder" and add_to_folder(config, Path(config.out)):
            print(f"tiny encoder added to {config.out}", flush=True)
    if run_all or config.stage == "export":
        folder = export_pipeline(config)
        state = torch.load(work_dir / "unet.pt", map_location="cpu")
        grid = save_samples(folder, work_dir / f"samples-{int(state['step']):06d}.png")
        print(f"toy-sd written to {folder}; samples in {grid}", flush=True)
        return folder
    return work_dir
