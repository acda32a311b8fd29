"""Atomic file writes: write to a temporary sibling, then rename over the target."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def _replace_from_temp(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def write_json_atomic(path: Path, data) -> Path:
    """JSON, indented, written atomically."""
    return _replace_from_temp(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def write_text_atomic(path: Path, text: str) -> Path:
    return _replace_from_temp(path, lambda tmp: tmp.write_text(text))


def torch_save_atomic(path: Path, obj) -> Path:
    """``torch.save`` atomically (checkpoints survive a kill mid-write)."""
    return _replace_from_temp(path, lambda tmp: torch.save(obj, tmp))


def save_image_atomic(path: Path, image) -> Path:
    """Save a uint8 HxWx3 array (or PIL image) as PNG/JPEG/GIF atomically."""
    from PIL import Image

    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    suffix = Path(path).suffix.lstrip(".").upper().replace("JPG", "JPEG") or "PNG"
    return _replace_from_temp(path, lambda tmp: picture.save(tmp, format=suffix))
