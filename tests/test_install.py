"""`pip install .` (not editable): the wheel carries configs/, assets/ and cuda_ext/, and runs from another folder."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
CHEAP = ["scene.levels=4", "render.batch_size=1", "render.step_divisions=32", "turntable_frames=2",
         "turntable_resolution=32", "view_resolution=32", "metric_views=2", "export.resolution=32",
         "export.coarse_resolution=16", "export.formats=[ply]"]
"""The default preset made cheap (the PyTorch grid, a small finish): seconds, not minutes, on a CPU."""


def fresh_clone(folder: Path) -> Path:
    """The repository's files as a clone would have them (tracked, plus new files that git does not ignore)."""
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True)
    if listed.returncode != 0:
        pytest.skip("git cannot list the repository's files")
    for name in filter(None, listed.stdout.decode().split("\0")):
        if (ROOT / name).is_file():
            (folder / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, folder / name)
    return folder


def run(command: list, cwd: Path, env: dict) -> str:
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{' '.join(map(str, command))}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result.stdout


@pytest.mark.slow
def test_the_wheel_installs_and_runs_from_another_folder(tmp_path):
    pytest.importorskip("setuptools", reason="building the wheel without isolation needs setuptools")
    source, target, elsewhere = fresh_clone(tmp_path / "clone"), tmp_path / "target", tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("DREAMDISTILL_")}
    # the PyTorch grid: the kernel's JIT build is keyed by its sources' paths, so building it from the temporary
    # install would cost a rebuild here and another one for the checkout's next test
    env.update(PYTHONPATH=str(target), HF_HUB_OFFLINE="1", PYTHONDONTWRITEBYTECODE="1",
               DREAMDISTILL_HASHGRID_KERNEL="0")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    run([*pip, "wheel", str(source), "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "wheel")], tmp_path,
        env)
    (wheel,) = (tmp_path / "wheel").glob("dreamdistill-*.whl")
    run([*pip, "install", "--no-deps", "--target", str(target), str(wheel)], tmp_path, env)
    shutil.rmtree(source)  # nothing may come from the clone

    where = run([sys.executable, "-c", "import dreamdistill.paths as p, dreamdistill.scene.kernel as k; "
                 "print(p.PACKAGE, p.configs_dir(), p.assets_dir(), k.sources_dir(), sep='\\n')"], elsewhere, env)
    package, *folders = map(Path, where.split())
    assert package == target / "dreamdistill"
    assert all(folder.is_relative_to(package) for folder in folders), folders
    configs, assets, kernel = folders
    assert {p.name for p in configs.glob("*.yaml")} == {p.name for p in (ROOT / "configs").glob("*.yaml")}
    assert (assets / "toy-teacher" / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert (assets / "toy-evaluator" / "model.safetensors").is_file()
    for student in ("toy-pd4", "toy-dmd", "toy-sid"):  # the shipped students this checkout has
        if (ROOT / "assets" / student).is_dir():
            assert (assets / student / "unet" / "diffusion_pytorch_model.safetensors").is_file()
    assert {p.name for p in kernel.iterdir()} == {p.name for p in (ROOT / "cuda_ext" / "hashgrid").iterdir()}
    assert "usage: dreamdistill" in run([sys.executable, "-m", "dreamdistill", "--help"], elsewhere, env)
    assert "usage: dreamdistill" in run([str(target / "bin" / "dreamdistill"), "--help"], elsewhere, env)

    overrides = [arg for item in CHEAP for arg in ("--set", item)]
    out = run([str(target / "bin" / "dreamdistill"), "a red chair", "--steps", "3", "--device", "cpu", *overrides],
              elsewhere, env)
    (run_dir,) = (elsewhere / "runs").iterdir()
    assert out.startswith(f"done: runs/{run_dir.name}")
    for name in ("config.yaml", "metrics.json", "mesh.ply", "turntable.gif", "report.html"):
        assert (run_dir / name).is_file(), name
