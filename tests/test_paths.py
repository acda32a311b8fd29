"""Shipped folders are found in one place."""

from pathlib import Path

from dreamdistill.paths import PACKAGE, assets_dir, configs_dir, cuda_ext_dir, shipped

ROOT = Path(__file__).resolve().parent.parent


def test_a_checkout_finds_its_shipped_folders_at_the_top(monkeypatch):
    monkeypatch.delenv("DREAMDISTILL_ASSETS", raising=False)
    monkeypatch.delenv("DREAMDISTILL_CUDA_EXT", raising=False)
    assert PACKAGE.parent == ROOT
    assert (configs_dir(), assets_dir(), cuda_ext_dir()) == (ROOT / "configs", ROOT / "assets", ROOT / "cuda_ext")
    monkeypatch.setenv("DREAMDISTILL_ASSETS", "/elsewhere/assets")
    assert assets_dir() == Path("/elsewhere/assets") and shipped("assets") == ROOT / "assets"

