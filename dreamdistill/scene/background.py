"""Backgrounds: a learned colour as a function of view direction, or a fixed or random solid colour."""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

BackgroundMode = Literal["learned", "fixed", "random"]


def direction_encoding(directions: torch.Tensor, frequencies: int) -> torch.Tensor:
    """Unit directions [..., 3] -> [..., 3 + 6 * frequencies] (identity plus sin/cos at 2^k pi)."""
    scales = 2.0 ** torch.arange(frequencies, dtype=directions.dtype, device=directions.device) * torch.pi
    angles = (directions[..., None, :] * scales[:, None]).flatten(-2)  # [..., 3 * frequencies]
    return torch.cat([directions, angles.sin(), angles.cos()], dim=-1)


class Background(nn.Module):
    """``forward(directions [..., 3]) -> colours [..., 3]`` in [0, 1].

    - ``learned``: a small MLP on the encoded view direction, sigmoid output (starts near ``color``);
    - ``fixed``: ``color`` everywhere;
    - ``random``: while training, one random colour per image (per index of the first dimension when the
      input has an image axis, i.e. ``directions.dim() >= 3``, else one colour per call); ``color`` in eval.
    """

    def __init__(
        self,
        mode: BackgroundMode = "learned",
        color: tuple[float, float, float] = (1.0, 1.0, 1.0),
        hidden_dim: int = 32,
        frequencies: int = 2,
    ) -> None:
        super().__init__()
        self.mode: BackgroundMode = mode
        self.register_buffer("color", torch.tensor(color, dtype=torch.float32), persistent=False)
        self.frequencies = frequencies
        self.mlp: nn.Module | None = None
        if mode == "learned":
            self.mlp = nn.Sequential(
                nn.Linear(3 + 6 * frequencies, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, 3)
            )
            with torch.no_grad():  # start at the given colour
                last = self.mlp[-1]
                assert isinstance(last, nn.Linear)
                last.weight.mul_(0.1)
                last.bias.copy_(torch.logit(self.color.clamp(0.02, 0.98)))

    def forward(self, directions: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Colours for view directions; ``generator`` (CPU) drives the ``random`` mode."""
        color = self.color.to(directions.dtype)
        if self.mode == "learned" and self.mlp is not None:
            return torch.sigmoid(self.mlp(direction_encoding(directions, self.frequencies)))
        if self.mode == "random" and self.training:
            images = directions.shape[0] if directions.dim() >= 3 else 1
            random = torch.rand(images, 3, generator=generator).to(directions.device, directions.dtype)
            shape = (images,) + (1,) * (directions.dim() - 2) + (3,) if directions.dim() >= 3 else (3,)
            return random.reshape(shape).expand(*directions.shape[:-1], 3)
        return color.expand(*directions.shape[:-1], 3)
