"""The tiny encoder of a latent teacher: its training stage's wiring, its folder, and its place in latent SDS."""

from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from tiny_models import write_tiny_sd_teacher

from dreamdistill.diffusion.tiny_encoder import TinyEncoder
from dreamdistill.errors import DreamDistillError
from dreamdistill.toyworld import train_tiny_encoder as tiny
from dreamdistill.toyworld.train_sd_teacher import SDTeacherTrainConfig


def test_half_size_renders_map_onto_the_vae_latent_grid():
    """toy-sd's shape: 64-px renders (half of 128) -> 16² × 4 latents, as the VAE makes from 128 px."""
    encoder = TinyEncoder(input_size=64)
    assert encoder(torch.rand(2, 3, 64, 64)).shape == (2, 4, 16, 16) and encoder.latent_size == 16
    config = SDTeacherTrainConfig(resolution=128)
    assert tiny.build_tiny_encoder(config).config.input_size == 64


def test_stage_regresses_training_renders_onto_scaled_vae_latents(tmp_path, monkeypatch):
    """Each step's batch: training images only (never the held-out tail), the input the encoder sees is the
    [0, 1] render at input_size, and the target is the cached posterior mean × scaling_factor of the same image."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (20, 3, 64, 64), generator=generator, dtype=torch.uint8)
    unscaled = torch.randn(12, 4, 8, 8, generator=generator).half()  # latents of images[:12]
    latents = {"latents": unscaled, "scaling_factor": 0.5}
    config = SDTeacherTrainConfig(work_dir=str(tmp_path), resolution=64, held_out=8, tiny_encoder_steps=3,
                                  tiny_encoder_batch_size=4)
    monkeypatch.setattr(tiny, "held_out_targets", lambda config, held, scale: torch.zeros(len(held), 4, 8, 8))
    seen = []

    def recording_loss(encoder, batch, targets):
        seen.append((batch.clone(), targets.clone(), encoder.config.input_size))
        return F.mse_loss(encoder(tiny.tiny_inputs(batch, encoder.config.input_size)), targets)

    monkeypatch.setattr(tiny, "regression_loss", recording_loss)
    tiny.stage_tiny_encoder(config, images, latents)
    assert len(seen) == 3
    for batch, targets, input_size in seen:
        assert input_size == 32 and batch.shape == (4, 3, 64, 64)
        for image, target in zip(batch, targets):
            index = next(i for i in range(len(images)) if torch.equal(images[i], image))
            assert index < 12  # a training image with a cached latent, not one of the held-out 8
            torch.testing.assert_close(target, unscaled[index].float() * 0.5)
    assert torch.load(tmp_path / tiny.CHECKPOINT_NAME)["finished"]
    inputs = tiny.tiny_inputs(images[:2], 32)
    assert inputs.shape == (2, 3, 32, 32) and 0 <= float(inputs.min()) and float(inputs.max()) <= 1


def test_regression_loss_is_the_mse_to_its_targets():
    """Golden: an encoder whose latents are all zero scores the targets' mean square."""
    encoder = TinyEncoder(input_size=16, widths=(4, 4), blocks_per_level=(1, 1))
    for parameter in encoder.layers[-1].parameters():
        torch.nn.init.zeros_(parameter)
    targets = torch.arange(2 * 4 * 8 * 8, dtype=torch.float32).reshape(2, 4, 8, 8) / 100
    loss = tiny.regression_loss(encoder, torch.zeros(2, 3, 32, 32, dtype=torch.uint8), targets)
    assert float(loss.detach()) == pytest.approx(float((targets**2).mean()))


def _sd_teacher_with_tiny_encoder(tmp_path):
    from dreamdistill.diffusion.teacher import TINY_ENCODER_DIR, Teacher

    folder = write_tiny_sd_teacher(tmp_path / "sd")  # 16-px images, 8² latents
    torch.manual_seed(1)
    encoder = TinyEncoder(input_size=16, widths=(4, 8), blocks_per_level=(1, 1))  # 16 px -> 8²
    encoder.save_pretrained(folder / TINY_ENCODER_DIR)
    return Teacher.from_pretrained(folder, device="cpu", dtype=torch.float32), encoder


def test_teacher_encodes_with_the_tiny_encoder_when_asked(tmp_path, monkeypatch):
    teacher, encoder = _sd_teacher_with_tiny_encoder(tmp_path)
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    expected = encoder(F.interpolate(images.detach(), size=(16, 16), mode="bilinear", align_corners=False,
                                     antialias=True))
    monkeypatch.setattr(teacher.codec.vae, "encode", lambda *a, **k: pytest.fail("the VAE encoder was used"))
    latents = teacher.images_to_model(images, "tiny")
    torch.testing.assert_close(latents, expected)
    latents.square().sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    teacher.check_encoder("tiny")


def test_a_teacher_without_a_tiny_encoder_refuses_it_in_one_line(tmp_path):
    from dreamdistill.diffusion.teacher import Teacher

    teacher = Teacher.from_pretrained(write_tiny_sd_teacher(tmp_path / "sd"), device="cpu", dtype=torch.float32)
    teacher.check_encoder("vae")
    with pytest.raises(DreamDistillError, match="has no tiny_encoder/ folder; use guidance.encoder=vae"):
        teacher.check_encoder("tiny")


def test_sds_encodes_renders_with_the_configured_encoder(tmp_path):
    """guidance.encoder reaches the teacher: with ``tiny`` the gradient flows through the tiny encoder only."""
    from dreamdistill.guidance.sds import SDS, GuidanceConfig

    teacher, _ = _sd_teacher_with_tiny_encoder(tmp_path)
    calls = []
    for name, module in (("vae", teacher.codec.vae.encoder), ("tiny", teacher.codec.tiny_encoder)):
        module.register_forward_hook(lambda *args, name=name: calls.append(name))
    images = torch.rand(2, 3, 16, 16, requires_grad=True)
    for encoder in ("tiny", "vae"):
        calls.clear()
        sds = SDS(teacher, "a red chair", dataclasses.replace(GuidanceConfig(), encoder=encoder))
        sds(images, ["front", "side"], 0.5, torch.Generator().manual_seed(0))["loss"].backward()
        assert calls == [encoder]


def test_a_tiny_encoder_of_another_latent_size_is_refused(tmp_path):
    from dreamdistill.diffusion.teacher import TINY_ENCODER_DIR, Teacher

    folder = write_tiny_sd_teacher(tmp_path / "sd")  # 8² latents
    TinyEncoder(input_size=16, widths=(4, 4, 4), blocks_per_level=(1, 1, 1)).save_pretrained(folder / TINY_ENCODER_DIR)
    teacher = Teacher.from_pretrained(folder, device="cpu", dtype=torch.float32)
    with pytest.raises(DreamDistillError, match="makes 4 × 4² latents, the UNet takes 4 × 8²"):
        teacher.check_encoder("tiny")


def test_the_stage_adds_its_encoder_to_an_exported_folder(tmp_path):
    """add_to_folder: tiny_encoder/ in fp16 next to the untouched pipeline, and its steps and settings in the notes."""
    import json

    from dreamdistill.diffusion.teacher import TINY_ENCODER_DIR

    folder = write_tiny_sd_teacher(tmp_path / "sd")
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    work = tmp_path / "work"
    work.mkdir()
    config = SDTeacherTrainConfig(work_dir=str(work), resolution=64)
    encoder = tiny.build_tiny_encoder(config)
    assert not tiny.add_to_folder(config, folder)  # no finished stage yet
    torch.save({"encoder": encoder.state_dict(), "optimizer": {}, "step": 7, "finished": True},
               work / tiny.CHECKPOINT_NAME)
    (work / "config-tiny_encoder.json").write_text(json.dumps({"tiny_encoder_steps": 7}))
    assert tiny.add_to_folder(config, folder)
    from safetensors.torch import load_file

    saved = load_file(next((folder / TINY_ENCODER_DIR).glob("*.safetensors")))
    assert {value.dtype for value in saved.values()} == {torch.float16}
    loaded = TinyEncoder.from_pretrained(folder / TINY_ENCODER_DIR)
    for name, value in encoder.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name].float(), value.half().float(), msg=name)
    notes = json.loads((folder / "dreamdistill.json").read_text())
    assert notes["trained_steps"]["tiny_encoder"] == 7 and notes["recipe"]["tiny_encoder"] == {"tiny_encoder_steps": 7}
    assert all(path.read_bytes() == data for path, data in before.items() if path.name != "dreamdistill.json")
    assert not tiny.add_to_folder(config, tmp_path / "not-a-pipeline")
