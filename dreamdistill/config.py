"""Typed dataclass configs, YAML presets and ``--set key=value`` overrides, with loud validation.

A preset is a YAML mapping whose keys mirror a dataclass's fields (nested dataclasses
are nested mappings). Unknown keys and values of the wrong type fail with one line that
names the key and the closest valid one.

Valid values are declared on the field itself, in its annotation, next to its docstring::

    levels: Annotated[int, Range(1, 32)] = 8
    t_range: Annotated[tuple[float, float], Range(0, 1, ordered=True)] = (0.02, 0.98)
    seed: Seed = 0                    # Annotated[int, Range(0, 2**63 - 1)]
    device: Device = None             # cpu, cuda or cuda:N that exists on this machine
    out: Annotated[str, OutputPath()] = "students/pd"

and one walk, :func:`validate`, checks every rule (and every ``Literal`` choice) of a config and its
sections before anything is loaded or written. Floats must be finite wherever a range is declared.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args, get_origin, get_type_hints

import yaml

from dreamdistill.errors import DreamDistillError

T = TypeVar("T")


# ---- declared rules (in a field's ``Annotated`` metadata) -------------------------------------------------


def _shown(name: str, value: Any) -> str:
    """``scene.levels=0`` for a config key, ``--width 0`` for a command-line flag."""
    shown = list(value) if isinstance(value, tuple) else value
    return f"{name} {shown!r}" if name.startswith("-") else f"{name}={shown!r}"


def _number(value: Any) -> str:
    if isinstance(value, int) or value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:g}"


@dataclass(frozen=True)
class Range:
    """Numbers from ``low`` to ``high`` (inclusive; ``open_low`` / ``open_high`` exclude the end; None: no
    bound), finite, optionally a multiple of ``multiple_of``. On a tuple or list it applies to every element;
    ``ordered`` also requires a pair to be [low, high] with low ≤ high. None passes (the field's "off")."""

    low: float | None = None
    high: float | None = None
    open_low: bool = False
    open_high: bool = False
    multiple_of: int | None = None
    ordered: bool = False

    def describe(self) -> str:
        if self.low is not None and self.high is not None:
            text = (f"in {'(' if self.open_low else '['}{_number(self.low)}, {_number(self.high)}"
                    f"{')' if self.open_high else ']'}")
        elif self.low is not None:
            text = f"{'>' if self.open_low else '≥'} {_number(self.low)}"
        elif self.high is not None:
            text = f"{'<' if self.open_high else '≤'} {_number(self.high)}"
        else:
            text = "a finite number"
        return text + (f" and a multiple of {self.multiple_of}" if self.multiple_of else "")

    def contains(self, x: Any) -> bool:
        if isinstance(x, bool) or not isinstance(x, (int, float)):
            return False
        if isinstance(x, float) and not math.isfinite(x):
            return False
        if self.low is not None and (x <= self.low if self.open_low else x < self.low):
            return False
        if self.high is not None and (x >= self.high if self.open_high else x > self.high):
            return False
        return not self.multiple_of or x % self.multiple_of == 0

    def check(self, value: Any, name: str) -> None:
        if value is None:
            return
        items = list(value) if isinstance(value, (tuple, list)) else [value]
        if not all(self.contains(x) for x in items):
            each = "each value " if isinstance(value, (tuple, list)) else ""
            raise DreamDistillError(f"{_shown(name, value)} is out of range: {each}must be {self.describe()}")
        if self.ordered and len(items) == 2 and items[0] > items[1]:
            raise DreamDistillError(f"{_shown(name, value)} is reversed: give [low, high] with low ≤ high")


@dataclass(frozen=True)
class DeviceName:
    """A torch device that exists on this machine: cpu, cuda (with a GPU), cuda:N (N < the GPU count), mps;
    None and "auto" pass (the program's own choice)."""

    def check(self, value: Any, name: str) -> None:
        if value is None or value == "auto":
            return
        check_device(str(value), name)


@dataclass(frozen=True)
class OutputPath:
    """A path this program may create or replace: a folder (``folder=True``) or a file. Nothing is created here;
    the nearest existing parent must be a writable folder. None passes."""

    folder: bool = True

    def check(self, value: Any, name: str) -> None:
        if value is not None:
            check_output_path(Path(value), name, folder=self.folder)


@dataclass(frozen=True)
class InputFile:
    """A file that must exist and be readable. None passes."""

    def check(self, value: Any, name: str) -> None:
        if value is not None and not (Path(value).is_file() and os.access(value, os.R_OK)):
            raise DreamDistillError(f"{_shown(name, str(value))}: no such readable file")


Seed = Annotated[int, Range(0, 2**63 - 1)]
"""A random seed: 0 ≤ seed < 2⁶³."""
Device = Annotated[str | None, DeviceName()]
"""cpu, cuda, cuda:N or mps, present on this machine (None: cuda when available)."""


def check_device(device: str, name: str = "--device") -> None:
    """One line, before any model is loaded, when ``device`` is not a device of this machine."""
    import torch

    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError):
        raise DreamDistillError(f"{_shown(name, device)}: unknown device; use cpu, cuda or cuda:N") from None
    if parsed.type == "cpu":
        return
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise DreamDistillError(f"{_shown(name, device)}: no CUDA GPU is available on this machine; use cpu")
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise DreamDistillError(f"{_shown(name, device)}: this machine has {count} GPU{'s' * (count != 1)} "
                                    f"(cuda:0 to cuda:{count - 1})")
        return
    if parsed.type == "mps" and torch.backends.mps.is_available():
        return
    raise DreamDistillError(f"{_shown(name, device)}: not available here; use cpu, cuda or cuda:N")


def check_output_path(path: Path, name: str = "--out", folder: bool = True) -> None:
    """Fail early, before any work, when ``path`` (a folder, or a file) cannot be created or replaced."""
    path = Path(path)
    if path.exists():
        if folder and not path.is_dir():
            raise DreamDistillError(f"{_shown(name, str(path))}: that is a file, not a folder; pass a folder")
        if not folder and path.is_dir():
            raise DreamDistillError(f"{_shown(name, str(path))}: that is a folder; pass a file name")
    parent = path if folder and path.is_dir() else path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise DreamDistillError(f"cannot write to {path}: {parent} is a file, not a folder; pass another {name}")
    if not os.access(parent, os.W_OK):
        raise DreamDistillError(f"cannot write to {path}: {parent} is not writable; pass a writable {name}")


def _rules(annotation: Any) -> list:
    """The rules in an annotation's ``Annotated`` metadata plus the choices of a ``Literal`` in it."""
    rules = []
    if get_origin(annotation) is Annotated:
        annotation, *metadata = get_args(annotation)
        rules += [m for m in metadata if hasattr(m, "check")]
    choices = _literal_choices(annotation)
    if choices:
        rules.append(_Choice(choices))
    return rules


def _literal_choices(annotation: Any) -> tuple | None:
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Literal:
        return args
    if origin in (typing.Union, types.UnionType, list, tuple):
        for arg in args:
            choices = _literal_choices(arg)
            if choices:
                return choices
    return None


@dataclass(frozen=True)
class _Choice:
    choices: tuple

    def check(self, value: Any, name: str) -> None:
        items = value if isinstance(value, (list, tuple)) else [value]
        for item in items:
            if item is not None and item not in self.choices:
                raise DreamDistillError(f"{_shown(name, value)}: {item!r} is not one of "
                                        f"{', '.join(map(repr, self.choices))}")


def field_rules(cls: type, name: str) -> list:
    """The declared rules of field ``name`` of dataclass ``cls``."""
    return _rules(get_type_hints(cls, include_extras=True)[name])


def check_field(cls: type, name: str, value: Any, shown_as: str) -> None:
    """Check ``value`` against the rules declared on ``cls.name`` (e.g. a command-line flag that sets it)."""
    for rule in field_rules(cls, name):
        rule.check(value, shown_as)


def validate(config: Any, names: Callable[[str], str] | None = None, prefix: str = "") -> None:
    """Check every declared rule of ``config`` and its nested sections; the first broken one raises one line.
    ``names`` maps a dotted key to how the user wrote it (e.g. ``width`` -> ``--width``)."""
    hints = get_type_hints(type(config), include_extras=True)
    for item in dataclasses.fields(config):
        value, key = getattr(config, item.name), f"{prefix}{item.name}"
        if dataclasses.is_dataclass(value):
            validate(value, names, f"{key}.")
            continue
        for rule in _rules(hints[item.name]):
            rule.check(value, names(key) if names else key)


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
    try:
        return key.strip().split("."), yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as error:
        raise DreamDistillError(f"override {text!r}: the value is not valid YAML "
                                f"({str(error).splitlines()[0]}); quote it or close its brackets") from error


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
