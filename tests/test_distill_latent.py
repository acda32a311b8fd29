"""Distillation of a latent (Stable-Diffusion) teacher: every method on the tiny random SD teacher, saved as a
diffusers pipeline folder or a LoRA folder, sampled by plain diffusers and by our Teacher under the same seed.

These check wiring, saving and loading, not quality (a couple of optimiser steps on 8² latents); the per-step
wiring on the latent teacher is in test_wiring.py.
"""

import copy
import json

import pytest
import torch

from dreamdistill.config import load_config
from dreamdistill.diffusion.teacher import Teacher
from dreamdistill.distill import DistillConfig, distill
from dreamdistill.errors import DreamDistillError

PROMPTS = ["a red chair, front view", "a blue mug, side view"]
TINY = ["loop.steps=2", "loop.batch_size=2", "loop.device=cpu", "loop.warmup_steps=1", "loop.learning_rate=0.01",
        "data.size=4", "data.rollout_steps=2", "data.generate_batch=4", "cfg=3.0"]
METHOD_SETTINGS = {
    "kd": [],
    "pd": ["pd.teacher_steps=4", "pd.student_steps=2"],
    "guided": ["pd.teacher_steps=2", "pd.student_steps=1", "guided.embedding_dim=8", "guided.stage1_steps=2"],
    "dmd": ["dmd.fake_steps=1", "dmd.lora_rank=2"],
    "sid": ["sid.fake=lora", "sid.lora_rank=2"],
}
EXPECTED = {"kd": (1, 1.0, False), "pd": (2, 1.0, False), "guided": (1, 3.0, True), "dmd": (1, 1.0, False),
            "sid": (1, 1.0, False)}
"""(default_steps, default_cfg, guidance_embedding) of each saved student."""


@pytest.fixture(scope="module")
def teacher(tiny_sd_toy_teacher_dir):
    return Teacher.from_pretrained(tiny_sd_toy_teacher_dir, device="cpu", dtype=torch.float32)


def tiny_config(method, teacher_dir, out, *extra):
    return load_config(DistillConfig, None, [f"method={method}", f"teacher={teacher_dir}", f"out={out}", *TINY,
                                             *METHOD_SETTINGS[method], *extra])


def pipeline_images(pipe, steps, cfg, seed=3, prompts=PROMPTS):
    return pipe(list(prompts), num_inference_steps=steps, guidance_scale=cfg, generator=torch.Generator()
                .manual_seed(seed), output_type="pt").images.float()


def teacher_pipeline(teacher_dir, student_dir=None):
    """The teacher as plain diffusers loads it; with ``student_dir``, the student's scheduler swapped in."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(teacher_dir)
    pipe.set_progress_bar_config(disable=True)
    if student_dir is not None:
        pipe.scheduler = DDIMScheduler.from_pretrained(student_dir, subfolder="scheduler")
    return pipe


@pytest.mark.parametrize("method", ["kd", "pd", "guided", "dmd", "sid"])
def test_latent_student_is_a_pipeline_folder_that_plain_diffusers_samples_the_same(method, teacher,
                                                                                    tiny_sd_toy_teacher_dir,
                                                                                    tmp_path):
    """distill on the tiny SD teacher writes a diffusers pipeline folder (the teacher's VAE, text encoder and
    tokenizer, the student's fp32 UNet, a trailing DDIM scheduler whose set_timesteps(K) is the grid the student
    trained on, dreamdistill.json); StableDiffusionPipeline.from_pretrained(student) at num_inference_steps = K and
    the saved cfg gives Teacher.from_pretrained(student).sample's images under the same seed."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline
    from safetensors.torch import load_file

    from dreamdistill.distill.student import student_schedule

    out = distill(tiny_config(method, tiny_sd_toy_teacher_dir, tmp_path / method), teacher=teacher)
    steps, cfg, embedded = EXPECTED[method]
    assert {p.name for p in out.iterdir()} == {"model_index.json", "vae", "text_encoder", "tokenizer", "unet",
                                               "scheduler", "dreamdistill.json"}
    index = json.loads((out / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline" and index["safety_checker"] == [None, None]
    assert index["requires_safety_checker"] is False and index["unet"] == ["diffusers", "UNet2DConditionModel"]
    for part in ("vae", "text_encoder", "tokenizer"):  # copied from the teacher's folder
        for file in (tiny_sd_toy_teacher_dir / part).iterdir():
            assert (out / part / file.name).read_bytes() == file.read_bytes()
    weights = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(w.dtype == torch.float32 for w in weights.values())
    notes = json.loads((out / "dreamdistill.json").read_text())
    assert (notes["default_steps"], notes["default_cfg"], notes["method"]) == (steps, cfg, method)
    assert notes["recipe"]["method"] == method and sum(notes["steps_trained"].values()) > 0
    assert notes["vocabulary"] == teacher.info.vocabulary and notes["distilled_from"] == str(tiny_sd_toy_teacher_dir)
    assert bool(notes.get("guidance_embedding")) is embedded
    scheduler = DDIMScheduler.from_pretrained(out, subfolder="scheduler")
    scheduler.set_timesteps(steps)
    torch.testing.assert_close(scheduler.timesteps.long(), student_schedule(teacher).timesteps(steps))

    student = Teacher.from_pretrained(out, device="cpu", dtype=torch.float32)
    assert student.info.format == "latent" and student.info.guidance_embedding is embedded
    assert student.info.defaults == {"default_steps": steps, "default_cfg": cfg}
    ours = student.sample(PROMPTS, steps=steps, guidance_scale=cfg, seed=3)
    pipe = StableDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    batches = []
    pipe.unet.register_forward_hook(lambda module, args, kwargs, output: batches.append(
        (args[0].shape[0], kwargs.get("timestep_cond") is not None)), with_kwargs=True)
    theirs = pipeline_images(pipe, steps, cfg)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert batches == [(2, embedded)] * steps  # one call per step: no CFG doubling; w as timestep_cond if guided
    untrained = copy.deepcopy(student.unet)  # the student as initialised: the teacher's UNet (w-projection 0)
    untrained.load_state_dict(teacher.unet.state_dict(), strict=False)
    if embedded:
        torch.nn.init.zeros_(untrained.time_embedding.cond_proj.weight)
    before = student.sample(PROMPTS, steps=steps, guidance_scale=cfg, seed=3, unet=untrained)
    assert (ours - before).abs().max() > 1e-4, "the student did not train: the comparison would be vacuous"
    if embedded:  # w reaches the UNet: the student at w = 3 is not the student at w = 1, in both samplers
        assert (pipeline_images(pipe, steps, 1.0) - theirs).abs().max() > 1e-5
        torch.testing.assert_close(student.sample(PROMPTS, steps=steps, guidance_scale=1.0, seed=3),
                                   pipeline_images(pipe, steps, 1.0), atol=1e-5, rtol=0)


def test_cli_sample_of_a_latent_student_matches_plain_diffusers(teacher, tiny_sd_toy_teacher_dir, tmp_path):
    """`dreamdistill sample --model STUDENT` (its own steps and cfg) writes the pipeline's image, to 8-bit rounding.
    (This PD student trains on toy-world renders encoded by the teacher's VAE: data.source = toyworld.)"""
    import numpy as np
    from diffusers import StableDiffusionPipeline
    from PIL import Image

    from dreamdistill.cli import main

    out = distill(tiny_config("pd", tiny_sd_toy_teacher_dir, tmp_path / "pd", "data.source=toyworld"), teacher=teacher)
    cached = torch.load(tmp_path / "pd-work" / "toyworld-4-16px-seed7.pt")
    assert cached["images"].shape == (4, 3, 16, 16)  # encoded to 4×8² latents when loaded
    grid = tmp_path / "grid.png"
    assert main(["sample", PROMPTS[0], "-n", "1", "--model", str(out), "--out", str(grid), "--device", "cpu",
                 "--seed", "3"]) == 0
    pipe = StableDiffusionPipeline.from_pretrained(out)
    pipe.set_progress_bar_config(disable=True)
    theirs = pipeline_images(pipe, 2, 1.0, prompts=PROMPTS[:1])[0]
    written = np.asarray(Image.open(grid).convert("RGB"))[1:129:8, 1:129:8]  # one 16² image, upscaled 8× nearest
    expected = (theirs.permute(1, 2, 0) * 255).round().numpy()
    assert np.abs(written.astype(float) - expected).max() <= 1


@pytest.mark.parametrize("method", ["pd", "guided", "dmd"])
def test_lora_student_loads_with_load_lora_weights_and_samples_the_same(method, teacher, tiny_sd_toy_teacher_dir,
                                                                         tmp_path):
    """student.lora_rank > 0 saves pytorch_lora_weights.safetensors (diffusers' unet.* LoRA keys), the student's
    scheduler and notes naming the base teacher; the teacher pipeline in plain diffusers, after
    pipe.load_lora_weights(student), samples what Teacher.from_pretrained(student) samples. A guided student's
    w-projection sits beside the adapter and goes into a UNet rebuilt with time_cond_proj_dim first."""
    from diffusers import UNet2DConditionModel
    from safetensors.torch import load_file

    out = distill(tiny_config(method, tiny_sd_toy_teacher_dir, tmp_path / method, "student.lora_rank=2"),
                  teacher=teacher)
    steps, cfg, embedded = EXPECTED[method]
    expected_files = {"pytorch_lora_weights.safetensors", "scheduler", "dreamdistill.json"}
    assert {p.name for p in out.iterdir()} == expected_files | ({"guidance_projection.safetensors"} if embedded
                                                                else set())
    lora = load_file(out / "pytorch_lora_weights.safetensors")
    assert lora and all(k.startswith("unet.") and ".lora_" in k for k in lora)
    assert any(k.endswith("lora_B.weight") and v.abs().max() > 0 for k, v in lora.items())  # the adapter trained
    notes = json.loads((out / "dreamdistill.json").read_text())
    assert notes["base_model"] == str(tiny_sd_toy_teacher_dir) and notes["form"] == "lora"
    assert (notes["default_steps"], notes["default_cfg"], notes["method"]) == (steps, cfg, method)

    student = Teacher.from_pretrained(out, device="cpu", dtype=torch.float32)
    assert student.info.guidance_embedding is embedded and student.info.vocabulary == teacher.info.vocabulary
    ours = student.sample(PROMPTS, steps=steps, guidance_scale=cfg, seed=3)
    pipe = teacher_pipeline(tiny_sd_toy_teacher_dir, out)
    if embedded:
        projection = load_file(out / "guidance_projection.safetensors")
        unet = UNet2DConditionModel.from_config({**pipe.unet.config, "time_cond_proj_dim": notes["time_cond_proj_dim"]})
        unet.load_state_dict({**pipe.unet.state_dict(), **projection})
        pipe.unet = unet
    plain = pipeline_images(pipe, steps, cfg)
    pipe.load_lora_weights(out)
    theirs = pipeline_images(pipe, steps, cfg)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    assert (theirs - plain).abs().max() > 1e-4, "the adapter changes nothing: the comparison would be vacuous"
    if embedded:
        torch.testing.assert_close(student.sample(PROMPTS, steps=steps, guidance_scale=5.0, seed=3),
                                   pipeline_images(pipe, steps, 5.0), atol=1e-5, rtol=0)


def test_pixel_lora_student_is_saved_merged(tiny_pixel_teacher_dir, tmp_path):
    """A pixel teacher's LoRA student is saved as a plain pixel folder: the adapter merged into the UNet."""
    from dreamdistill.distill.student import StudentConfig, merged_copy, new_student

    pixel = Teacher.from_pretrained(tiny_pixel_teacher_dir, device="cpu", dtype=torch.float32)
    student = new_student(pixel.unet, StudentConfig(lora_rank=2))
    with torch.no_grad():
        for name, p in student.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05, generator=torch.Generator().manual_seed(len(name)))
    merged = merged_copy(student)
    assert not any("lora" in name for name, _ in merged.named_parameters())
    x, t = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(0)), torch.tensor([900, 300])
    text = pixel.encode_text(PROMPTS)
    with torch.no_grad():
        adapted, fused, plain = (pixel.model_output(x, t, text, unet) for unet in (student, merged, pixel.unet))
    torch.testing.assert_close(fused, adapted, atol=1e-5, rtol=1e-4)
    assert (adapted - plain).abs().max() > 1e-3
    out = distill(load_config(DistillConfig, None, ["method=pd", f"teacher={tiny_pixel_teacher_dir}",
                                                    f"out={tmp_path / 'pd'}", *TINY, "pd.teacher_steps=4",
                                                    "pd.student_steps=2", "student.lora_rank=2"]), teacher=pixel)
    assert (out / "dreamdistill_teacher.json").is_file() and not (out / "pytorch_lora_weights.safetensors").exists()
    assert Teacher.from_pretrained(out, device="cpu").sample(PROMPTS, steps=2, guidance_scale=1.0).shape == \
        (2, 3, 16, 16)


def test_rollouts_are_model_space_samples_never_decoded(teacher, tiny_pixel_teacher_dir, tmp_path):
    """KD's and DMD's targets: a latent teacher's cached rollouts are its DDIM samples in latent space (not decoded
    and re-encoded); a pixel teacher's are its samples as images (clamped), as before."""
    from types import SimpleNamespace

    from dreamdistill.distill.data import DataConfig, teacher_rollouts

    config = DataConfig(size=3, rollout_steps=2, seed=5, generate_batch=2)
    pixel = Teacher.from_pretrained(tiny_pixel_teacher_dir, device="cpu", dtype=torch.float32)
    for model, name in ((teacher, "latent"), (pixel, "pixel")):
        run = SimpleNamespace(work_dir=tmp_path / name, is_main=True, wait=lambda: None)
        pairs = teacher_rollouts(run, model, PROMPTS, 3.0, config)
        assert pairs.x0.shape == (3, *model.model_shape) and pairs.noise.shape == (3, *model.model_shape)
        expected = torch.cat([model.sample_x0(pairs.prompts[i:i + 2], steps=2, guidance_scale=3.0,
                                              noise=pairs.noise[i:i + 2]) for i in (0, 2)])
        if name == "pixel":
            expected = model.images_to_model(model.model_to_images(expected))
        torch.testing.assert_close(pairs.x0, expected, atol=0, rtol=0)


def test_w_embedding_of_a_latent_student_is_diffusers_own():
    """StableDiffusionPipeline feeds a time_cond_proj_dim UNet get_guidance_scale_embedding(guidance_scale − 1):
    diffusers_guidance_embedding(w) is exactly that, and differs from the pixel students' embedding."""
    from diffusers import StableDiffusionPipeline

    from dreamdistill.diffusion.teacher import diffusers_guidance_embedding, guidance_embedding

    w = torch.tensor([1.0, 3.0, 7.5])
    for dim in (8, 9, 256):
        theirs = StableDiffusionPipeline.get_guidance_scale_embedding(None, w - 1, embedding_dim=dim)
        torch.testing.assert_close(diffusers_guidance_embedding(w, dim), theirs, atol=0, rtol=0)
    assert not torch.allclose(diffusers_guidance_embedding(w, 8), guidance_embedding(w, 8))


def test_latent_step_counts_that_diffusers_walks_differently_are_refused(teacher, tiny_sd_toy_teacher_dir,
                                                                        tmp_path):
    """K must divide T: DDIMScheduler steps t → t − T//K, off the trailing grid for K = 3. Refused before training,
    with one line; K = 1, 2, 4, 5, 8 are walked exactly as Teacher.sample walks them."""
    from diffusers import DDIMScheduler

    from dreamdistill.distill.student import check_pipeline_steps, pipeline_scheduler, student_schedule

    config = tiny_config("pd", tiny_sd_toy_teacher_dir, tmp_path / "pd3", "pd.teacher_steps=6", "pd.student_steps=3")
    with pytest.raises(DreamDistillError, match="3-step student") as error:
        distill(config, teacher=teacher)
    assert "\n" not in str(error.value) and not (tmp_path / "pd3-work").exists()
    schedule = student_schedule(teacher)
    for steps in (1, 2, 4, 5, 8):
        check_pipeline_steps(teacher, steps)
        scheduler = DDIMScheduler.from_config(pipeline_scheduler(teacher).config)
        scheduler.set_timesteps(steps)
        grid = schedule.timesteps(steps)
        torch.testing.assert_close(scheduler.timesteps.long(), grid)
        walked = [int(t) - scheduler.config.num_train_timesteps // steps for t in grid]
        assert [max(t, -1) for t in walked] == grid[1:].tolist() + [-1]


@pytest.mark.parametrize("method", ["kd", "sid"])
def test_lora_students_of_other_methods_are_refused_before_loading(method, tmp_path):
    config = load_config(DistillConfig, None, [f"method={method}", f"out={tmp_path / 's'}", "student.lora_rank=4"])
    with pytest.raises(DreamDistillError, match="LoRA student is available for pd, guided, dmd") as error:
        distill(config)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("lora", [0, 2])
def test_shipped_latent_student_is_fp16_and_samples_as_before(lora, teacher, tiny_sd_toy_teacher_dir, tmp_path):
    """ship_student on a pipeline or LoRA folder: the student's weights in fp16, the teacher's parts untouched,
    trained_steps and training_minutes in dreamdistill.json; it loads and samples like the fp32 folder (to fp16)."""
    from safetensors.torch import load_file

    from dreamdistill.distill.student import TRAINING_LOG_NAME, ship_student

    out = distill(tiny_config("dmd", tiny_sd_toy_teacher_dir, tmp_path / "dmd", f"student.lora_rank={lora}"),
                  teacher=teacher)
    shipped = ship_student(out, tmp_path / "shipped")
    weights = shipped / ("pytorch_lora_weights.safetensors" if lora else "unet/diffusion_pytorch_model.safetensors")
    assert all(v.dtype == torch.float16 for v in load_file(weights).values())
    if not lora:
        assert (shipped / "vae" / "config.json").read_bytes() == (out / "vae" / "config.json").read_bytes()
    notes = json.loads((shipped / "dreamdistill.json").read_text())
    assert notes["trained_steps"] == 2 and "dmd" in notes["training_minutes"]
    assert (shipped / TRAINING_LOG_NAME).is_file()
    images = [Teacher.from_pretrained(folder, device="cpu", dtype=torch.float32).sample(PROMPTS, steps=1,
                                                                                      guidance_scale=1.0, seed=3)
              for folder in (out, shipped)]
    torch.testing.assert_close(images[1], images[0], atol=2e-3, rtol=0)
