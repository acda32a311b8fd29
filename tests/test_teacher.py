"""Both teacher folder formats, built tiny and random, saved, reloaded through from_pretrained and run."""

import subprocess
import sys

import pytest
import torch

from dreamdistill.diffusion.denoiser import classifier_free_guidance
from dreamdistill.diffusion.teacher import Teacher, resolve_teacher_path
from dreamdistill.errors import DreamDistillError


@pytest.fixture(scope="module")
def pixel(tiny_pixel_teacher_dir):
    return Teacher.from_pretrained(tiny_pixel_teacher_dir, device="cpu")


@pytest.fixture(scope="module")
def sd(tiny_sd_teacher_dir):
    return Teacher.from_pretrained(tiny_sd_teacher_dir, device="cpu")


def test_pixel_teacher_loads_and_maps_images(pixel):
    assert pixel.info.format == "pixel" and pixel.prediction_type == "v_prediction"
    assert pixel.model_shape == (3, 16, 16) and pixel.dtype == torch.float32
    images = torch.rand(2, 3, 40, 40)  # any resolution is resized to the teacher's
    x = pixel.images_to_model(images)
    assert x.shape == (2, 3, 16, 16) and x.min() >= -1 and x.max() <= 1
    same = torch.rand(2, 3, 16, 16)
    torch.testing.assert_close(pixel.model_to_images(pixel.images_to_model(same)), same)


def test_text_embeddings_are_cached_and_unconditional_is_empty_prompt(pixel):
    a = pixel.encode_text(["a red chair", "a blue mug"])
    assert a.shape == (2, 8, 384)
    assert "a red chair" in pixel.text_encoder._cache
    torch.testing.assert_close(pixel.encode_text(["a blue mug"])[0], a[1])
    torch.testing.assert_close(pixel.uncond_embedding(3)[2], pixel.encode_text([""])[0])
    assert not torch.allclose(a[0], a[1])


@pytest.mark.parametrize("which", ["pixel", "sd"])
def test_cfg_prediction_equals_two_separate_passes(which, request):
    teacher = request.getfixturevalue(which)
    c, h, w = teacher.model_shape
    x = torch.randn(2, c, h, w, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([100, 700])
    text = teacher.encode_text(["a red chair", "a blue mug"])
    cond = teacher.predict_eps(x, t, text, guidance_scale=1.0)
    uncond = teacher.predict_eps(x, t, teacher.uncond_embedding(2), guidance_scale=1.0)
    guided = teacher.predict_eps(x, t, text, guidance_scale=5.0)
    torch.testing.assert_close(guided, classifier_free_guidance(uncond, cond, 5.0), atol=1e-5, rtol=1e-4)
    assert guided.dtype == torch.float32 and torch.isfinite(guided).all()


def test_eps_prediction_converts_from_v(pixel):
    """The v-teacher's ε equals σ x_t + α v from the raw network output."""
    x = torch.randn(1, 3, 16, 16)
    t = torch.tensor([500])
    text = pixel.encode_text(["a red chair"])
    v = pixel.model_output(x, t, text)
    alpha, sigma = pixel.schedule.alpha_sigma(t)
    torch.testing.assert_close(pixel.predict_eps(x, t, text), (sigma * x + alpha * v).float())


def test_sd_teacher_latents_round_trip_shapes(sd):
    assert sd.info.format == "latent" and sd.image_size == 16 and sd.model_shape == (4, 8, 8)
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    latents = sd.images_to_model(images)
    assert latents.shape == (2, 4, 8, 8)
    latents.sum().backward()  # SDS through the VAE encoder needs this gradient
    assert images.grad is not None and images.grad.abs().sum() > 0
    decoded = sd.model_to_images(latents.detach())
    assert decoded.shape == (2, 3, 16, 16) and 0 <= decoded.min() and decoded.max() <= 1


@pytest.mark.parametrize("which", ["pixel", "sd"])
def test_sample_is_deterministic(which, request):
    teacher = request.getfixturevalue(which)
    a = teacher.sample(["a red chair"] * 2, steps=3, guidance_scale=2.0, seed=3)
    b = teacher.sample(["a red chair"] * 2, steps=3, guidance_scale=2.0, seed=3)
    assert a.shape == (2, 3, teacher.image_size, teacher.image_size)
    torch.testing.assert_close(a, b)


def test_save_and_reload_pixel_teacher(pixel, tmp_path):
    pixel.save_pretrained(tmp_path / "copy")
    again = Teacher.from_pretrained(tmp_path / "copy", device="cpu")
    x, t = torch.randn(1, 3, 16, 16), torch.tensor([300])
    text = pixel.encode_text(["a red chair"])
    torch.testing.assert_close(again.predict_eps(x, t, text), pixel.predict_eps(x, t, text))
    assert again.info.vocabulary == pixel.info.vocabulary


def test_vocabulary_warning(pixel):
    assert pixel.vocabulary_warning("a red chair, front view") is None
    warning = pixel.vocabulary_warning("a photo of a dog")
    assert "toy world" in warning and "chair" in warning and "red" in warning and "--teacher" in warning


def test_missing_teacher_is_one_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    with pytest.raises(DreamDistillError, match="not found.*hf download does/not-exist"):
        resolve_teacher_path("does/not-exist")
    (tmp_path / "not-a-teacher").mkdir()
    with pytest.raises(DreamDistillError, match="is not a teacher folder"):
        Teacher.from_pretrained(tmp_path / "not-a-teacher")


def test_cli_missing_teacher_prints_one_line_and_exits_non_zero(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "dreamdistill.cli", "sample", "a red chair", "--model", "does/not-exist",
         "--out", str(tmp_path / "grid.png")],
        capture_output=True, text=True, env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin",
                                              "HF_HUB_CACHE": str(tmp_path / "cache")},
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: teacher 'does/not-exist' not found")
    assert "Traceback" not in result.stderr


def test_cli_sample_writes_grid(tiny_pixel_teacher_dir, tmp_path):
    from dreamdistill.cli import main

    out = tmp_path / "grid.png"
    assert main(["sample", "a red chair, front view", "-n", "2", "--steps", "2", "--model",
                 str(tiny_pixel_teacher_dir), "--out", str(out), "--device", "cpu"]) == 0
    from PIL import Image

    assert Image.open(out).size[0] > 0
