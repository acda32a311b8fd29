"""Train the toy-world evaluator: ``python -m dreamdistill.toyworld.train_evaluator [--out assets/toy-evaluator]``.

Renders a seeded training set once, then trains with mild augmentation (shifts, scale, blur,
noise, brightness) so that the classifier also reads diffusion samples and NeRF renders.
About 15 minutes on one CPU thread with the defaults (17 min measured with 3 other jobs on the 2 cores).
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from dreamdistill.toyworld.dataset import ToyBatch, render_dataset
from dreamdistill.toyworld.evaluator import Evaluator, EvaluatorConfig, default_path
from dreamdistill.toyworld.world import VIEWS

TRAIN_SEED = 10_000
"""Seed of the evaluator's training renders (held-out checks use other seeds)."""
VALIDATION_SEED = 20_000
"""Seed of the renders used for the accuracy printed after training."""


@dataclass(frozen=True)
class TrainConfig:
    """Evaluator training recipe."""

    out: Path | None = None
    """Output folder (``model.safetensors`` + ``config.json``); default ``assets/toy-evaluator``."""
    train_count: int = 24_000
    """Rendered training images."""
    validation_count: int = 2_000
    """Rendered held-out images scored at the end."""
    steps: int = 1_300
    """Optimiser steps."""
    batch_size: int = 128
    """Images per step."""
    lr: float = 3e-3
    """Peak AdamW learning rate (one-cycle schedule)."""
    weight_decay: float = 5e-4
    """AdamW weight decay."""
    widths: tuple[int, ...] = (24, 48, 96)
    """Conv channels of the three stages."""
    feature_dim: int = 128
    """Feature (penultimate) size."""
    threads: int = 1
    """Torch CPU threads (1 is fastest when other jobs share the cores)."""
    seed: int = 0
    """Seed of initialisation, batching and augmentation."""


def augment(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mild, label-preserving augmentation of float images [B, 3, H, W] on white.

    Random shift (±2 px) and scale (±6 %), blur, gaussian noise and a slight brightness change.
    """
    batch, _, size, _ = images.shape

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch, *shape, generator=generator)

    scale = uniform(0.94, 1.06)
    shift = uniform(-2.0, 2.0, 2) * (2.0 / size)
    theta = torch.zeros(batch, 2, 3)
    theta[:, 0, 0], theta[:, 1, 1] = 1 / scale, 1 / scale
    theta[:, :, 2] = shift
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    ink = F.grid_sample(1.0 - images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    images = 1.0 - ink  # zero padding of "ink" = white background
    kernel = torch.tensor([1.0, 2.0, 1.0])
    kernel = (kernel[:, None] * kernel[None, :] / 16.0).expand(3, 1, 3, 3)
    blurred = F.conv2d(F.pad(images, (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
    amount = uniform(0.0, 1.0, 1, 1, 1) * (torch.rand(batch, 1, 1, 1, generator=generator) < 0.5)
    images = images + amount * (blurred - images)
    images = images * uniform(0.93, 1.04, 1, 1, 1) + uniform(-0.03, 0.03, 1, 1, 1)
    noise = torch.randn(images.shape, generator=generator) * uniform(0.0, 0.04, 1, 1, 1)
    return (images + noise).clamp(0.0, 1.0)


def camera_targets(batch: ToyBatch) -> tuple[torch.Tensor, torch.Tensor]:
    """Auxiliary regression targets (sin az, cos az, sin el) [N, 3] and their mask (azimuth only with a front)."""
    az, el = torch.deg2rad(batch.cameras.azimuth), torch.deg2rad(batch.cameras.elevation)
    target = torch.stack([az.sin(), az.cos(), el.sin()], dim=-1)
    mask = torch.ones_like(target)
    mask[:, :2] = batch.fronted[:, None].float()
    return target, mask


def accuracy(model: Evaluator, batch: ToyBatch) -> dict[str, float]:
    """Held-out accuracies: category, colour (all images) and view (categories with a front)."""
    predicted = model.classify(batch.images)
    fronted = batch.fronted
    return {
        "category": float((predicted["category"] == batch.category).float().mean()),
        "colour": float((predicted["colour"] == batch.colour).float().mean()),
        "view": float((predicted["view"][fronted] == batch.view[fronted]).float().mean()),
    }


def train(config: TrainConfig) -> Evaluator:
    """Render, train, report held-out accuracy, save."""
    torch.set_num_threads(config.threads)
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    start = time.time()
    data = render_dataset(config.train_count, TRAIN_SEED, progress=True)
    print(f"rendered {config.train_count} training images in {time.time() - start:.0f}s")
    targets, target_mask = camera_targets(data)
    model = Evaluator(EvaluatorConfig(widths=config.widths, feature_dim=config.feature_dim))
    optimiser = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=config.steps, pct_start=0.15
    )
    order = torch.randperm(config.train_count, generator=generator)
    cursor = 0
    model.train()
    bar = tqdm(range(config.steps), desc="training evaluator")
    for step in bar:
        if cursor + config.batch_size > config.train_count:
            order, cursor = torch.randperm(config.train_count, generator=generator), 0
        index = order[cursor : cursor + config.batch_size]
        cursor += config.batch_size
        images = augment(data.images[index].float() / 255.0, generator)
        out = model(images)
        loss = (
            F.cross_entropy(out["category"], data.category[index])
            + F.cross_entropy(out["colour"], data.colour[index])
            + F.cross_entropy(out["view"], data.view[index], label_smoothing=0.05)
            + 0.5 * ((out["camera"] - targets[index]).square() * target_mask[index]).mean() * 3
        )
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
        schedule.step()
        if step % 20 == 0:
            bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{schedule.get_last_lr()[0]:.1e}")
        if not math.isfinite(loss.item()):
            raise RuntimeError(f"non-finite loss at step {step}")
    model.eval()
    validation = render_dataset(config.validation_count, VALIDATION_SEED)
    scores = accuracy(model, validation)
    print(
        "held-out accuracy "
        + ", ".join(f"{k} {v:.4f}" for k, v in scores.items())
        + f" (view over {VIEWS} on categories with a front); total {time.time() - start:.0f}s"
    )
    out = default_path() if config.out is None else config.out
    model.save(out)
    print(f"saved to {out}")
    return model


def main(argv: list[str] | None = None) -> None:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=defaults.out)
    parser.add_argument("--train-count", type=int, default=defaults.train_count)
    parser.add_argument("--validation-count", type=int, default=defaults.validation_count)
    parser.add_argument("--steps", type=int, default=defaults.steps)
    parser.add_argument("--batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--lr", type=float, default=defaults.lr)
    parser.add_argument("--threads", type=int, default=defaults.threads)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    args = parser.parse_args(argv)
    train(
        TrainConfig(
            out=args.out,
            train_count=args.train_count,
            validation_count=args.validation_count,
            steps=args.steps,
            batch_size=args.batch_size,
            lr=args.lr,
            threads=args.threads,
            seed=args.seed,
        )
    )


if __name__ == "__main__":
    main()
