"""Typed dataclass configs, YAML presets and ``--set key=value`` overrides, with loud validation.

A preset is a YAML mapping whose keys mirror a dataclass's fields (nested dataclasses
are nested mappings). Unknown keys and values of the wrong type fail with one line that
names the key and the closest valid one.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from dreamdistill.errors import DreamDistillError

T = TypeVar("T")


def _unknown_key_error(key: str, valid: list[str], where: str) -> DreamDistillError:
    close = difflib.get_close_matches(key, valid, n=1)
    hint = f"did you mean {close[0]!r}?" if close else f"valid keys: {', '.join(valid)}"
    return DreamDistillError(f"unknown config key {where}{key!r}; {hint}")


_FLOAT_TEXT = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check (and gently convert) a YAML value against a field's type annotation."""
    origin, args = get_origin(annotation), get_args(annotation)
    if dataclasses.is_dataclass(annotation):
        if not isinstance(value, dict):
            raise DreamDistillError(f"config key {where!r} must be a mapping, got {value!r}")
        return from_dict(annotation, value, prefix=f"{where}.")
    if origin is Literal:
        if value not in args:
            raise DreamDistillError(f"config key {where!r} must be one of {', '.join(map(repr, args))}, got {value!r}")
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, where)
            except DreamDistillError as error:
                errors.append(str(error))
        raise DreamDistillError(errors[0])
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise DreamDistillError(f"config key {where!r} must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(value) != len(args):
                raise DreamDistillError(f"config key {where!r} needs {len(args)} values, got {len(value)}")
            return tuple(_coerce(v, a, where) for v, a in zip(value, args))
        item = args[0] if args else Any
        return origin(_coerce(v, item, where) for v in value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str) and _FLOAT_TEXT.fullmatch(value.strip()):
        return float(value)  # YAML 1.1 reads 5e-5 (no dot) as a string
    if annotation in (int, float, str, bool) and not isinstance(value, annotation) or (
        annotation in (int, float) and isinstance(value, bool)
    ):
        raise DreamDistillError(f"config key {where!r} must be {annotation.__name__}, got {value!r}")
    return value


def from_dict(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping, rejecting unknown keys and wrong types."""
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            raise _unknown_key_error(key, list(fields), prefix)
        kwargs[key] = _coerce(value, hints[key], f"{prefix}{key}")
    return cls(**kwargs)


def to_dict(config) -> dict:
    """A plain, YAML-safe mapping of a dataclass config (tuples become lists)."""

    def plain(value):
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return plain(dataclasses.asdict(config))


def parse_override(text: str) -> tuple[list[str], Any]:
    """``a.b=1.5`` -> (["a", "b"], 1.5); values are parsed as YAML scalars or lists."""
    if "=" not in text:
        raise DreamDistillError(f"override {text!r} must look like key=value (e.g. --set guidance.cfg=7.5)")
    key, raw = text.split("=", 1)
    if not key.strip():
        raise DreamDistillError(f"override {text!r} has an empty key")
    return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""


def merge_override(data: dict, path: list[str], value: Any) -> dict:
    """Set data[path[0]][path[1]]... = value, creating nested mappings as needed."""
    node = data
    for part in path[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise DreamDistillError(f"override {'.'.join(path)!r}: {part!r} is not a section")
    node[path[-1]] = value
    return data


def read_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DreamDistillError(
            f"config file {path} does not exist; presets live in configs/ (e.g. configs/toy-sds.yaml)"
        )
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise DreamDistillError(f"config file {path} is not valid YAML: {str(error).splitlines()[0]}") from error
    if not isinstance(data, dict):
        raise DreamDistillError(f"config file {path} must hold a mapping of keys to values")
    return data


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] = (), base: dict | None = None) -> T:
    """Defaults <- ``base`` <- YAML file <- ``--set`` overrides, validated into ``cls``."""
    data: dict = {}
    for layer in (base or {}, read_yaml(path) if path else {}):
        for key, value in _flatten(layer):
            merge_override(data, key, value)
    for text in overrides:
        merge_override(data, *parse_override(text))
    return from_dict(cls, data)


def _flatten(data: dict, prefix: tuple = ()) -> list[tuple[list[str], Any]]:
    items = []
    for key, value in data.items():
        if isinstance(value, dict) and value:
            items.extend(_flatten(value, prefix + (key,)))
        else:
            items.append((list(prefix + (key,)), value))
    return items


def save_yaml(config, path: str | Path) -> Path:
    """Write a dataclass config as YAML, atomically."""
    from dreamdistill.fileio import write_text_atomic

    return write_text_atomic(Path(path), yaml.safe_dump(to_dict(config), sort_keys=False))
