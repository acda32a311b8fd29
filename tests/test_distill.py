"""Few-step smoke runs of every distillation method on the tiny random teacher; students reload and sample.

Shrunk to a couple of optimiser steps on 16×16 images: these check wiring, saving, loading, resuming and
errors, not quality (benchmarks/distill.py measures quality on the toy teacher).
"""

import json
import math

import pytest
import torch

from dreamdistill.config import load_config
from dreamdistill.diffusion.teacher import Teacher
from dreamdistill.distill import DistillConfig, distill
from dreamdistill.errors import DreamDistillError

TINY = ["loop.steps=1", "loop.batch_size=2", "loop.device=cpu", "loop.warmup_steps=1", "data.size=4",
        "data.rollout_steps=2", "data.generate_batch=4", "cfg=3.0"]
METHOD_SETTINGS = {
    "kd": [],
    "pd": ["pd.teacher_steps=4", "pd.student_steps=2", "data.source=toyworld", "pd.parameterisation=x"],
    "guided": ["pd.teacher_steps=2", "pd.student_steps=1", "guided.embedding_dim=8", "guided.stage1_steps=2"],
    "dmd": ["dmd.fake_steps=2", "dmd.fake=lora", "dmd.lora_rank=2"],
    "sid": ["sid.fake_steps=2", "sid.fake=lora", "sid.lora_rank=2"],
}
EXPECTED = {"kd": (1, 1.0, False), "pd": (2, 1.0, False), "guided": (1, 3.0, True), "dmd": (1, 1.0, False),
            "sid": (1, 1.0, False)}
"""(default_steps, default_cfg, guidance_embedding) of each saved student."""


@pytest.fixture(scope="module")
def teacher(tiny_pixel_teacher_dir):
    return Teacher.from_pretrained(tiny_pixel_teacher_dir, device="cpu", dtype=torch.float32)


def tiny_config(method, teacher_dir, out, *extra):
    return load_config(DistillConfig, None, [f"method={method}", f"teacher={teacher_dir}", f"out={out}", *TINY,
                                             *METHOD_SETTINGS[method], *extra])


@pytest.mark.parametrize("method", ["kd", "pd", "guided", "dmd", "sid"])
def test_method_smoke_run_saves_a_loadable_student(method, teacher, tiny_pixel_teacher_dir, tmp_path):
    out = distill(tiny_config(method, tiny_pixel_teacher_dir, tmp_path / method), teacher=teacher)
    student = Teacher.from_pretrained(out, device="cpu")
    steps, cfg, embedded = EXPECTED[method]
    assert student.info.defaults == {"default_steps": steps, "default_cfg": cfg}
    assert student.info.guidance_embedding is embedded and student.info.vocabulary == teacher.info.vocabulary
    saved = json.loads((out / "dreamdistill_teacher.json").read_text())
    assert saved["method"] == method and saved["distilled_from"] == str(tiny_pixel_teacher_dir)
    assert student.schedule.timestep_spacing == "trailing"
    images = student.sample(["a red chair, front view"] * 2, steps=steps, guidance_scale=cfg, seed=0)
    assert images.shape == (2, 3, 16, 16) and torch.isfinite(images).all()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())  # no temporary folders left
    if method == "guided":  # stage 1 is kept as a teacher folder too, sampled with one call per step
        stage1 = Teacher.from_pretrained(tmp_path / "guided-work" / "guided-stage1", device="cpu")
        assert stage1.info.guidance_embedding and stage1.info.defaults["default_steps"] == 2
        calls = []
        stage1.unet.register_forward_hook(lambda module, args, output: calls.append(args[0].shape[0]))
        stage1.sample(["a red chair, front view"] * 3, steps=2, guidance_scale=4.0)
        assert calls == [3, 3]  # one network call of batch 3 per step: no CFG doubling


def test_rerun_resumes_and_changed_settings_are_refused(teacher, tiny_pixel_teacher_dir, tmp_path):
    """Rerunning a finished run retrains nothing; a changed setting is refused with one line."""
    config = tiny_config("kd", tiny_pixel_teacher_dir, tmp_path / "kd")
    distill(config, teacher=teacher)
    first = (tmp_path / "kd" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes()
    checkpoint = (tmp_path / "kd-work" / "kd.pt").stat().st_mtime_ns
    distill(config, teacher=teacher)
    assert (tmp_path / "kd-work" / "kd.pt").stat().st_mtime_ns == checkpoint
    assert (tmp_path / "kd" / "unet" / "diffusion_pytorch_model.safetensors").read_bytes() == first
    changed = tiny_config("kd", tiny_pixel_teacher_dir, tmp_path / "kd", "loop.learning_rate=0.5")
    with pytest.raises(DreamDistillError, match="other settings .*learning_rate") as error:
        distill(changed, teacher=teacher)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("override,message", [
    ("pd.student_steps=3", "power of two"),
    ("loop.steps=0", "loop.steps=0 is out of range"),
    ("pd.teacher_steps=2", "larger than it"),
])
def test_bad_settings_fail_before_loading(override, message, tmp_path):
    config = load_config(DistillConfig, None, ["method=pd", f"out={tmp_path / 's'}", "pd.student_steps=4", override])
    with pytest.raises(DreamDistillError, match=message):
        distill(config)


def test_out_must_not_clobber_other_folders(teacher, tiny_pixel_teacher_dir, tmp_path):
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "notes.txt").write_text("keep me")
    with pytest.raises(DreamDistillError, match="not a student folder"):
        distill(tiny_config("kd", tiny_pixel_teacher_dir, tmp_path / "precious"), teacher=teacher)
    with pytest.raises(DreamDistillError, match="teacher's own folder"):
        distill(tiny_config("kd", tiny_pixel_teacher_dir, tiny_pixel_teacher_dir), teacher=teacher)


def test_cli_distill_then_sample(tiny_pixel_teacher_dir, tmp_path, capsys):
    from PIL import Image

    from dreamdistill.cli import main

    out = tmp_path / "student"
    args = ["distill", "kd", "--teacher", str(tiny_pixel_teacher_dir), "--out", str(out), "--steps", "1",
            "--batch-size", "2", "--device", "cpu", "--set", "data.size=2", "--set", "data.rollout_steps=1",
            "--set", "data.generate_batch=2"]
    assert main(args) == 0
    assert "student written to" in capsys.readouterr().out
    grid = tmp_path / "grid.png"
    assert main(["sample", "a red chair, front view", "-n", "2", "--steps", "1", "--model", str(out), "--out",
                 str(grid), "--device", "cpu"]) == 0
    assert Image.open(grid).size[0] > 0 and "1 steps, cfg 1.0" in capsys.readouterr().out
    assert main(args[:-2] + ["--set", "data.generate_batch=3"]) == 2  # changed settings: one line, exit 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: work folder") and "generate_batch" in error[0]


def test_cli_distill_bad_input_is_one_line(tmp_path, capsys):
    from dreamdistill.cli import main

    assert main(["distill", "pd", "--teacher", str(tmp_path / "missing"), "--out", str(tmp_path / "s")]) == 2
    assert main(["distill", "pd", "--out", str(tmp_path / "s"), "--set", "pd.studnet_steps=2"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2 and "not found" in lines[0] and "did you mean 'student_steps'" in lines[1]


def load_benchmark():
    """benchmarks/distill.py as a module."""
    import importlib.util
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "distill.py"
    spec = importlib.util.spec_from_file_location("bench_distill", script)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def copy_as_student(teacher_dir, folder):
    """The teacher's folder copied to ``folder`` as a student of itself (its JSON names it as distilled_from)."""
    import shutil

    shutil.copytree(teacher_dir, folder)
    notes = json.loads((folder / "dreamdistill_teacher.json").read_text())
    (folder / "dreamdistill_teacher.json").write_text(json.dumps({**notes, "distilled_from": str(teacher_dir)}))
    return folder


def test_benchmark_script_runs_on_tiny_models(tiny_pixel_teacher_dir, tmp_path):
    """benchmarks/distill.py end to end at toy size: a random evaluator, and the teacher (4 steps at cfg 3)
    copied in as a "pd" student (distill's folder name), "dmd" and "TAG-sid" (a shipped folder name, TAG the
    teacher's folder name); a second run takes the real features and teacher samples from the cache and re-times
    the teacher rows only."""
    from dreamdistill.toyworld.evaluator import Evaluator

    torch.manual_seed(0)
    Evaluator().save(tmp_path / "evaluator")
    tag = tiny_pixel_teacher_dir.name
    for name in ("pd", "dmd", f"{tag}-sid"):
        copy_as_student(tiny_pixel_teacher_dir, tmp_path / "students" / name)
    bench = load_benchmark()
    out = tmp_path / "results" / "distill.json"
    argv = ["--teacher", str(tiny_pixel_teacher_dir), "--students", str(tmp_path / "students"),
            "--evaluator", str(tmp_path / "evaluator"), "--num", "4", "--batch", "4", "--teacher-steps",
            "2,1", "--reference-steps", "2", "--device", "cpu", "--out", str(out), "--cache", str(tmp_path / "cache"),
            "--time-num", "2", "--floor-num", "8"]
    assert bench.main(argv) == 0
    result = json.loads(out.read_text())
    assert list(result["teachers"]) == [tag]
    section = result["teachers"][tag]
    rows = {row["name"]: row for row in section["rows"]}
    assert list(rows) == ["teacher-2", "teacher-1", "pd", "dmd", "sid"]
    assert rows["teacher-2"]["psnr_vs_teacher64"] == 100.0
    assert rows["pd"]["network_evals_per_image"] == 8 and rows["teacher-1"]["network_evals_per_image"] == 2
    assert {"fd", "kid", "kid_se", "prompt_fidelity", "seconds_per_image", "speedup_vs_teacher64"} <= set(rows["sid"])
    assert "pd_fd_ok" in section["checks"] and "sid_fd_ok" in section["checks"] and out.with_suffix(".png").is_file()
    same = section["comparisons"]["sid_vs_dmd"]  # the same weights: a zero paired difference, never "better"
    assert same["kid_difference"] == 0 and same["verdict"] == "within two standard errors"
    assert len(section["kid_floor"]) == 2 and "kid_floor_below_teacher64" in section["checks"]
    assert section["kid_floor_num"] == 8 and section["image_size"] == 16
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 4  # real features, floor features, teacher-2, teacher-1

    assert bench.main(argv) == 0
    again = {row["name"]: row for row in json.loads(out.read_text())["teachers"][tag]["rows"]}
    assert again["teacher-2"]["samples_cached"] and again["teacher-2"]["timed_on"] == 2
    assert "samples_cached" not in again["sid"]
    for name in rows:
        assert (again[name]["fd"], again[name]["kid"]) == (rows[name]["fd"], rows[name]["kid"])

def test_benchmark_measures_a_latent_teacher_beside_a_pixel_one(tiny_pixel_teacher_dir, tiny_sd_toy_teacher_dir,
                                                                tmp_path, monkeypatch, capsys):
    """benchmarks/distill.py --teacher PIXEL,LATENT: one JSON section per teacher. The latent teacher's rows are
    its own, a 2-step PD student (pipeline folder, distill's default name pd/) and a one-step LoRA DMD student
    (TAG-dmd/), both written by `dreamdistill distill`; the pixel teacher's student sid/ is skipped for it, and its
    pd/ for the pixel teacher. Real renders are drawn at the teachers' 16 px, not the evaluator's 32."""
    import dreamdistill.toyworld as toyworld
    from dreamdistill.cli import main
    from dreamdistill.toyworld.evaluator import Evaluator

    torch.manual_seed(0)
    Evaluator().save(tmp_path / "evaluator")
    students, latent_tag = tmp_path / "students", tiny_sd_toy_teacher_dir.name
    common = ["--teacher", str(tiny_sd_toy_teacher_dir), "--steps", "1", "--batch-size", "2", "--device", "cpu",
              "--set", "data.size=2", "--set", "data.generate_batch=2", "--set", "data.rollout_steps=2",
              "--set", "cfg=3.0"]
    assert main(["distill", "pd", "--out", str(students / "pd"), *common, "--set", "pd.teacher_steps=4",
                 "--set", "pd.student_steps=2"]) == 0
    assert main(["distill", "dmd", "--out", str(students / f"{latent_tag}-dmd"), *common, "--set", "dmd.fake_steps=1",
                 "--set", "dmd.lora_rank=2", "--set", "student.lora_rank=2"]) == 0
    copy_as_student(tiny_pixel_teacher_dir, students / "sid")
    rendered_at, render_dataset = [], toyworld.render_dataset

    def recording(count, seed, resolution=32, **kwargs):
        rendered_at.append(resolution)
        return render_dataset(count, seed, resolution, **kwargs)

    monkeypatch.setattr(toyworld, "render_dataset", recording)
    capsys.readouterr()

    out = tmp_path / "results" / "distill.json"
    argv = ["--teacher", f"{tiny_pixel_teacher_dir},{tiny_sd_toy_teacher_dir}", "--students", str(students),
            "--evaluator", str(tmp_path / "evaluator"), "--num", "8", "--floor-num", "8", "--batch", "8",
            "--teacher-steps", "2", "--reference-steps", "2", "--device", "cpu", "--out", str(out),
            "--cache", str(tmp_path / "cache"), "--time-num", "2"]
    assert load_benchmark().main(argv) == 0
    result = json.loads(out.read_text())
    pixel, latent = (result["teachers"][tag] for tag in (tiny_pixel_teacher_dir.name, latent_tag))
    assert list(result["teachers"]) == [tiny_pixel_teacher_dir.name, latent_tag]
    assert (pixel["format"], latent["format"]) == ("pixel", "latent") and latent["model_shape"] == [4, 8, 8]
    assert pixel["image_size"] == latent["image_size"] == 16
    assert rendered_at == [16] * 4  # the 4 real sets, at 16 px; the second teacher (16 px too) reads them cached
    assert [row["name"] for row in pixel["rows"]] == ["teacher-2", "sid"]
    rows = {row["name"]: row for row in latent["rows"]}
    assert list(rows) == ["teacher-2", "pd", "dmd"]
    assert [rows[name]["network_evals_per_image"] for name in rows] == [4, 2, 1]  # CFG doubles the teacher's calls
    assert rows["dmd"]["training"]["lora_rank"] == 2 and rows["pd"]["training"]["pd_rounds"] == "4 -> 2 steps"
    for row in rows.values():
        assert {"fd", "kid", "kid_se", "category_accuracy", "colour_accuracy", "speedup_vs_teacher64"} <= set(row)
        assert math.isfinite(row["kid"]) and row["speedup_vs_teacher64"] > 0
    assert list(latent["students_skipped"]) == [str(students / "sid")]
    assert list(pixel["students_skipped"]) == [str(students / "pd")]
    assert len(latent["kid_floor"]) == 2 and "dmd_fd_ok" in latent["checks"] and out.with_suffix(".png").is_file()
    printed = capsys.readouterr().out
    assert f"| {latent_tag} | pd | 2 | 2 |" in printed and f"| {latent_tag} | real vs real |" in printed
