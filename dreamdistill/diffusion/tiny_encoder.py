"""A tiny image → latent encoder distilled from a latent teacher's VAE encoder, for cheap latent SDS on a CPU.

Latent score distillation backpropagates through the VAE encoder every step: for toy-sd (128 px) its forward and
backward cost as much as the render and the UNet together on a CPU. TAESD (Bohan, 2023) showed that a small
conv net regressed onto the VAE's latents stands in for the encoder; this one also takes the renders at half the
teacher's size (64 px for toy-sd, factor 4 instead of 8), so the NeRF renders 64 px and nothing is upsampled.

    z_tiny(x_64) ≈ scaling_factor · mean(VAE.encode(x_128))            (trained by MSE, toyworld/train_tiny_encoder.py)

SDS's gradient through it is J_tinyᵀ w(t)(ε̂ − ε) in place of J_VAEᵀ w(t)(ε̂ − ε): right where the tiny encoder's
Jacobian matches the VAE's, which the training's held-out error bounds only on the toy world's renders. Picked by
``guidance.encoder: tiny``. A teacher folder carries it as ``tiny_encoder/`` (diffusers ``save_pretrained``:
config.json + safetensors), which ``StableDiffusionPipeline`` ignores.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


class ResidualBlock(nn.Module):
    """x + conv(silu(conv(x))): no normalisation, so a batch of one behaves like any batch."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv2(F.silu(self.conv1(F.silu(x))))


class TinyEncoder(ModelMixin, ConfigMixin):
    """Images [B, 3, input_size, input_size] in [0, 1] → scaled latents [B, latent_channels, input_size / 2^downsamples]
    (already multiplied by the VAE's scaling factor: what the UNet takes)."""

    @register_to_config
    def __init__(self, input_size: int = 64, latent_channels: int = 4, widths: tuple[int, ...] = (32, 64, 64),
                 blocks_per_level: tuple[int, ...] = (1, 1, 2)):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(3, widths[0], 3, padding=1)]
        for level, (width, blocks) in enumerate(zip(widths, blocks_per_level)):
            if level > 0:
                layers.append(nn.Conv2d(widths[level - 1], width, 3, stride=2, padding=1))
            layers.extend(ResidualBlock(width) for _ in range(blocks))
        layers += [nn.SiLU(), nn.Conv2d(widths[-1], latent_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    @property
    def latent_size(self) -> int:
        return self.config.input_size // 2 ** (len(self.config.widths) - 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.layers(images * 2 - 1)
