"""The toy-world evaluator: a small CNN that classifies category, colour and view, plus Fréchet distance.

Inputs are RGB images in [0, 1] (float) or uint8, any square resolution (resized to 32x32 inside).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

from dreamdistill.errors import DreamDistillError
from dreamdistill.paths import assets_dir
from dreamdistill.toyworld.world import CATEGORIES, COLOURS, VIEWS


def default_path() -> Path:
    """Where the shipped evaluator lives: ``toy-evaluator`` in the assets folder."""
    return assets_dir() / "toy-evaluator"


@dataclass(frozen=True)
class EvaluatorConfig:
    """Architecture of the evaluator (saved as ``config.json`` next to the weights)."""

    widths: tuple[int, ...] = (24, 48, 96)
    """Channels of the three conv stages (32x32, 16x16, 8x8)."""
    feature_dim: int = 128
    """Size of the penultimate feature vector (used for Fréchet distances)."""
    resolution: int = 32
    """Input resolution; other resolutions are resized to it."""
    categories: tuple[str, ...] = CATEGORIES
    """Class names of the category head."""
    colours: tuple[str, ...] = COLOURS
    """Class names of the colour head."""
    views: tuple[str, ...] = VIEWS
    """Class names of the view head."""

    @classmethod
    def from_dict(cls, data: dict) -> EvaluatorConfig:
        unknown = set(data) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"unknown evaluator config keys: {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items()})


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def prepare_images(images: torch.Tensor, resolution: int = 32) -> torch.Tensor:
    """uint8 or float [0, 1] images [B, 3, H, W] -> float [B, 3, resolution, resolution] in [0, 1]."""
    images = images.float() / 255.0 if images.dtype == torch.uint8 else images.float()
    if images.shape[-1] != resolution or images.shape[-2] != resolution:
        images = F.interpolate(
            images, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
        )
    return images.clamp(0.0, 1.0)


class Evaluator(nn.Module):
    """Category, colour and view classifier with a feature layer; also regresses the camera direction."""

    def __init__(self, config: EvaluatorConfig = EvaluatorConfig()) -> None:
        super().__init__()
        self.config = config
        w1, w2, w3 = config.widths
        self.trunk = nn.Sequential(
            _block(3, w1),
            nn.MaxPool2d(2),  # 16x16
            _block(w1, w2),
            _block(w2, w2),
            nn.MaxPool2d(2),  # 8x8
            _block(w2, w3),
            _block(w3, w3),
            nn.MaxPool2d(2),  # 4x4
            nn.Flatten(),
            nn.Linear(w3 * (config.resolution // 8) ** 2, config.feature_dim),
            nn.ReLU(inplace=True),
        )
        self.category_head = nn.Linear(config.feature_dim, len(config.categories))
        self.colour_head = nn.Linear(config.feature_dim, len(config.colours))
        self.view_head = nn.Linear(config.feature_dim, len(config.views))
        self.camera_head = nn.Linear(config.feature_dim, 3)  # auxiliary: sin az, cos az, sin el

    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Penultimate features [B, feature_dim] of images in [0, 1] (or uint8)."""
        x = prepare_images(images.to(self._device()), self.config.resolution)
        return self.trunk(x * 2.0 - 1.0)

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every head (and the camera regression) for images in [0, 1] (or uint8)."""
        feats = self.features(images)
        return {
            "category": self.category_head(feats),
            "colour": self.colour_head(feats),
            "view": self.view_head(feats),
            "camera": self.camera_head(feats),
            "features": feats,
        }

    @torch.no_grad()
    def classify(self, images: torch.Tensor, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Predicted indices (``category``, ``colour``, ``view``) and probabilities (``*_probs``)."""
        was_training = self.training
        self.eval()
        outputs: dict[str, list[torch.Tensor]] = {}
        for start in range(0, images.shape[0], batch_size):
            logits = self(images[start : start + batch_size])
            for head in ("category", "colour", "view"):
                probs = logits[head].softmax(dim=-1).cpu()
                outputs.setdefault(head, []).append(probs.argmax(dim=-1))
                outputs.setdefault(f"{head}_probs", []).append(probs)
        self.train(was_training)
        return {k: torch.cat(v) for k, v in outputs.items()}

    @torch.no_grad()
    def embed(self, images: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
        """Features of many images in evaluation mode, [B, feature_dim] on the CPU."""
        was_training = self.training
        self.eval()
        feats = torch.cat(
            [self.features(images[s : s + batch_size]).cpu() for s in range(0, images.shape[0], batch_size)]
        )
        self.train(was_training)
        return feats

    def save(self, path: str | Path, dtype: torch.dtype = torch.float16) -> None:
        """Write ``model.safetensors`` (floating tensors cast to ``dtype``) and ``config.json``."""
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        state = {
            k: (v.to(dtype) if v.is_floating_point() else v).contiguous().cpu() for k, v in self.state_dict().items()
        }
        save_file(state, str(path / "model.safetensors"))
        (path / "config.json").write_text(json.dumps(asdict(self.config), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path | None = None, device: torch.device | str = "cpu") -> Evaluator:
        """Load a saved evaluator folder (default: the shipped ``assets/toy-evaluator``), in eval mode."""
        path = default_path() if path is None else Path(path)
        if not (path / "model.safetensors").is_file():
            raise DreamDistillError(
                f"no evaluator at {path}; train one with: python -m dreamdistill.toyworld.train_evaluator --out {path}"
            )
        config = EvaluatorConfig.from_dict(json.loads((path / "config.json").read_text()))
        model = cls(config)
        state = load_file(str(path / "model.safetensors"))
        reference = model.state_dict()
        model.load_state_dict({k: v.to(reference[k].dtype) for k, v in state.items()})
        return model.to(device).eval()


def frechet_distance(feats_a: torch.Tensor, feats_b: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets [Na, D] and [Nb, D].

    ‖μa − μb‖² + tr(Σa + Σb − 2 (Σa^½ Σb Σa^½)^½), in float64 with symmetric eigendecompositions.
    """
    a, b = feats_a.double(), feats_b.double()
    mean_a, mean_b = a.mean(dim=0), b.mean(dim=0)
    cov_a, cov_b = torch.atleast_2d(torch.cov(a.T)), torch.atleast_2d(torch.cov(b.T))
    sqrt_a = _sqrtm_psd(cov_a)
    cross = _sqrtm_psd(sqrt_a @ cov_b @ sqrt_a)
    value = (mean_a - mean_b).square().sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2.0 * torch.trace(cross)
    return max(float(value), 0.0)


def kid_blocks(feats_a: torch.Tensor, feats_b: torch.Tensor, blocks: int = 10) -> torch.Tensor:
    """The unbiased MMD² with the cubic polynomial kernel k(x, y) = (xᵀy / D + 1)³ on each of ``blocks`` disjoint
    equal blocks of both sets (fewer when the sets are small: each block needs 2 samples): [blocks], float64.
    Every term skips i = j, the cross term too: samples drawn for the real renders' captions (sample i for
    caption i) are correlated with real image i, and k(x_i, y_i) would bias KID below zero; k(x_i, y_j), i ≠ j,
    pairs independent draws, so the estimate stays unbiased. Two sample sets scored against the same
    ``feats_b`` give paired blocks (see :func:`kid_difference`)."""
    a, b = feats_a.double(), feats_b.double()
    n = min(a.shape[0], b.shape[0])
    blocks = min(blocks, n // 2)
    if blocks < 2:
        raise ValueError(f"KID with a standard error needs at least 4 samples in each set, got {n}")
    size = n // blocks
    dim = a.shape[1]
    estimates = []
    for block in range(blocks):
        x, y = a[block * size:(block + 1) * size], b[block * size:(block + 1) * size]
        k_xx, k_yy, k_xy = ((p @ q.T / dim + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        off = size * (size - 1)  # i ≠ j in every term: sample i of both sets may be paired (the same prompt)
        estimates.append((k_xx.sum() - k_xx.diagonal().sum()) / off + (k_yy.sum() - k_yy.diagonal().sum()) / off
                         - 2 * (k_xy.sum() - k_xy.diagonal().sum()) / off)
    return torch.stack(estimates)


def kernel_inception_distance(feats_a: torch.Tensor, feats_b: torch.Tensor, blocks: int = 10
                              ) -> tuple[float, float]:
    """KID (Bińkowski et al. 2018) with its standard error: the mean of :func:`kid_blocks` and its std / √blocks.
    Unbiased at any n, so small sets give noisy but centred estimates."""
    values = kid_blocks(feats_a, feats_b, blocks)
    return float(values.mean()), float(values.std() / len(values) ** 0.5)


def kid_difference(feats_a: torch.Tensor, feats_b: torch.Tensor, real: torch.Tensor, blocks: int = 10
                   ) -> tuple[float, float]:
    """KID(a, real) − KID(b, real) with its standard error from the paired blocks (both against the same real
    blocks, so the real set's own noise cancels): (mean, std / √blocks). Call a and b different only when
    |mean| > 2 standard errors."""
    values = kid_blocks(feats_a, real, blocks) - kid_blocks(feats_b, real, blocks)
    return float(values.mean()), float(values.std() / len(values) ** 0.5)


def _sqrtm_psd(matrix: torch.Tensor) -> torch.Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative eigenvalues clipped)."""
    matrix = (matrix + matrix.T) / 2
    values, vectors = torch.linalg.eigh(matrix)
    return (vectors * values.clamp_min(0).sqrt()) @ vectors.T
