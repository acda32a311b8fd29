"""The fast step (guidance.optimise, issue #16) against the eager step on the tiny SD teacher, on the CPU.

The fast path compiles the teacher's UNet and VAE encoder (here with the "aot_eager_decomp_partition" backend: the
graphs Dynamo and AOTAutograd capture for inductor, with inductor's decompositions and partitioner, run by eager
kernels, without inductor's minutes of C++ compiling on one core; plain "aot_eager" fails on torch 2.13 for a
batch-1 VAE encoder: "Expected X.is_contiguous(memory_format)"), uses fused Adam / AdamW with the skip decided on
the device, and returns device-tensor stats. On the CPU it draws the same random numbers as the eager path, so both
must give the same gradients and the same updated scene.

Tolerance: gradients agree to rtol 1e-4 with atol 1e-4 of each tensor's largest magnitude (compiled graphs
reorder float32 sums; the CPU UNet's channels_last convolutions reorder them further); parameters after each
optimiser step to 5e-5 absolute, 5 % of the smallest learning rate (steps are 1e-3 to 1e-2): Adam's first step is
lr · g / (|g| + eps), so for an element whose gradient is within the gradients' absolute tolerance of zero (the
critic's AdamW has eps 1e-8) a reordered sum moves the step by a visible fraction of lr (seen: 1.03e-5 on one
LoRA element of 4096 on one machine, the same before and after unrelated changes).
"""

from __future__ import annotations

import copy

import pytest
import torch

from dreamdistill.config import load_config
from dreamdistill.diffusion.teacher import Teacher
from dreamdistill.lift3d import LiftConfig, Lifter
from dreamdistill.lift3d import fast_path as fast_path_module

TINY = ["render.resolution=16", "render.batch_size=2", "render.occupancy_resolution=16", "render.step_divisions=48",
        "render.albedo_warmup=0.0", "scene.levels=4", "scene.log2_table_size=10", "scene.max_resolution=32",
        "scene.hidden_dim=16", "scene.hidden_layers=1", "render.occupancy_warmup=2", "render.occupancy_update_every=2"]
RTOL, ATOL_FRACTION, PARAMETER_ATOL = 1e-4, 1e-4, 5e-5


def close(actual: torch.Tensor, expected: torch.Tensor, name: str) -> None:
    """Gradients (names ending in .grad) and parameters, each to its tolerance (see the module's docstring)."""
    if name.endswith(".grad"):
        rtol, atol = RTOL, ATOL_FRACTION * max(expected.abs().max().item(), 1e-12)
    else:
        rtol, atol = 0.0, PARAMETER_ATOL
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol, msg=lambda m: f"{name}: {m}")


@pytest.fixture(scope="module", autouse=True)
def fast_compile():
    """aot_eager_decomp_partition for the module's compiles; one Dynamo cache for the module (teachers are shared)."""
    backend = fast_path_module.COMPILE_BACKEND
    fast_path_module.COMPILE_BACKEND = "aot_eager_decomp_partition"
    torch._dynamo.reset()
    yield
    fast_path_module.COMPILE_BACKEND = backend
    torch._dynamo.reset()


@pytest.fixture(scope="module")
def teachers(tiny_sd_teacher_dir) -> dict[str, Teacher]:
    """One eager and one (to be) compiled tiny SD teacher; a Lifter's close() leaves each as it was."""
    return {mode: Teacher.from_pretrained(tiny_sd_teacher_dir, device="cpu") for mode in ("off", "on")}


@pytest.fixture()
def make_lifter(teachers):
    """make_lifter(method, optimise) on the shared teachers; every Lifter is closed (its critic removed) at the end,
    so a failing test leaves the teachers clean."""
    made = []

    def make(method: str, optimise: str) -> Lifter:
        teacher = teachers[optimise]
        settings = TINY + ["prompt=a red chair", f"teacher={teacher.info.path}", "device=cpu", "steps=10",
                           f"guidance.optimise={optimise}"]
        made.append(Lifter(load_config(LiftConfig, f"configs/sd-{method}.yaml", settings), teacher))
        return made[-1]

    yield make
    for lifter in made:
        lifter.close()


def trained(lifter: Lifter) -> dict[str, torch.Tensor]:
    """Scene (and critic) tensors and their gradients."""
    named = {f"field.{n}": p for n, p in lifter.field.named_parameters()}
    named |= {f"background.{n}": p for n, p in lifter.background.named_parameters()}
    if hasattr(lifter.guidance, "critic"):
        named |= {f"critic.{i}": p for i, p in enumerate(lifter.guidance.critic.trainable_parameters())}
    out = {name: p.detach().clone() for name, p in named.items()}
    out |= {f"{name}.grad": p.grad.clone() for name, p in named.items() if p.grad is not None}
    return out


def test_auto_is_off_on_the_cpu_and_for_pixel_teachers(teachers, tiny_pixel_teacher_dir):
    sd = teachers["off"]
    assert not fast_path_module.fast_path_enabled("auto", sd) and fast_path_module.fast_path_enabled(True, sd)

    class OnCuda:
        device, info = torch.device("cuda"), sd.info

    assert fast_path_module.fast_path_enabled("auto", OnCuda())
    OnCuda.info = Teacher.from_pretrained(tiny_pixel_teacher_dir, device="cpu").info
    assert not fast_path_module.fast_path_enabled("auto", OnCuda())
    config = load_config(LiftConfig, "configs/sd-sds.yaml", TINY + [f"teacher={sd.info.path}", "device=cpu"])
    assert config.guidance.optimise == "auto" and not Lifter(config, sd).fast_path


@pytest.mark.parametrize("method", ["sds", "vsd"])
def test_fast_step_gives_the_eager_gradients(make_lifter, method):
    """From the same state (the eager Lifter's, loaded into the fast one before each step), a fast step gives the
    eager step's gradients (scene, and critic for VSD), updated tensors and stats; the fast path really compiled
    the UNet and the VAE encoder and used fused optimisers."""
    eager = make_lifter(method, "off")
    fast = make_lifter(method, "on")
    assert not eager.fast_path and fast.fast_path and fast.teacher.compiled
    assert fast.optimizer.param_groups[0]["fused"] and not eager.optimizer.param_groups[0]["fused"]
    if method == "vsd":
        assert fast.guidance.critic_optimizer.param_groups[0]["fused"] and fast.guidance.one_call_applies(None)
    for step in (0, 3):
        fast.load_state_dict(copy.deepcopy(eager.state_dict()))  # a copy, as from a checkpoint: not shared
        stats_eager, stats_fast = eager.step(step), fast.step(step)
        assert all(isinstance(v, float) for v in stats_eager.values())
        assert all(torch.is_tensor(v) and v.dim() == 0 for v in stats_fast.values())
        assert stats_fast.keys() == stats_eager.keys()
        for key, value in stats_eager.items():
            assert float(stats_fast[key]) == pytest.approx(value, rel=RTOL, abs=1e-6), key
        a, b = trained(eager), trained(fast)
        assert a.keys() == b.keys() and any(k.endswith(".grad") for k in a)
        if method == "vsd":
            assert any(k.startswith("critic.") and k.endswith(".grad") for k in a)
        for name in a:
            close(b[name], a[name], f"step {step} {name}")
    assert fast.nonfinite_steps == 0
    compiled = fast.teacher.unet._compiled_call_impl, fast.teacher.codec.vae.encoder._compiled_call_impl
    assert all(c is not None for c in compiled)


def test_fast_nonfinite_step_changes_nothing_and_is_counted(make_lifter, monkeypatch):
    """A NaN in the UNet's output is skipped on the device by the fused optimisers: scene, critic and their Adam
    moments and step counts stay bit for bit, and the step is counted."""
    lifter = make_lifter("vsd", "on")
    lifter.step(0)

    def state() -> dict[str, torch.Tensor]:
        out = trained(lifter)
        for prefix, optimizer in (("adam", lifter.optimizer), ("critic_adam", lifter.guidance.critic_optimizer)):
            for i, per_param in enumerate(optimizer.state.values()):
                out |= {f"{prefix}.{i}.{k}": torch.as_tensor(v).clone() for k, v in per_param.items()}
        return {k: v for k, v in out.items() if not k.endswith(".grad")}

    before = state()
    model_output = lifter.teacher.model_output  # the UNet call of the teacher's, the critic's and the mixed passes
    monkeypatch.setattr(lifter.teacher, "model_output", lambda *a, **k: model_output(*a, **k) * float("nan"))
    stats = lifter.step(1)
    assert float(stats["nonfinite"]) == 1.0 and lifter.nonfinite_steps == 1
    after = state()
    assert after.keys() == before.keys() and any(k.startswith("critic_adam") for k in after)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert lifter.state_dict()["nonfinite_steps"] == 1
    lifter.close()


def test_fast_path_resumes_exactly(make_lifter):
    """Steps 0-2 in one go equal steps 0-1, a checkpoint's state into a new Lifter, then step 2 (to the tolerance
    of the eager resume test, test_lift3d.py::test_resume_continues_exactly)."""
    whole = make_lifter("vsd", "on")
    for step in range(3):
        whole.step(step)
    expected = trained(whole)
    whole.close()
    first = make_lifter("vsd", "on")
    for step in range(2):
        first.step(step)
    state = first.state_dict()
    first.close()
    resumed = make_lifter("vsd", "on")
    resumed.load_state_dict(state)
    resumed.step(2)
    got = trained(resumed)
    for name in expected:
        torch.testing.assert_close(got[name], expected[name], atol=1e-5, rtol=1e-4, msg=name)
    resumed.close()


def test_a_fast_run_logs_every_step_and_finishes(tiny_sd_teacher_dir, tmp_path, monkeypatch):
    """`dreamdistill ... --set guidance.optimise=true`: the loop keeps the stats on the device between log writes
    (every LOG_EVERY steps, and at checkpoints) and still logs each step once, in order, as numbers."""
    from dreamdistill import cli
    from dreamdistill.fileio import read_jsonl
    from dreamdistill.lift3d import run as run_module

    monkeypatch.setattr(run_module, "LOG_EVERY", 2)
    argv = ["a red chair", "--teacher", str(tiny_sd_teacher_dir), "--out", str(tmp_path), "--device", "cpu",
            "--steps", "5", "--set", "guidance.optimise=true", "--set", "checkpoint_every=4", "--set",
            "validate_every=0", "--set", "export.resolution=24", "--set", "export.coarse_resolution=16",
            "--set", "view_resolution=16", "--set", "turntable_frames=2", "--set", "metric_views=4"]
    for override in TINY:
        argv += ["--set", override]
    assert cli.main(argv) == 0
    (run_dir,) = list(tmp_path.iterdir())
    records = read_jsonl(run_dir / "log.jsonl")
    assert [r["step"] for r in records] == [0, 1, 2, 3, 4]
    assert all(isinstance(r["loss"], float) and r["nonfinite"] == 0.0 for r in records)
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == 5
