"""Shipped students: a tiny student shipped into an assets folder, sampled by short name; the real assets are lean.

The quality of the shipped weights is measured by benchmarks/distill.py, never here.
"""

import json

import pytest
import torch

from dreamdistill.diffusion.teacher import (
    LATENT_NOTES_NAME,
    SHIPPED_MODELS,
    TEACHER_CONFIG_NAME,
    TRAINED_HERE,
    Teacher,
    resolve_teacher_path,
)
from dreamdistill.errors import DreamDistillError
from dreamdistill.paths import assets_dir


@pytest.fixture(scope="module")
def shipped_assets(tiny_pixel_teacher_dir, tmp_path_factory):
    """A tiny one-step 'DMD' student as distill writes it (with a resumed log), shipped to assets/toy-dmd."""
    from dreamdistill.distill.student import save_student, ship_student

    root = tmp_path_factory.mktemp("shipping")
    teacher = Teacher.from_pretrained(tiny_pixel_teacher_dir, device="cpu", dtype=torch.float32)
    recipe = {"method": "dmd", "loop": {"steps": 60, "batch_size": 8}}
    save_student(teacher, teacher.unet, root / "students" / "dmd", steps=1, cfg=1.0, method="dmd",
                 extra={"recipe": recipe, "steps_trained": {"dmd": 60}})
    work = root / "students" / "dmd-work"
    work.mkdir()
    log = [{"phase": "dmd", "step": 25, "elapsed_s": 30.0}, {"phase": "dmd", "step": 50, "elapsed_s": 60.0},
           {"phase": "dmd", "step": 60, "elapsed_s": 12.0}]  # resumed after step 50: 60 s + 12 s
    (work / "log.jsonl").write_text("\n".join(json.dumps(r) for r in log) + "\n")
    ship_student(root / "students" / "dmd", root / "assets" / "toy-dmd")
    return root


def test_shipped_student_is_fp16_with_recipe_and_trained_steps(shipped_assets):
    from safetensors import safe_open

    folder = shipped_assets / "assets" / "toy-dmd"
    saved = json.loads((folder / TEACHER_CONFIG_NAME).read_text())
    assert saved["trained_steps"] == 60 and saved["recipe"]["method"] == "dmd"
    assert saved["training_minutes"] == {"dmd": 1.2} and saved["default_steps"] == 1
    with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float16}
    assert sorted(p.name for p in folder.iterdir()) == [TEACHER_CONFIG_NAME, "scheduler", "training_log.jsonl",
                                                        "unet"]  # and no optimiser state


def test_shipped_student_samples_like_the_trained_one(shipped_assets, monkeypatch):
    monkeypatch.setenv("DREAMDISTILL_ASSETS", str(shipped_assets / "assets"))
    trained = Teacher.from_pretrained(shipped_assets / "students" / "dmd", device="cpu")
    shipped = Teacher.from_pretrained("toy-dmd", device="cpu")
    assert shipped.info.path == shipped_assets / "assets" / "toy-dmd" and shipped.dtype == torch.float32
    prompts = ["a red chair, front view"] * 2
    torch.testing.assert_close(shipped.sample(prompts, steps=1, guidance_scale=1.0),
                               trained.sample(prompts, steps=1, guidance_scale=1.0), atol=2e-2, rtol=0)


def test_sample_by_short_name_uses_the_students_own_steps(shipped_assets, monkeypatch, tmp_path, capsys):
    from PIL import Image

    from dreamdistill.cli import main

    monkeypatch.setenv("DREAMDISTILL_ASSETS", str(shipped_assets / "assets"))
    out = tmp_path / "grid.png"
    assert main(["sample", "a red chair, front view", "--model", "toy-dmd", "-n", "16", "--out", str(out),
                 "--device", "cpu"]) == 0
    assert "16 samples, 1 steps, cfg 1.0, model toy-dmd" in capsys.readouterr().out
    assert Image.open(out).size[0] > 0


def test_missing_shipped_student_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("DREAMDISTILL_ASSETS", str(tmp_path))
    with pytest.raises(DreamDistillError, match="shipped model 'toy-sid' is not available.*ship_students"):
        resolve_teacher_path("toy-sid")


@pytest.mark.parametrize("name", [n for n in SHIPPED_MODELS if n not in TRAINED_HERE])  # the students, not the teachers
def test_the_repository_ships_lean_students(name):
    """The students in assets/ (when this checkout has them): fp16 weights only, recipe and trained_steps."""
    from safetensors import safe_open

    folder = assets_dir() / SHIPPED_MODELS[name]
    latent = name.startswith("toy-sd-")  # a diffusers pipeline folder: the teacher's VAE and text encoder beside it
    notes = folder / (LATENT_NOTES_NAME if latent else TEACHER_CONFIG_NAME)
    if not notes.is_file():
        pytest.skip(f"{folder} is not shipped in this checkout")
    saved = json.loads(notes.read_text())
    method = name.removeprefix("toy-sd-" if latent else "toy-")
    assert saved["trained_steps"] > 0 and saved["recipe"]["method"] == {"pd4": "pd"}.get(method, method)
    files = [p for p in folder.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) < (40 if latent else 12) * 2**20
    with safe_open(str(folder / "unet" / "diffusion_pytorch_model.safetensors"), "pt") as weights:
        assert {weights.get_tensor(k).dtype for k in weights.keys()} == {torch.float16}
