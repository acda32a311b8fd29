"""Typed configs: YAML presets and --set overrides, with one-line errors for bad keys and values."""

from dataclasses import dataclass, field
from typing import Literal

import pytest

from dreamdistill.config import load_config, parse_override, save_yaml
from dreamdistill.errors import DreamDistillError


@dataclass
class Inner:
    cfg: float = 7.5
    kind: Literal["sds", "vsd"] = "sds"
    range_: tuple[float, float] = (0.02, 0.98)


@dataclass
class Outer:
    steps: int = 100
    name: str = "x"
    inner: Inner = field(default_factory=Inner)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "preset.yaml"
    path.write_text("steps: 5\ninner:\n  kind: vsd\n  range_: [0.1, 0.5]\n")
    config = load_config(Outer, path, ["inner.cfg=3", "name=chair"])
    assert config == Outer(steps=5, name="chair", inner=Inner(cfg=3.0, kind="vsd", range_=(0.1, 0.5)))
    save_yaml(config, tmp_path / "saved.yaml")
    assert load_config(Outer, tmp_path / "saved.yaml") == config


@pytest.mark.parametrize("override,message", [
    ("stepz=3", "unknown config key 'stepz'; did you mean 'steps'"),
    ("inner.kindd=vsd", "unknown config key inner.'kindd'"),
    ("inner.kind=xyz", "must be one of 'sds', 'vsd'"),
    ("steps=abc", "'steps' must be int"),
    ("inner.cfg=1e-4x", "'inner.cfg' must be float"),
    ("inner.range_=[1]", "needs 2 values"),
    ("steps", "must look like key=value"),
])
def test_bad_overrides_fail_with_one_line(override, message):
    with pytest.raises(DreamDistillError, match=message.replace("(", r"\(").replace("[", r"\[")) as error:
        load_config(Outer, None, [override])
    assert "\n" not in str(error.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(DreamDistillError, match="does not exist"):
        load_config(Outer, tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(DreamDistillError, match="not valid YAML"):
        load_config(Outer, bad)


def test_parse_override_types():
    assert parse_override("a.b=1.5") == (["a", "b"], 1.5)
    assert parse_override("a=true") == (["a"], True)
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])


def test_exponent_without_dot_is_a_float():
    """YAML 1.1 reads 5e-5 as a string; a float field still takes it, in presets and overrides."""
    assert load_config(Outer, None, ["inner.cfg=5e-5"]).inner.cfg == 5e-5
    assert load_config(Outer, None, ["inner.cfg=-2E3"]).inner.cfg == -2000.0
