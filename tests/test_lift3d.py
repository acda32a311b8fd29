"""The text-to-3D loop end to end on tiny random teachers: every preset, resume, bad input, helpers."""

import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from dreamdistill import cli
from dreamdistill.lift3d import (
    LiftConfig,
    RenderConfig,
    pick_shading,
    ramp_weight,
    resolution_at,
    slugify,
    sparsity_penalty,
    step_seed,
)

TINY = ["render.resolution=16", "render.batch_size=2", "render.occupancy_resolution=16", "render.step_divisions=48",
        "render.albedo_warmup=0.0", "scene.levels=4", "scene.log2_table_size=10", "scene.max_resolution=32",
        "scene.hidden_dim=16", "scene.hidden_layers=1", "export.resolution=24", "export.coarse_resolution=16",
        "view_resolution=16", "turntable_frames=2", "metric_views=4", "checkpoint_every=2", "validate_every=2",
        "render.occupancy_warmup=2", "render.occupancy_update_every=2"]
FILES = ("config.yaml", "checkpoint.pt", "turntable.gif", "mesh.glb", "mesh.obj", "mesh.mtl", "mesh.ply",
         "metrics.json")


def run(prompt, teacher, out, *extra, overrides=TINY):
    argv = [prompt, "--teacher", str(teacher), "--out", str(out), "--device", "cpu", *extra]
    for override in overrides:
        argv += ["--set", override]
    return cli.main(argv)


def only_run(out: Path) -> Path:
    (run_dir,) = list(Path(out).iterdir())
    return run_dir


@pytest.mark.parametrize("preset,teacher_fixture", [
    ("toy-sds", "tiny_pixel_teacher_dir"), ("toy-vsd", "tiny_pixel_teacher_dir"),
    ("sd-sds", "tiny_sd_teacher_dir"), ("sd-vsd", "tiny_sd_teacher_dir"),
])
def test_every_preset_runs_three_steps_end_to_end(preset, teacher_fixture, request, tmp_path, capsys):
    teacher = request.getfixturevalue(teacher_fixture)
    assert run("a red chair", teacher, tmp_path, "--config", f"configs/{preset}.yaml", "--steps", "3") == 0
    run_dir = only_run(tmp_path)
    assert run_dir.name.startswith("a-red-chair-")
    for name in FILES:
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "validation").glob("step-*.png"))
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 3 and metrics["seconds"] > 0 and metrics["mesh"]["vertices"] > 0
    assert {"r_precision", "view_consistency"} <= set(metrics)
    if preset.startswith("toy"):  # toy vocabulary: scored with the evaluator (a random teacher scores anything)
        assert 0.0 <= metrics["r_precision"] <= 1.0 and 0.0 <= metrics["view_consistency"] <= 1.0
    else:
        assert metrics["r_precision"] is None
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and out[0].startswith(f"done: {run_dir}") and "mesh.glb" in out[0]


@pytest.mark.parametrize("method", ["sds", "vsd"])
def test_resume_continues_exactly(tiny_pixel_teacher_dir, tmp_path, method):
    """A run killed after step 2 and resumed ends where an uninterrupted one does: field, VSD critic (its LoRA
    tensors trained, not left at zero) and metrics; the step log has each step once."""
    from dreamdistill.config import load_config, save_yaml
    from dreamdistill.fileio import read_jsonl
    from dreamdistill.lift3d import Lifter, create_run_dir, load_teacher, optimise

    settings = TINY + ["prompt=a blue mug", f"teacher={tiny_pixel_teacher_dir}", "device=cpu", "steps=4"]
    config = load_config(LiftConfig, f"configs/toy-{method}.yaml", settings)
    teacher = load_teacher(config)
    whole = create_run_dir(tmp_path / "whole", config.prompt)
    save_yaml(config, whole / "config.yaml")
    lifter = Lifter(config, teacher)
    optimise(lifter, whole, progress_bar=False)
    lifter.close()
    killed = create_run_dir(tmp_path / "killed", config.prompt)
    save_yaml(config, killed / "config.yaml")
    lifter = Lifter(config, teacher)
    assert optimise(lifter, killed, stop_after=2, progress_bar=False) is None
    lifter.close()
    (killed / "log.jsonl").open("a").write('{"step": 2, "loss": 1.0}\n{"step": 3, "lo')  # steps lost in the kill
    assert torch.load(killed / "checkpoint.pt", weights_only=False)["step"] == 2
    assert not (killed / "metrics.json").exists()
    assert cli.main(["--resume", str(killed)]) == 0
    a = torch.load(whole / "checkpoint.pt", weights_only=False)
    b = torch.load(killed / "checkpoint.pt", weights_only=False)
    assert a["step"] == b["step"] == 4
    for key, value in a["field"].items():
        torch.testing.assert_close(b["field"][key], value, atol=1e-5, rtol=1e-4)
    if method == "vsd":
        lora_b = [k for k in a["critic"]["lora"] if "lora_B" in k]
        assert lora_b and all(a["critic"]["lora"][k].abs().sum() > 0 for k in lora_b), "critic LoRA never trained"
        for key, value in a["critic"]["lora"].items():
            torch.testing.assert_close(b["critic"]["lora"][key], value, atol=1e-5, rtol=1e-4)
    assert [r["step"] for r in read_jsonl(killed / "log.jsonl")] == [0, 1, 2, 3]
    metrics_a, metrics_b = (json.loads((d / "metrics.json").read_text()) for d in (whole, killed))
    for key in ("r_precision", "view_consistency", "steps"):
        assert metrics_a[key] == metrics_b[key]


@pytest.mark.parametrize("extra,overrides,message", [
    ([], TINY + ["scene.levelz=3"], "unknown config key scene.'levelz'"),
    ([], TINY + ["render.resolution=4"], "render.resolution=4 is out of range"),
    ([], TINY + ["render.resolution=512"], "use a resolution between 8 and 64"),
    (["--config", "configs/nope.yaml"], TINY, "does not exist"),
])
def test_bad_input_gives_one_line_and_writes_nothing(extra, overrides, message, tiny_pixel_teacher_dir, tmp_path,
                                                     capsys):
    out = tmp_path / "runs"
    assert run("a red chair", tiny_pixel_teacher_dir, out, *extra, overrides=overrides) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not out.exists() or not any(out.iterdir())


def test_resume_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert cli.main(["--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a text-to-3D run" in err[0]
    assert not any(tmp_path.iterdir())


def test_out_of_vocabulary_prompt_warns(tiny_pixel_teacher_dir, tmp_path, capsys):
    assert run("a purple giraffe", tiny_pixel_teacher_dir, tmp_path, "--steps", "1",
               overrides=TINY + ["export.formats=[ply]", "checkpoint_every=1"]) == 0
    captured = capsys.readouterr()
    assert "knows only the toy world's vocabulary" in captured.err
    metrics = json.loads((only_run(tmp_path) / "metrics.json").read_text())
    assert metrics["r_precision"] is None and metrics["view_consistency"] is None


def test_pick_shading_draws_each_shading_with_its_chance():
    """diffuse 0.8 / textureless 0.2 (the toy presets) over 4,000 draws: each within 3 SE of its chance, no albedo;
    during the albedo warm-up every draw is albedo; a four-way split with geometry draws each share; from
    ``textureless_until`` on, textureless draws are diffuse."""
    config = RenderConfig(albedo_warmup=0.1, diffuse_probability=0.8, textureless_probability=0.2)
    generator = torch.Generator().manual_seed(0)
    draws = [pick_shading(config, 0.5, generator) for _ in range(4000)]
    assert abs(draws.count("textureless") / 4000 - 0.2) < 3 * (0.2 * 0.8 / 4000) ** 0.5
    assert draws.count("albedo") == 0
    assert {pick_shading(config, 0.05, generator) for _ in range(50)} == {"albedo"}
    split = RenderConfig(albedo_warmup=0.0, diffuse_probability=0.5, textureless_probability=0.2,
                         geometry_probability=0.2)
    draws = [pick_shading(split, 0.5, generator) for _ in range(4000)]
    for shading, chance in (("diffuse", 0.5), ("textureless", 0.2), ("geometry", 0.2), ("albedo", 0.1)):
        assert abs(draws.count(shading) / 4000 - chance) < 3 * (chance * (1 - chance) / 4000) ** 0.5, shading
    early = RenderConfig(albedo_warmup=0.0, diffuse_probability=0.8, textureless_probability=0.2,
                         textureless_until=0.4)
    assert "textureless" in {pick_shading(early, 0.39, generator) for _ in range(200)}
    assert {pick_shading(early, 0.4, generator) for _ in range(200)} == {"diffuse"}  # its chance goes to diffuse


def test_helpers():
    assert step_seed(0, 5) != step_seed(0, 6) and step_seed(1, 5) != step_seed(0, 5)
    config = RenderConfig(resolution=64, resolution_start=32, resolution_switch=0.5, albedo_warmup=0.2,
                          diffuse_probability=1.0)
    assert resolution_at(config, 0.1) == 32 and resolution_at(config, 0.6) == 64
    generator = torch.Generator().manual_seed(0)
    assert pick_shading(config, 0.1, generator) == "albedo" and pick_shading(config, 0.5, generator) == "diffuse"
    opacity = torch.tensor([0.5, 0.1]).reshape(2, 1, 1, 1).expand(2, 1, 2, 2)
    assert float(sparsity_penalty(opacity, 0.0)) == pytest.approx(2.4)
    assert float(sparsity_penalty(opacity, 0.3)) == pytest.approx(0.8)
    assert slugify("A red chair, front view!") == "a-red-chair-front-view" and slugify("???") == "run"


def test_regularisers_are_counted_per_model_element():
    """Per image, each regulariser is its per-pixel sum × (teacher model elements / render pixels): 3·32² for the
    toy teacher, 4·64² for SD, so a weight means the same against either surrogate loss (a sum over those)."""
    from dreamdistill.lift3d import RegularizerConfig, regularizer_losses
    from dreamdistill.render.volume import RenderOutput

    opacity = torch.full((2, 1, 16, 16), 0.5)
    orientation = torch.full((2, 1, 16, 16), 0.25)
    distortion = torch.full((2, 1, 16, 16), 0.125)
    eikonal = torch.full((2, 1, 16, 16), 0.0625)
    out = RenderOutput(torch.zeros(2, 3, 16, 16), opacity, opacity, None, 0, orientation, distortion, eikonal)
    config = RegularizerConfig(opacity_entropy=0.1, orientation=0.2, distortion=0.3, eikonal=0.4)
    entropy_per_pixel = 0.6931471805599453  # −½ log ½ · 2
    for elements in (3 * 32 * 32, 4 * 64 * 64):
        losses = regularizer_losses(config, out, 1.0, elements)
        per_image = elements / 256 / 2
        assert float(losses["opacity_entropy"]) == pytest.approx(0.1 * entropy_per_pixel * 512 * per_image, rel=1e-5)
        assert float(losses["orientation"]) == pytest.approx(0.2 * 0.25 * 512 * per_image, rel=1e-6)
        assert float(losses["distortion"]) == pytest.approx(0.3 * 0.125 * 512 * per_image, rel=1e-6)
        assert float(losses["eikonal"]) == pytest.approx(0.4 * 0.0625 * 512 * per_image, rel=1e-6)
    ramped = dataclasses.replace(config, distortion_from=0.5)
    assert "distortion" not in regularizer_losses(ramped, out, 0.5, 3072)
    late = regularizer_losses(ramped, out, 0.75, 3072)["distortion"]
    assert float(late) == pytest.approx(0.5 * float(regularizer_losses(config, out, 0.75, 3072)["distortion"]))


def test_normal_smoothness_golden_value_and_what_it_ignores():
    """Σ over right and lower neighbours of sg(|N_u||N_v|)|n̂_u − n̂_v|². Golden values by hand on two 2×2 maps
    (rows; |N| ≤ 1 as a render's are). Image 0: (0,0,1), (0,0,½) / (0.8,0,0), 0: across 0 + 0 (the empty pixel's
    weight is 0), down 2·0.8 + 0 = 1.6. Image 1: (0,0,½), (0,0,−1) / (0,0.6,0), (0,0.3,0): across 4·½ + 0, down
    2·0.3 + 2·0.3 = 3.2. Only directions count: the gradient is orthogonal to each N (the weight is detached), and
    a flat map costs nothing."""
    from dreamdistill.lift3d.regularizers import normal_smoothness_penalty

    pixels = [[(0, 0, 1), (0, 0, 0.5), (0.8, 0, 0), (0, 0, 0)], [(0, 0, 0.5), (0, 0, -1), (0, 0.6, 0), (0, 0.3, 0)]]
    normal = torch.tensor(pixels).view(2, 2, 2, 3).permute(0, 3, 1, 2).contiguous().requires_grad_(True)
    penalty = normal_smoothness_penalty(normal)
    assert float(penalty.detach()) == pytest.approx(1.6 + 3.2, rel=1e-6)
    assert float(normal_smoothness_penalty(normal.detach()[1:])) == pytest.approx(3.2, rel=1e-6)
    penalty.backward()
    assert normal.grad.abs().sum() > 0
    assert (normal.grad * normal.detach()).sum(1).abs().max() < 1e-6
    flat = torch.tensor([0.0, 0.6, 0.8]).view(1, 3, 1, 1).expand(1, 3, 4, 4)
    assert float(normal_smoothness_penalty(flat)) == 0


def test_normal_smoothness_is_weighted_per_model_element_and_ramped():
    """regularizers.normal_smoothness: weight × penalty × model elements / pixels / batch, ramped in linearly from
    normal_smoothness_from; absent without the render's normals."""
    from dreamdistill.lift3d import RegularizerConfig, regularizer_losses
    from dreamdistill.lift3d.regularizers import normal_smoothness_penalty
    from dreamdistill.render.volume import RenderOutput

    generator = torch.Generator().manual_seed(0)
    normal = torch.randn(2, 3, 8, 8, generator=generator)
    opacity = torch.rand(2, 1, 8, 8, generator=generator)
    out = RenderOutput(torch.zeros(2, 3, 8, 8), opacity, opacity, normal, 0, None, None, None)
    config = RegularizerConfig(normal_smoothness=0.3, normal_smoothness_from=0.5)
    penalty = float(normal_smoothness_penalty(normal))
    assert "normal_smoothness" not in regularizer_losses(config, out, 0.5, 1024)
    assert float(regularizer_losses(config, out, 0.75, 1024)["normal_smoothness"]) == pytest.approx(
        0.3 * 0.5 * penalty * 1024 / 64 / 2, rel=1e-6)
    assert float(regularizer_losses(config, out, 1.0, 1024)["normal_smoothness"]) == pytest.approx(
        0.3 * penalty * 1024 / 64 / 2, rel=1e-6)
    no_normals = RenderOutput(torch.zeros(2, 3, 8, 8), opacity, opacity, None, 0, None, None, None)
    assert "normal_smoothness" not in regularizer_losses(config, no_normals, 1.0, 1024)


def test_normalised_distortion_divides_by_opacity_squared_and_ignores_a_rays_scale():
    """regularizers.distortion_normalised: per pixel L_dist / (A² + 0.01), A the pixel's opacity. Golden values by
    hand on one two-sample ray (weights w, 0.1 apart, δ = 0.1): L = 2 w1 w2 · 0.1 + 0.1/3 (w1² + w2²). Halving
    both weights quarters the raw term, and leaves the normalised one within the ε floor's share."""
    from dreamdistill.lift3d import RegularizerConfig, regularizer_losses
    from dreamdistill.render.volume import RenderOutput, distortion_penalty

    def ray(w1: float, w2: float) -> tuple[float, float]:
        weights = torch.tensor([w1, w2])
        raw = distortion_penalty(weights, torch.tensor([0.0, 0.1]), torch.tensor([0, 0]), torch.tensor([0, 1]),
                                 1, 2, 0.1, 0)
        out = RenderOutput(torch.zeros(1, 3, 1, 1), torch.tensor(w1 + w2).view(1, 1, 1, 1), None, None, 0, None,
                           raw.view(1, 1, 1, 1), None)
        config = RegularizerConfig(distortion=1.0, distortion_normalised=True)
        return float(raw), float(regularizer_losses(config, out, 1.0, 1)["distortion"])

    raw, normalised = ray(0.4, 0.4)
    golden = 2 * 0.4 * 0.4 * 0.1 + 0.1 / 3 * (0.4**2 + 0.4**2)
    assert raw == pytest.approx(golden, rel=1e-5)
    assert normalised == pytest.approx(golden / (0.8**2 + 0.01), rel=1e-5)
    raw_half, normalised_half = ray(0.2, 0.2)
    assert raw_half == pytest.approx(raw / 4, rel=1e-5)
    assert normalised_half == pytest.approx(normalised * (0.8**2 + 0.01) / (0.8**2 + 0.04), rel=1e-5)
    assert normalised_half > 0.9 * normalised

    # the division carries gradient: scaling the ray's weights by s barely moves the normalised term,
    # d/ds [s² L / (s² A² + ε)] at s = 1 is 2 L ε / (A² + ε)², where a detached denominator would give 2 L / (A² + ε)
    scale = torch.tensor(1.0, requires_grad=True)
    weights = scale * torch.tensor([0.4, 0.4])
    raw_scaled = distortion_penalty(weights, torch.tensor([0.0, 0.1]), torch.tensor([0, 0]), torch.tensor([0, 1]),
                                    1, 2, 0.1, 0)
    out = RenderOutput(torch.zeros(1, 3, 1, 1), weights.sum().view(1, 1, 1, 1), None, None, 0, None,
                       raw_scaled.view(1, 1, 1, 1), None)
    config = RegularizerConfig(distortion=1.0, distortion_normalised=True)
    (gradient,) = torch.autograd.grad(regularizer_losses(config, out, 1.0, 1)["distortion"], scale)
    assert float(gradient) == pytest.approx(2 * golden * 0.01 / (0.8**2 + 0.01) ** 2, rel=1e-4)


def test_eval_rescores_a_run_like_its_own_metrics(tiny_pixel_teacher_dir, tmp_path, capsys):
    assert run("a red chair", tiny_pixel_teacher_dir, tmp_path, "--steps", "2",
               overrides=TINY + ["export.formats=[ply]"]) == 0
    run_dir = only_run(tmp_path)
    capsys.readouterr()
    assert cli.main(["eval", str(run_dir), "--views", "4", "--resolution", "16", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1
    printed = json.loads(out[0])
    assert printed == json.loads((run_dir / "eval.json").read_text())
    assert printed["views"] == 4 and printed["step"] == 2 and printed["prompt"] == "a red chair"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["r_precision"] is not None  # the toy vocabulary: scored, so the comparison means something
    assert printed["r_precision"] == metrics["r_precision"]
    assert printed["view_consistency"] == metrics["view_consistency"]
    # stronger than equal scores: the rebuilt scene renders the run's last validation strip pixel for pixel
    import numpy as np
    from PIL import Image

    from dreamdistill.lift3d import load_run, load_scene, render_orbit, to_uint8
    from dreamdistill.render.cameras import orbit_cameras

    _, config, checkpoint = load_run(run_dir)
    field_, background, occupancy = load_scene(config, checkpoint, torch.device("cpu"))
    images = render_orbit(field_, background, occupancy, config.render, orbit_cameras(4, elevation=15.0), 16)
    strip = np.asarray(Image.open(run_dir / "validation" / "step-000002.png").convert("RGB"))
    np.testing.assert_array_equal(np.concatenate(list(to_uint8(images)), axis=1), strip)


def write_run_folder(folder: Path, prompt: str, teacher: Path, checkpoint: bool = True) -> Path:
    """A run folder by hand: config.yaml and (optionally) a checkpoint of a fresh field, no teacher loaded."""
    from dreamdistill.config import load_config, save_yaml
    from dreamdistill.lift3d import build_field

    config = load_config(LiftConfig, "configs/toy-sds.yaml", TINY + [f"prompt={prompt}", f"teacher={teacher}"])
    save_yaml(config, folder / "config.yaml")
    if checkpoint:
        torch.save({"step": 0, "field": build_field(config.scene).state_dict()}, folder / "checkpoint.pt")
    return folder


@pytest.mark.parametrize("argv,checkpoint,message", [
    ([], False, "has no checkpoint.pt yet"),
    (["--views", "0"], True, "--views 0 is out of range"),
])
def test_eval_errors_are_one_line(argv, checkpoint, message, tiny_pixel_teacher_dir, tmp_path, capsys):
    write_run_folder(tmp_path, "a red chair", tiny_pixel_teacher_dir, checkpoint)
    assert cli.main(["eval", str(tmp_path), *argv]) == 2
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and message in err[0] and not captured.out
    assert not (tmp_path / "eval.json").exists()


def test_eval_of_a_folder_that_is_not_a_run(tmp_path, capsys):
    assert cli.main(["eval", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a text-to-3D run" in err[0]


def test_eval_out_of_vocabulary_prompt_gives_null_metrics(tiny_pixel_teacher_dir, tmp_path, capsys):
    write_run_folder(tmp_path, "a purple giraffe", tiny_pixel_teacher_dir)
    assert cli.main(["eval", str(tmp_path), "--views", "2", "--resolution", "8", "--device", "cpu"]) == 0
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert len(err) == 1 and "names no toy-world category" in err[0]
    result = json.loads(captured.out)
    assert result["r_precision"] is None and result["view_consistency"] is None and result["step"] == 0


def test_entropy_ramp():
    assert ramp_weight(0.5, 0.0, 0.1) == 0.5
    assert ramp_weight(0.5, 0.5, 0.25) == 0.0
    assert ramp_weight(0.5, 0.5, 0.75) == pytest.approx(0.25)
    assert ramp_weight(0.5, 0.5, 1.0) == pytest.approx(0.5)


def test_step_wires_the_render_options_and_the_distortion_term(tiny_pixel_teacher_dir, monkeypatch):
    """Lifter.step hands render.pixel_jitter / supersample and the distortion window (world units -> marching
    steps) to the renderer, and the distortion term enters the loss with its ramped weight: absent before
    ``distortion_from``, positive at the end of the run."""
    import dreamdistill.lift3d.lifter as lifter_module
    from dreamdistill.config import load_config
    from dreamdistill.lift3d import Lifter, load_teacher

    settings = TINY + ["prompt=a red chair", f"teacher={tiny_pixel_teacher_dir}", "device=cpu", "steps=10",
                       "render.pixel_jitter=true", "render.supersample=2", "regularizers.distortion=3.0",
                       "regularizers.distortion_from=0.5", "regularizers.distortion_window=0.2"]
    config = load_config(LiftConfig, "configs/toy-sds.yaml", settings)
    teacher = load_teacher(config)
    calls, real_render = [], lifter_module.render

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real_render(*args, **kwargs)

    monkeypatch.setattr(lifter_module, "render", spy)
    lifter = Lifter(config, teacher)
    early = lifter.step(0)
    assert calls[-1]["pixel_jitter"] is True and calls[-1]["supersample"] == 2
    assert calls[-1]["return_distortion"] is True
    assert calls[-1]["distortion_window"] == math.ceil(0.2 / lifter.step_size) >= 2
    assert "distortion" not in early
    late = lifter.step(9)
    assert late["distortion"] > 0


def test_step_anneals_beta_and_adds_the_eikonal_term(tiny_pixel_teacher_dir, monkeypatch, tmp_path):
    """With scene.geometry=sdf, Lifter.step sets the field's β from the schedule before rendering (sdf_beta at
    step 0, sdf_beta_end at the end), asks the renderer for the eikonal term and adds it with its weight; the
    checkpoint carries β, and the exported mesh is the level set d = 0 (threshold 1/(2β))."""
    import dreamdistill.lift3d.lifter as lifter_module
    from dreamdistill.config import load_config
    from dreamdistill.lift3d import Lifter, load_teacher
    from dreamdistill.lift3d.run import optimise
    from dreamdistill.lift3d.scene import load_scene

    settings = TINY + ["prompt=a red chair", f"teacher={tiny_pixel_teacher_dir}", "device=cpu", "steps=4",
                       "scene.geometry=sdf", "scene.sdf_beta=0.2", "scene.sdf_beta_end=0.05",
                       "regularizers.eikonal=0.5", "regularizers.distortion=0"]
    config = load_config(LiftConfig, "configs/toy-sds.yaml", settings)
    teacher = load_teacher(config)
    seen, real_render = [], lifter_module.render

    def spy(field, *args, **kwargs):
        seen.append((float(field.beta), kwargs["return_eikonal"]))
        return real_render(field, *args, **kwargs)

    monkeypatch.setattr(lifter_module, "render", spy)
    lifter = Lifter(config, teacher)
    first = lifter.step(0)
    assert seen[-1] == (pytest.approx(0.2), True)
    assert first["eikonal"] >= 0
    lifter.step(2)
    assert seen[-1][0] == pytest.approx(0.2 * (0.05 / 0.2) ** 0.5)
    with torch.no_grad():  # off the distance property (|∇d| ≠ 1), the term must be positive
        lifter.field.mlp[-1].weight[0].add_(0.5)
    stats = lifter.step(3)
    assert stats["eikonal"] > 0
    result = optimise(lifter, tmp_path, checkpoint={"step": 3, "seconds": 0.0, **lifter.state_dict()},
                      progress_bar=False)
    checkpoint = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    field_, _, _ = load_scene(config, checkpoint, torch.device("cpu"))
    assert float(field_.beta) == pytest.approx(0.2 * 0.25 ** 0.75)  # β of the last step (progress 3/4)
    assert result["metrics"]["mesh"]["threshold"] == pytest.approx(0.5 / float(field_.beta))


def test_init_seed_sets_the_initial_field_and_seed_the_draws(tiny_pixel_teacher_dir):
    """scene.init_seed seeds only the field's initial weights: the same init_seed under two run seeds gives the same
    initial field and different first steps; None falls back to the run's seed."""
    from dreamdistill.config import load_config
    from dreamdistill.lift3d import Lifter, load_teacher

    def lifter(*settings: str) -> Lifter:
        config = load_config(LiftConfig, "configs/toy-sds.yaml", TINY + [
            "prompt=a red chair", f"teacher={tiny_pixel_teacher_dir}", "device=cpu", *settings])
        return Lifter(config, load_teacher(config))

    def weights(lift: Lifter) -> torch.Tensor:
        return torch.cat([p.detach().flatten() for p in lift.field.parameters()])

    a, b = lifter("seed=1", "scene.init_seed=0"), lifter("seed=2", "scene.init_seed=0")
    plain0, plain1 = lifter("seed=0"), lifter("seed=1")
    assert torch.equal(weights(a), weights(b)) and torch.equal(weights(a), weights(plain0))
    assert not torch.equal(weights(plain0), weights(plain1))
    first_a, first_b = a.step(0), b.step(0)  # one initial field, two runs' draws: different first steps
    assert first_a["t"] != first_b["t"] or first_a["loss"] != first_b["loss"]


def test_run_folders_of_one_prompt_started_in_the_same_second_differ(tmp_path, monkeypatch):
    """Two runs of one prompt started in the same second (``--jobs 2`` benchmarks) each get their own folder,
    even when the other process creates the name between a check and the mkdir (simulated: exists() is False)."""
    import datetime
    from pathlib import Path

    from dreamdistill.lift3d import create_run_dir, run

    class Frozen(datetime.datetime):
        @classmethod
        def now(cls, tz=None):
            return cls(2026, 12, 2, 6, 0, 0)

    monkeypatch.setattr(run.datetime, "datetime", Frozen)
    first = create_run_dir(tmp_path, "a red chair")
    monkeypatch.setattr(Path, "exists", lambda self: False)
    folders = {first} | {create_run_dir(tmp_path, "a red chair") for _ in range(3)}
    assert len(folders) == 4 and all(f.is_dir() and f.parent == tmp_path for f in folders)
