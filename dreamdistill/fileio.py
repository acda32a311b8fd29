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


def first_line(error: BaseException, limit: int = 160) -> str:
    """The first non-empty line of an exception's message (two when the first ends in a colon, as
    ``load_state_dict``'s does), for one-line errors, shortened to ``limit``."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
    text = " ".join(lines[:2]) if lines[0].endswith(":") else lines[0]
    return text if len(text) <= limit else text[: limit - 1] + "…"


def torch_load_checked(path: Path, keys: tuple[str, ...] = (), hint: str = "") -> dict:
    """``torch.load`` of a checkpoint written by :func:`torch_save_atomic`, or one line (DreamDistillError) when
    the file is empty, truncated, not a checkpoint or lacks one of ``keys``; ``hint`` says what to do then."""
    from dreamdistill.errors import DreamDistillError

    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as error:  # noqa: BLE001 - any failure to unpickle is the same user-facing problem
        reason = "the file is empty" if Path(path).stat().st_size == 0 else first_line(error)
        raise DreamDistillError(f"{path} cannot be read as a checkpoint ({reason}): it is truncated, empty or "
                                f"not a checkpoint; {hint}") from None
    missing = [key for key in keys if not isinstance(state, dict) or key not in state]
    if missing:
        raise DreamDistillError(f"{path} is not a checkpoint of this kind (no {', '.join(missing)}); {hint}")
    return state


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
