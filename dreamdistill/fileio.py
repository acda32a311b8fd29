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


def append_jsonl(path: Path, record: dict) -> None:
    """Append one JSON line with a single write (a crash leaves at most one partial last line)."""
    with open(path, "a") as handle:
        handle.write(json.dumps(record) + "\n")


def read_jsonl(path: Path) -> list[dict]:
    """The whole records of a JSON-lines file (a partial last line is skipped)."""
    records = []
    if Path(path).is_file():
        for line in Path(path).read_text().splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return records


def truncate_jsonl(path: Path, keep) -> None:
    """Rewrite a JSON-lines file atomically with only the records for which ``keep(record)`` is true."""
    if Path(path).is_file():
        text = "".join(json.dumps(r) + "\n" for r in read_jsonl(path) if keep(r))
        write_text_atomic(path, text)
