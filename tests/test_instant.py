"""Instant text-to-3D (amortised SDS) on tiny random teachers: per-sample prompts in SDS, the held-out split,
the conditioning, FiLM folding, resume, and the ``--instant`` / ``--init instant`` / ``train-instant`` commands."""

import json

import pytest
import torch

from dreamdistill import cli
from dreamdistill.config import load_config
from dreamdistill.diffusion.teacher import Teacher
from dreamdistill.guidance.sds import SDS, GuidanceConfig, timestep_weight, view_prompt
from dreamdistill.instant import (
    HELD_OUT_PAIRS,
    InstantConfig,
    InstantField,
    all_prompts,
    fold_film,
    held_out_prompts,
    training_prompts,
)
from dreamdistill.instant.prompts import draw_prompts
from dreamdistill.instant.trainer import InstantTrainer
from dreamdistill.toyworld.world import CATEGORIES, COLOURS

TINY = ["render.resolution=16", "render.step_divisions=32", "scene.levels=4", "scene.log2_table_size=8",
        "scene.max_resolution=32", "scene.hidden_dim=8", "conditioning.code_dim=8", "prompts_per_step=2",
        "checkpoint_every=2", "validate_every=0", "steps=4", "device=cpu", "threads=0"]
LIFT_TINY = ["render.resolution=16", "render.batch_size=2", "render.occupancy_resolution=16",
             "render.step_divisions=32", "export.resolution=24", "export.coarse_resolution=16", "view_resolution=16",
             "turntable_frames=2", "turntable_resolution=16", "metric_views=4", "checkpoint_every=2",
             "validate_every=0", "render.occupancy_warmup=2", "render.occupancy_update_every=2"]


def tiny_config(teacher_dir, *extra) -> InstantConfig:
    return load_config(InstantConfig, "configs/instant-toy.yaml", TINY + [f"teacher={teacher_dir}", *extra])


@pytest.fixture()
def pixel(tiny_pixel_teacher_dir):
    return Teacher.from_pretrained(tiny_pixel_teacher_dir, device="cpu")


def test_the_split_holds_out_pairs_of_every_category_and_training_never_draws_them():
    held_out, training = set(held_out_prompts()), training_prompts()
    assert len(all_prompts()) == len(CATEGORIES) * len(COLOURS) == 72
    assert {category for _, category in HELD_OUT_PAIRS} == set(CATEGORIES)
    assert held_out.isdisjoint(training) and len(held_out) + len(training) == 72
    drawn = {p for seed in range(300) for p in draw_prompts(training, 4, torch.Generator().manual_seed(seed))}
    assert drawn == set(training)  # every training prompt is drawn, and nothing else


def test_each_sample_sds_uses_its_own_prompt(pixel):
    """SDS on a batch with one prompt per render equals, row by row, w(t)(ε̂(x_t; y_i) − ε) computed with that
    row's own prompt (the loss is ½ Σ ‖grad‖² / B); swapping the prompts changes it."""
    prompts, views = ["a red chair", "a blue mug"], ["front", "back"]
    sds = SDS(pixel, "", GuidanceConfig(guidance_scale=20.0, t_range=(0.5, 0.6), t_range_end=(0.5, 0.6)))
    images = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    loss = float(sds(images, views, 0.0, torch.Generator().manual_seed(5), prompts=prompts)["loss"])
    x, t, eps, x_t, alpha, sigma = sds.noised(images, 0.0, torch.Generator().manual_seed(5))
    weight = timestep_weight(alpha, sigma, "sigma_sq")
    expected = 0.0
    for i, (prompt, view) in enumerate(zip(prompts, views)):
        text = pixel.encode_text([view_prompt(prompt, view)])
        eps_teacher = pixel.predict_eps(x_t[i:i + 1], t[i:i + 1], text, 20.0)
        expected += 0.5 * float(((weight[i] * (eps_teacher - eps[i:i + 1])) ** 2).sum()) / 2
    assert loss == pytest.approx(expected, rel=1e-4)
    swapped = float(sds(images, views, 0.0, torch.Generator().manual_seed(5), prompts=prompts[::-1])["loss"])
    assert abs(swapped - expected) > 1e-3 * expected
    with pytest.raises(ValueError):
        sds(images, views, 0.0, None, prompts=prompts[:1])


def test_every_render_is_scored_with_the_prompt_of_the_field_that_rendered_it(pixel, tiny_pixel_teacher_dir,
                                                                              monkeypatch):
    """In a training step with 2 cameras per prompt, the guidance's prompt of each render is the prompt whose
    bound field drew it, and every drawn prompt is a training prompt."""
    trainer = InstantTrainer(tiny_config(tiny_pixel_teacher_dir, "cameras_per_prompt=2"), pixel)
    assert set(trainer.prompts) == set(training_prompts())  # the held-out pairs are not in the pool
    bound, scored = [], []
    original_bind, original_call = trainer.model.bind, trainer.guidance.__call__

    def bind(prompt, text):
        field_ = original_bind(prompt, text)
        torch.testing.assert_close(text, pixel.encode_text([prompt])[0])  # the field sees its own prompt's text
        bound.append(prompt)
        return field_

    def call(images, views, progress, generator, prompts=None, **kwargs):
        scored.append(list(prompts))
        return original_call(images, views, progress, generator, prompts=prompts, **kwargs)

    monkeypatch.setattr(trainer.model, "bind", bind)
    trainer.guidance = type("Recorder", (), {"__call__": staticmethod(call)})()
    for step in range(2):
        stats = trainer.step(step)
        assert stats["prompts"] == bound[-2:]
        assert scored[-1] == [bound[-2], bound[-2], bound[-1], bound[-1]]
        assert set(stats["prompts"]) <= set(training_prompts())


@pytest.mark.parametrize("modulate", ["all", "albedo"])
def test_the_prompt_reaches_the_field_and_folding_film_is_exact(pixel, tiny_pixel_teacher_dir, modulate):
    """Two colours of one category give different fields (FiLM; with ``modulate: albedo`` the same density and
    different albedo), two categories use different grids, and the plain Field of :meth:`to_field` computes what
    the differentiable :meth:`bind` computes."""
    config = tiny_config(tiny_pixel_teacher_dir, f"conditioning.modulate={modulate}", "scene.hidden_layers=2")
    model = InstantField(config.scene, config.conditioning, pixel.encode_text([""]).shape[-1])
    with torch.no_grad():  # a generator that has learnt something: non-zero FiLM and grids
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.1)
    x = torch.rand(64, 3, generator=torch.Generator().manual_seed(1)) * 1.6 - 0.8

    def values(prompt, folded):
        text = pixel.encode_text([prompt])[0]
        field_ = model.to_field(prompt, text) if folded else model.bind(prompt, text)
        density, albedo = field_(x)
        return torch.cat([density[:, None], albedo], dim=1).detach()

    red, blue, red_mug = values("a red chair", False), values("a blue chair", False), values("a red mug", False)
    assert (red - blue)[:, 1:].abs().max() > 1e-3 and (red - red_mug).abs().max() > 1e-3
    if modulate == "albedo":
        torch.testing.assert_close(red[:, 0], blue[:, 0])
    else:
        assert (red - blue)[:, 0].abs().max() > 1e-3
    assert model.grid_index("a red chair") != model.grid_index("a red mug")
    assert model.grid_index("a red chair") == model.grid_index("a blue chair")
    torch.testing.assert_close(values("a red chair", True), red, atol=1e-5, rtol=1e-4)
    weight, bias, gamma, beta = torch.randn(3, 2), torch.randn(3), torch.randn(3), torch.randn(3)
    h = torch.randn(5, 2)
    folded_weight, folded_bias = fold_film(weight, bias, gamma, beta)
    torch.testing.assert_close(h @ folded_weight.T + folded_bias, (h @ weight.T + bias) * (1 + gamma) + beta)


def test_a_fresh_generator_is_the_same_blob_for_every_prompt(pixel, tiny_pixel_teacher_dir):
    """At initialisation FiLM is the identity (zero last layer): prompts differ only by their category's grid."""
    config = tiny_config(tiny_pixel_teacher_dir, "conditioning.grid=shared")
    model = InstantField(config.scene, config.conditioning, pixel.encode_text([""]).shape[-1])
    x = torch.rand(16, 3) * 2 - 1
    a = model.bind("a red chair", pixel.encode_text(["a red chair"])[0])(x)
    b = model.bind("a blue mug", pixel.encode_text(["a blue mug"])[0])(x)
    torch.testing.assert_close(a, b)


def test_resume_reproduces_an_uninterrupted_run(tiny_pixel_teacher_dir, tmp_path):
    from dreamdistill.fileio import read_jsonl
    from dreamdistill.instant.run import load_generator, train

    config = tiny_config(tiny_pixel_teacher_dir)
    whole = train(config, tmp_path / "whole", progress_bar=False)
    train(config, tmp_path / "parts", stop_after=2, progress_bar=False)
    parts = train(config, tmp_path / "parts", progress_bar=False)
    for name, tensor in whole.model.state_dict().items():
        torch.testing.assert_close(parts.model.state_dict()[name], tensor, msg=name)
    assert [r["step"] for r in read_jsonl(tmp_path / "parts" / "log.jsonl")] == [0, 1, 2, 3]
    model, info = load_generator(tmp_path / "parts" / "generator")
    assert info["trained_steps"] == 4 and set(info["held_out"]) == set(held_out_prompts())
    for name, tensor in model.state_dict().items():  # fp16 weights
        torch.testing.assert_close(tensor, whole.model.state_dict()[name].half().float(), msg=name)
    with pytest.raises(Exception, match="other settings"):
        train(tiny_config(tiny_pixel_teacher_dir, "prompts_per_step=3"), tmp_path / "parts", progress_bar=False)


@pytest.fixture()
def generator_dir(tiny_pixel_teacher_dir, tmp_path):
    assert cli.main(["train-instant", "--out", str(tmp_path / "train"), "--teacher", str(tiny_pixel_teacher_dir),
                     *sum((["--set", s] for s in TINY + ["steps=2", "conditioning.modulate=albedo"]), [])]) == 0
    return tmp_path / "train" / "generator"


def test_instant_writes_the_run_folder(generator_dir, tiny_pixel_teacher_dir, tmp_path, capsys):
    argv = ["a red chair", "--instant", "--generator", str(generator_dir), "--teacher", str(tiny_pixel_teacher_dir),
            "--out", str(tmp_path / "runs"), "--device", "cpu", *sum((["--set", s] for s in LIFT_TINY), [])]
    assert cli.main(argv) == 0
    (run_dir,) = list((tmp_path / "runs").iterdir())
    for name in ("config.yaml", "checkpoint.pt", "turntable.gif", "mesh.glb", "mesh.ply", "metrics.json",
                 "report.html"):
        assert (run_dir / name).is_file(), name
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["method"] == "instant" and metrics["held_out"] is True and metrics["steps"] == 0
    assert 0 <= metrics["r_precision"] <= 1 and metrics["wall_seconds_after_loading"] > 0
    assert "shape" in metrics
    assert capsys.readouterr().out.startswith(f"done: {run_dir}")
    # the folder is a per-prompt run at step 0: --resume optimises it (here 2 steps)
    assert cli.main(["--resume", str(run_dir), "--steps", "2"]) == 0
    assert json.loads((run_dir / "metrics.json").read_text())["steps"] == 2


def test_init_instant_starts_the_per_prompt_run_from_the_generator(generator_dir, tiny_pixel_teacher_dir,
                                                                   tmp_path, monkeypatch):
    from dreamdistill.instant.run import load_generator
    from dreamdistill.lift3d import run as lift3d_run

    model, _ = load_generator(generator_dir)
    pixel = Teacher.from_pretrained(tiny_pixel_teacher_dir, device="cpu")
    expected = model.to_field("a blue mug", pixel.encode_text(["a blue mug"])[0]).state_dict()
    seen = {}
    original = lift3d_run.optimise

    def optimise(lifter, run_dir, checkpoint=None, **kwargs):
        seen.update({k: v.clone() for k, v in lifter.field.state_dict().items()})
        return original(lifter, run_dir, checkpoint, **kwargs)

    monkeypatch.setattr("dreamdistill.instant.infer.optimise", optimise)
    argv = ["a blue mug", "--init", "instant", "--generator", str(generator_dir), "--teacher",
            str(tiny_pixel_teacher_dir), "--out", str(tmp_path / "runs"), "--device", "cpu", "--steps", "2",
            *sum((["--set", s] for s in LIFT_TINY), [])]
    assert cli.main(argv) == 0
    for name, tensor in expected.items():
        torch.testing.assert_close(seen[name], tensor, msg=name)
    (run_dir,) = list((tmp_path / "runs").iterdir())
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 2 and metrics["method"] == "sds+instant-init"


def test_instant_refuses_prompts_outside_the_vocabulary_and_conflicting_flags(generator_dir, tmp_path, capsys):
    assert cli.main(["a teapot", "--instant", "--generator", str(generator_dir), "--out", str(tmp_path)]) == 2
    assert "names no toy-world category" in capsys.readouterr().err
    assert cli.main(["a red chair", "--instant", "--init", "instant", "--generator", str(generator_dir)]) == 2
    assert cli.main(["a red chair", "--instant", "--generator", str(tmp_path / "nothing")]) == 2
    assert "not an instant generator" in capsys.readouterr().err


def test_the_shipped_generator_is_lean_fp16_and_says_how_it_was_trained():
    from dreamdistill.instant.run import INFO_NAME, WEIGHTS_NAME
    from dreamdistill.paths import assets_dir

    folder = assets_dir() / "toy-instant"
    if not folder.is_dir():
        pytest.skip("no generator shipped in this checkout")
    weights = torch.load(folder / WEIGHTS_NAME, map_location="cpu", weights_only=True)
    assert all(t.dtype == torch.float16 for t in weights.values() if t.is_floating_point())
    assert sum(p.stat().st_size for p in folder.iterdir()) < 8 * 2**20
    info = json.loads((folder / INFO_NAME).read_text())
    assert info["trained_steps"] > 0 and info["minutes"] > 0 and info["recipe"]["steps"] >= info["trained_steps"]
    assert info["held_out"] == held_out_prompts() and not set(info["held_out"]) & set(info["training_prompts"])


def test_each_grid_has_its_own_occupancy_refreshed_from_its_own_field(pixel, tiny_pixel_teacher_dir, tmp_path):
    """modulate: albedo gives one occupancy grid per hash grid; a step refreshes only the drawn prompts' grids
    (from that grid's density), and resuming restores the grids and their clocks exactly."""
    from dreamdistill.instant.run import train

    occupancy = ["conditioning.modulate=albedo", "render.occupancy_resolution=8", "render.occupancy_warmup=1",
                 "render.occupancy_update_every=1"]
    assert InstantTrainer(tiny_config(tiny_pixel_teacher_dir), pixel).occupancy is None  # modulate: all
    trainer = InstantTrainer(tiny_config(tiny_pixel_teacher_dir, *occupancy), pixel)
    assert len(trainer.occupancy) == len(trainer.model.grids) == len(CATEGORIES)
    calls, x = [], torch.rand(32, 3) * 2 - 1
    for index, grid in enumerate(trainer.occupancy):
        grid.update = lambda density_fn, *a, index=index, **k: calls.append((index, density_fn(x)))
    trainer.prompts = ["a red chair", "a blue mug"]
    with torch.no_grad():  # the densities before the step's update, as the occupancy sees them
        before = {p: trainer.bound_field(p, 0.0).density(x) for p in trainer.prompts}
    trainer.step(0)
    chair, mug = trainer.model.grid_index("a red chair"), trainer.model.grid_index("a blue mug")
    assert sorted(index for index, _ in calls) == sorted([chair, mug])
    assert trainer.grid_updates[chair] == trainer.grid_updates[mug] == 1 and sum(trainer.grid_updates) == 2
    assert not torch.allclose(before["a red chair"], before["a blue mug"])
    for index, density in calls:  # each grid is refreshed from the density of the prompt it renders
        torch.testing.assert_close(density, before["a red chair" if index == chair else "a blue mug"])

    config = tiny_config(tiny_pixel_teacher_dir, *occupancy)
    whole = train(config, tmp_path / "whole", progress_bar=False)
    train(config, tmp_path / "parts", stop_after=2, progress_bar=False)
    parts = train(config, tmp_path / "parts", progress_bar=False)
    assert parts.grid_updates == whole.grid_updates and sum(whole.grid_updates) == 4 * 2
    for name, tensor in whole.occupancy.state_dict().items():
        torch.testing.assert_close(parts.occupancy.state_dict()[name], tensor, msg=name)
    for name, tensor in whole.model.state_dict().items():
        torch.testing.assert_close(parts.model.state_dict()[name], tensor, msg=name)


@pytest.mark.parametrize("orientation,smoothness", [(0.0, 0.0), (0.1, 0.0), (0.0, 0.1)])
def test_instant_renders_composite_normals_when_weighted(pixel, tiny_pixel_teacher_dir, orientation, smoothness):
    """The amortised trainer asks its renders for normals exactly when a normal term (orientation or normal
    smoothness) is weighted, as the per-prompt Lifter does, so the term also holds on albedo renders."""
    config = tiny_config(tiny_pixel_teacher_dir, f"regularizers.orientation={orientation}",
                         f"regularizers.normal_smoothness={smoothness}")
    settings = InstantTrainer(config, pixel).render_settings(torch.Generator())
    assert settings["return_normals"] is (orientation > 0 or smoothness > 0)
