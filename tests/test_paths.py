"""Shipped folders are found in one place; committed results name files relative to the repository."""

import json
import re
from pathlib import Path

from dreamdistill.paths import PACKAGE, assets_dir, configs_dir, cuda_ext_dir, repo_relative, shipped

ROOT = Path(__file__).resolve().parent.parent
MACHINE_FOLDER = re.compile(r"^(/work/|/tmp/|/root/|/home/|/Users/|[A-Za-z]:\\)")


def test_a_checkout_finds_its_shipped_folders_at_the_top(monkeypatch):
    monkeypatch.delenv("DREAMDISTILL_ASSETS", raising=False)
    monkeypatch.delenv("DREAMDISTILL_CUDA_EXT", raising=False)
    assert PACKAGE.parent == ROOT
    assert (configs_dir(), assets_dir(), cuda_ext_dir()) == (ROOT / "configs", ROOT / "assets", ROOT / "cuda_ext")
    monkeypatch.setenv("DREAMDISTILL_ASSETS", "/elsewhere/assets")
    assert assets_dir() == Path("/elsewhere/assets") and shipped("assets") == ROOT / "assets"


def test_repo_relative(tmp_path, monkeypatch):
    assert repo_relative(ROOT / "assets" / "toy-teacher") == "assets/toy-teacher"
    monkeypatch.chdir(tmp_path)
    assert repo_relative(tmp_path / "results" / "x.json") == "results/x.json"
    assert repo_relative("/nowhere/x") == "/nowhere/x"


def strings(value):
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for item in value.values():
            yield from strings(item)
    elif isinstance(value, list):
        for item in value:
            yield from strings(item)


def test_committed_benchmark_results_carry_no_machine_folders():
    for path in sorted((ROOT / "benchmarks" / "results").rglob("*.json")):  # archive/ too
        absolute = [s for s in strings(json.loads(path.read_text())) if MACHINE_FOLDER.match(s)]
        assert absolute == [], f"{path.name}: {absolute[:3]}"
