"""Wiring of Lifter.step: what each schedule and each camera hands the occupancy grid, the renderer, the guidance
and the optimiser arrives as intended.

The renderer, the guidance, the occupancy update and the teacher's text encoder are wrapped by recorders that call
through to the real ones; expected values are worked out here from explicit numbers and the conventions of
DESIGN.md (view labels, camera frame, camera embedding), never by calling the schedule the step calls.
tests/wiring_mutations.py breaks each of these wires by hand and checks that a test here fails.
"""

import inspect
import math

import pytest
import torch
from test_lift3d import TINY

import dreamdistill.lift3d.lifter as lifter_module
from dreamdistill.config import load_config
from dreamdistill.diffusion.teacher import Teacher
from dreamdistill.lift3d import LiftConfig, Lifter

SETTINGS = TINY + ["prompt=a red chair", "device=cpu", "steps=4", "regularizers.distortion=0"]
"""A tiny toy-sds run of 4 steps (progress 0, ¼, ½, ¾), 16 px, 2 cameras, 4 grid levels, no distortion term."""


@pytest.fixture(scope="module")
def teacher(tiny_pixel_teacher_dir):
    return Teacher.from_pretrained(tiny_pixel_teacher_dir, device="cpu")


@pytest.fixture()
def make_lifter(teacher, tiny_pixel_teacher_dir):
    """Lifter(SETTINGS + overrides) on the shared tiny pixel teacher."""

    def make(*overrides: str) -> Lifter:
        config = load_config(LiftConfig, "configs/toy-sds.yaml",
                             SETTINGS + [f"teacher={tiny_pixel_teacher_dir}", *overrides])
        return Lifter(config, teacher)

    return make


class RecordingGuidance:
    """The lifter's guidance, keeping the named arguments of each call (``tamper`` may alter the images before and
    the result after the real call) and whether ``after_step`` ran."""

    def __init__(self, real, recorder: "StepRecorder", tamper=None):
        self.real, self.recorder, self.tamper = real, recorder, tamper
        self.signature = inspect.signature(type(real).__call__)

    def __call__(self, *args, **kwargs):
        call = self.signature.bind(self.real, *args, **kwargs)
        call.apply_defaults()
        seen = dict(call.arguments)
        self.recorder.guidance_calls.append(seen)
        self.recorder.events.append("guidance")
        if self.tamper is not None:
            self.tamper.before(seen["images"])
        result = self.real(*args, **kwargs)
        return result if self.tamper is None else self.tamper.after(result)

    def after_step(self, result, generator=None):
        self.recorder.events.append("after_step")
        return self.real.after_step(result, generator)

    def __getattr__(self, name):
        return getattr(self.real, name)


class StepRecorder:
    """Wraps the renderer, the guidance, the occupancy update and the teacher's text encoder of ``lifter``; each
    call goes through to the real one and is logged in ``events`` in order. A render call keeps its named
    arguments, the field's ``active_levels`` and ``beta`` at that moment, and its output."""

    def __init__(self, lifter: Lifter, monkeypatch, tamper=None):
        self.events: list = []
        self.renders: list[dict] = []
        self.guidance_calls: list[dict] = []
        self.occupancy_updates: list[dict] = []
        self.prompts: list[list[str]] = []
        real_render = lifter_module.render
        render_signature = inspect.signature(real_render)

        def recording_render(*args, **kwargs):
            call = render_signature.bind(*args, **kwargs)
            call.apply_defaults()
            seen = dict(call.arguments)
            field = seen["field"]
            seen["active_levels_then"] = field.active_levels
            seen["beta_then"] = float(field.beta) if field.geometry == "sdf" else None
            seen["out"] = real_render(*args, **kwargs)
            self.renders.append(seen)
            self.events.append("render")
            return seen["out"]

        monkeypatch.setattr(lifter_module, "render", recording_render)
        monkeypatch.setattr(lifter, "guidance", RecordingGuidance(lifter.guidance, self, tamper))
        if lifter.occupancy is not None:
            real_update = lifter.occupancy.update
            update_signature = inspect.signature(real_update)

            def recording_update(*args, **kwargs):
                call = update_signature.bind(*args, **kwargs)
                call.apply_defaults()
                self.occupancy_updates.append(dict(call.arguments))
                self.events.append(("occupancy", call.arguments["step"]))
                return real_update(*args, **kwargs)

            monkeypatch.setattr(lifter.occupancy, "update", recording_update)
        real_encode = lifter.teacher.encode_text

        def recording_encode(prompts):
            self.prompts.append(list(prompts))
            return real_encode(prompts)

        monkeypatch.setattr(lifter.teacher, "encode_text", recording_encode)


def label_by_hand(azimuth: float, elevation: float) -> str:
    """DESIGN.md's view words: overhead above 60° elevation, else front for |azimuth| < 45°, back above 135°, else
    side."""
    if elevation > 60:
        return "overhead"
    azimuth = abs((azimuth + 180.0) % 360.0 - 180.0)
    return "front" if azimuth < 45 else "back" if azimuth > 135 else "side"


def embedding_by_hand(cameras) -> torch.Tensor:
    """(sin az, cos az, sin el, cos el, distance − 3.3, (fov − 40)/10) per camera, float64."""
    rows = []
    for az, el, distance, fov in zip(cameras.azimuth.tolist(), cameras.elevation.tolist(),
                                     cameras.distance.tolist(), cameras.fov.tolist()):
        a, e = math.radians(az), math.radians(el)
        rows.append([math.sin(a), math.cos(a), math.sin(e), math.cos(e), distance - 3.3, (fov - 40.0) / 10.0])
    return torch.tensor(rows, dtype=torch.float64)


# ------------------------------------------------------------------------------------------ the guidance's inputs
def test_step_gives_each_camera_its_own_view_label_and_prompt(make_lifter, monkeypatch):
    """The views handed to the guidance are the rendered cameras' own labels, one per camera (not the first
    camera's for all), and each camera's text is "a red chair, LABEL view"."""
    lifter = make_lifter("render.batch_size=3")
    recorder = StepRecorder(lifter, monkeypatch)
    mixed = 0
    for step in range(2):
        lifter.step(step)
        cameras = recorder.renders[-1]["cameras"]
        expected = [label_by_hand(a, e) for a, e in zip(cameras.azimuth.tolist(), cameras.elevation.tolist())]
        assert len(expected) == 3
        assert list(recorder.guidance_calls[-1]["views"]) == expected
        assert [f"a red chair, {view} view" for view in expected] in recorder.prompts
        mixed += len(set(expected)) > 1
    assert mixed, "no step drew cameras of different views: the test would not see a copied label"


def test_guidance_gets_the_rendered_images_their_cameras_embedding_and_the_progress(make_lifter, monkeypatch):
    """The guidance is called once per step with the render's own image tensor (in the graph), the embedding of
    the very cameras that were rendered, and progress = step / steps."""
    lifter = make_lifter("render.batch_size=3")
    recorder = StepRecorder(lifter, monkeypatch)
    for step, progress in ((1, 0.25), (3, 0.75)):
        lifter.step(step)
        render_call, guidance_call = recorder.renders[-1], recorder.guidance_calls[-1]
        assert guidance_call["images"] is render_call["out"].image and guidance_call["images"].requires_grad
        assert guidance_call["progress"] == pytest.approx(progress, abs=1e-12)
        torch.testing.assert_close(guidance_call["camera"].double(), embedding_by_hand(render_call["cameras"]),
                                   atol=1e-5, rtol=1e-5)
    assert recorder.events.count("guidance") == 2


# ------------------------------------------------------------------------------------------ the renderer's inputs
def test_render_resolution_and_active_levels_follow_progress(make_lifter, monkeypatch):
    """resolution_start (8 px) before resolution_switch (½), resolution (16 px) from it on; the coarse-to-fine
    levels (2 of 4 at the start, all 4 at ½) are set on the field before it renders: 2, 3, 4, 4 over 4 steps."""
    lifter = make_lifter("render.resolution_start=8", "render.resolution_switch=0.5", "scene.levels_start=2",
                         "scene.levels_full_at=0.5")
    recorder = StepRecorder(lifter, monkeypatch)
    for step in range(4):
        lifter.step(step)
    assert [call["resolution"] for call in recorder.renders] == [8, 8, 16, 16]
    assert [tuple(call["images"].shape) for call in recorder.guidance_calls] == [
        (2, 3, 8, 8), (2, 3, 8, 8), (2, 3, 16, 16), (2, 3, 16, 16)]
    assert [call["active_levels_then"] for call in recorder.renders] == pytest.approx([2.0, 3.0, 4.0, 4.0])
    for call in recorder.renders:
        assert call["stratified"] is True and call["step_size"] == pytest.approx(2 * math.sqrt(3) / 48)


def test_shading_follows_the_warmup_and_the_light_sits_in_each_cameras_frame(make_lifter, monkeypatch):
    """albedo while progress < albedo_warmup (½), then the drawn shading (diffuse, its chance 1); the light is
    each camera's own: 50 units along light_direction in that camera's right / up / back frame, ambient as set."""
    lifter = make_lifter("render.albedo_warmup=0.5", "render.diffuse_probability=1.0",
                         "render.textureless_probability=0.0", "render.ambient=0.3",
                         "render.light_direction=[-0.45,0.6,0.66]")
    recorder = StepRecorder(lifter, monkeypatch)
    for step in range(4):
        lifter.step(step)
    assert [call["shading"] for call in recorder.renders] == ["albedo", "albedo", "diffuse", "diffuse"]
    norm = math.sqrt(0.45**2 + 0.6**2 + 0.66**2)
    dx, dy, dz = -0.45 / norm, 0.6 / norm, 0.66 / norm
    for call in recorder.renders:
        light, cameras = call["light"], call["cameras"]
        assert light is not None and light.position.shape == (2, 3)
        expected = []
        for az, el in zip(cameras.azimuth.tolist(), cameras.elevation.tolist()):
            a, e = math.radians(az), math.radians(el)
            right = (-math.sin(a), math.cos(a), 0.0)
            up = (-math.sin(e) * math.cos(a), -math.sin(e) * math.sin(a), math.cos(e))
            back = (math.cos(e) * math.cos(a), math.cos(e) * math.sin(a), math.sin(e))
            expected.append([50 * (dx * r + dy * u + dz * b) for r, u, b in zip(right, up, back)])
        torch.testing.assert_close(light.position.double(), torch.tensor(expected, dtype=torch.float64),
                                   atol=1e-3, rtol=1e-5)
        torch.testing.assert_close(light.ambient.double(), torch.full((2,), 0.3, dtype=torch.float64))


def test_occupancy_is_updated_and_sdf_beta_set_before_the_render(make_lifter, monkeypatch):
    """Each step updates the occupancy grid (with the field's density, the marching step and the step number)
    before it renders with that grid, and the sdf field's β is the step's scheduled value when it renders:
    0.2 · (0.05 / 0.2)^progress."""
    lifter = make_lifter("scene.geometry=sdf", "scene.sdf_beta=0.2", "scene.sdf_beta_end=0.05")
    recorder = StepRecorder(lifter, monkeypatch)
    for step in (1, 3):
        lifter.step(step)
    assert recorder.events == [("occupancy", 1), "render", "guidance", "after_step",
                               ("occupancy", 3), "render", "guidance", "after_step"]
    for update in recorder.occupancy_updates:
        assert update["density_fn"] == lifter.field.density
        assert update["step_size"] == pytest.approx(2 * math.sqrt(3) / 48)
    assert all(call["occupancy"] is lifter.occupancy for call in recorder.renders)
    assert [call["beta_then"] for call in recorder.renders] == pytest.approx([0.2 * 0.25**0.25, 0.2 * 0.25**0.75])


@pytest.mark.parametrize("orientation,smoothness,distortion,eikonal", [
    (0.0, 0.0, 0.0, 0.0), (0.1, 0.0, 0.0, 0.0), (0.0, 0.1, 0.0, 0.0), (0.0, 0.0, 0.1, 0.0), (0.0, 0.0, 0.0, 0.1),
])
def test_regulariser_outputs_are_asked_for_exactly_when_weighted(make_lifter, monkeypatch, orientation, smoothness,
                                                                  distortion, eikonal):
    """return_normals / return_distortion / return_eikonal are True exactly when the orientation or normal
    smoothness / distortion / eikonal weight is above 0, and a weighted term shows in the step's stats."""
    lifter = make_lifter(f"regularizers.orientation={orientation}", f"regularizers.distortion={distortion}",
                         "regularizers.distortion_from=0.0", f"regularizers.eikonal={eikonal}",
                         f"regularizers.normal_smoothness={smoothness}", "render.resolution=8")
    recorder = StepRecorder(lifter, monkeypatch)
    stats = lifter.step(1)
    (call,) = recorder.renders
    assert call["return_normals"] is (orientation > 0 or smoothness > 0)
    assert call["return_distortion"] is (distortion > 0)
    assert call["return_eikonal"] is (eikonal > 0)
    weighted = {name for name, weight in (("orientation", orientation), ("normal_smoothness", smoothness),
                                           ("distortion", distortion), ("eikonal", eikonal)) if weight > 0}
    assert weighted <= set(stats)


# ------------------------------------------------------------------------------------------ the optimiser
def test_each_group_steps_grid_mlp_and_background_at_its_scheduled_learning_rate(make_lifter):
    """Two groups: the hash grid at grid_learning_rate, the MLP and the learned background at mlp_learning_rate,
    each × final_factor^progress (0.25^½ = ½ at step 2 of 4). Every one of those tensors gets a gradient, and on
    Adam's first step an entry moves by exactly its group's rate where its gradient is non-zero, not at all where
    it is zero."""
    lifter = make_lifter("render.background=learned", "optim.grid_learning_rate=0.02",
                         "optim.mlp_learning_rate=0.004", "optim.final_learning_rate_factor=0.25")
    grid = list(lifter.field.grid.parameters())
    mlp_and_background = list(lifter.field.mlp.parameters()) + list(lifter.background.parameters())
    assert len(list(lifter.background.parameters())) > 0
    grid_group, mlp_group = lifter.optimizer.param_groups
    assert [id(p) for p in grid_group["params"]] == [id(p) for p in grid]
    assert [id(p) for p in mlp_group["params"]] == [id(p) for p in mlp_and_background]
    before = [p.detach().clone() for p in grid + mlp_and_background]
    stats = lifter.step(2)
    assert stats["nonfinite"] == 0
    assert grid_group["lr"] == pytest.approx(0.01, rel=1e-9)
    assert mlp_group["lr"] == pytest.approx(0.002, rel=1e-9)
    for rate, parameters, start in ((0.01, grid, before[:len(grid)]), (0.002, mlp_and_background,
                                                                       before[len(grid):])):
        for parameter, old in zip(parameters, start):
            assert parameter.grad is not None and (parameter.grad != 0).any()
            moved = (parameter.detach() - old).abs()
            clear = parameter.grad.abs() > 1e-10
            torch.testing.assert_close(moved[clear], torch.full_like(moved[clear], rate), atol=rate * 1e-3, rtol=0)
            assert (moved[parameter.grad == 0] == 0).all()
    lifter.step(3)
    assert grid_group["lr"] == pytest.approx(0.02 * 0.25**0.75, rel=1e-9)
    assert mlp_group["lr"] == pytest.approx(0.004 * 0.25**0.75, rel=1e-9)


class NonFinite:
    """Tampers with one guidance call: a NaN loss, an infinite gradient into the images, or finite numbers with the
    guidance's own non-finite flag raised."""

    def __init__(self, kind: str):
        self.kind = kind

    def before(self, images: torch.Tensor) -> None:
        if self.kind == "gradient":
            images.register_hook(lambda gradient: gradient * float("inf"))

    def after(self, result: dict) -> dict:
        if self.kind == "loss":
            return {**result, "loss": result["loss"] * float("nan")}
        if self.kind == "flag":
            return {**result, "nonfinite": torch.tensor(3)}
        return result


@pytest.mark.parametrize("kind", ["loss", "gradient", "flag"])
def test_a_nonfinite_step_changes_nothing(make_lifter, monkeypatch, kind):
    """A NaN loss, an infinite gradient, or the guidance's non-finite flag: no parameter of the field or the
    background moves, Adam keeps no state, the guidance's after_step is not run, and the step is counted."""
    lifter = make_lifter("render.background=learned", "render.resolution=8")
    recorder = StepRecorder(lifter, monkeypatch, tamper=NonFinite(kind))
    before = {**{f"field.{k}": v.clone() for k, v in lifter.field.state_dict().items()},
              **{f"background.{k}": v.clone() for k, v in lifter.background.state_dict().items()}}
    stats = lifter.step(1)
    after = {**{f"field.{k}": v for k, v in lifter.field.state_dict().items()},
             **{f"background.{k}": v for k, v in lifter.background.state_dict().items()}}
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert not lifter.optimizer.state
    assert "after_step" not in recorder.events and recorder.events.count("guidance") == 1
    assert stats["nonfinite"] == 1 and lifter.nonfinite_steps == 1
    assert not lifter.field_moved()
