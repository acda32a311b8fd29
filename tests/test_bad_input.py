"""Bad input, faults and divergence (issue 14): one `error:` line, exit 2, no traceback, nothing written.

The table runs every case in-process through ``cli.main`` against one tiny finished run (and copies of it with a
damaged checkpoint or an edited config), with the whole folder snapshotted before and after; a few cases also run
as real subprocesses. Then: the NaN step (scene and Adam state untouched, counted), divergence and a field that
never moves (exit 2, nothing exported), Ctrl-C (checkpoint, resume command, exit 130, then resume), a write
failure mid-run, and the argparse / typo / device helpers.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_lift3d import TINY

from dreamdistill import cli
from dreamdistill.config import Range, check_field, validate
from dreamdistill.errors import DreamDistillError

PROMPT = "a red chair"
SMALL = TINY + ["export.formats=[ply]", "turntable_frames=1", "turntable_resolution=16", "metric_views=2"]


def lift_argv(teacher, out, *extra, overrides=SMALL):
    argv = [PROMPT, "--teacher", str(teacher), "--out", str(out), "--device", "cpu", *extra]
    for override in overrides:
        argv += ["--set", override]
    return argv


def snapshot(root: Path) -> dict:
    """Every file and folder under ``root`` with its size and modification time."""
    return {str(p.relative_to(root)): (p.is_dir(), p.stat().st_size if p.is_file() else 0, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*"))}


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_pixel_teacher_dir):
    """A folder holding one tiny finished run, copies of it with broken checkpoints or an edited config, teacher
    folders with a broken description, and a plain file (an --out that is not a folder)."""
    root = tmp_path_factory.mktemp("bad-input")
    assert cli.main(lift_argv(tiny_pixel_teacher_dir, root / "runs", "--steps", "2")) == 0
    (run,) = (root / "runs").iterdir()
    paths = {"run": run, "teacher": tiny_pixel_teacher_dir, "file": root / "notes.txt", "root": root}
    paths["file"].write_text("not a folder")
    paths["png_folder"] = root / "grid.png"
    paths["png_folder"].mkdir()
    checkpoint = (run / "checkpoint.pt").read_bytes()
    for name, content in (("truncated", checkpoint[: len(checkpoint) // 2]), ("empty", b""),
                          ("random", os.urandom(4096))):
        copy = shutil.copytree(run, root / "broken" / name)
        (copy / "checkpoint.pt").write_bytes(content)
        paths[name] = copy
    paths["mismatch"] = shutil.copytree(run, root / "broken" / "mismatch")
    config = (paths["mismatch"] / "config.yaml").read_text()
    assert "  levels: 4\n" in config
    (paths["mismatch"] / "config.yaml").write_text(config.replace("  levels: 4\n", "  levels: 3\n"))
    for name, text in (("empty_json", ""), ("invalid_json", "{not json")):
        teacher = shutil.copytree(tiny_pixel_teacher_dir, root / "teachers" / name)
        (teacher / "dreamdistill_teacher.json").write_text(text)
        paths[name] = teacher
    return paths


NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")

# (argv with {placeholders} from the `world` fixture, text the error line must contain)
CASES = [
    # text-to-3D: typos of subcommands, argparse, devices, seeds, paths
    (["smaple", "a chair"], "did you mean `sample`?"),
    (["train_teacher"], "did you mean `train-teacher`?"),
    (["exprot", "{run}"], "did you mean `export`?"),
    (["--steps", "x", PROMPT], "argument --steps: invalid int value: 'x'"),
    ([PROMPT, "--bogus"], "unrecognized arguments: --bogus"),
    ([PROMPT, "--guidance", "xyz"], "argument --guidance: invalid choice: 'xyz'"),
    ("LIFT", ["--device", "tpu"], "unknown device"),
    ("LIFT", ["--device", "cuda:7"], "cuda:7"),
    pytest.param(("LIFT", ["--device", "cuda"], "no CUDA GPU"), marks=NO_CUDA),
    ("LIFT", ["--seed", str(2**63)], "seed=9223372036854775808 is out of range: must be in [0, 9223372036854775807]"),
    ("LIFT", ["--seed", "-1"], "seed=-1 is out of range"),
    ("LIFT", ["--steps", "0"], "steps=0 is out of range"),
    ([PROMPT, "--teacher", "{teacher}", "--out", "{file}"], "that is a file, not a folder"),
    ([PROMPT, "--teacher", "{empty_json}", "--out", "{root}/runs2"], "dreamdistill_teacher.json cannot be read as a "
                                                                      "teacher description (it is empty)"),
    ([PROMPT, "--teacher", "{invalid_json}", "--out", "{root}/runs2"], "dreamdistill_teacher.json cannot be read"),
    # text-to-3D: --set values, each refused up front
    ("SET", "steps=[1,2", "is not valid YAML"),
    ("SET", "turntable_frames=0", "turntable_frames=0 is out of range: must be in [1, 1000]"),
    ("SET", "scene.levels=0", "scene.levels=0 is out of range"),
    ("SET", "scene.log2_table_size=40", "scene.log2_table_size=40 is out of range: must be in [4, 24]"),
    ("SET", "render.step_divisions=0", "render.step_divisions=0 is out of range"),
    ("SET", "optim.final_learning_rate_factor=-1", "optim.final_learning_rate_factor=-1.0 is out of range"),
    ("SET", "guidance.guidance_scale=.nan", "guidance.guidance_scale=nan is out of range: must be in [0, 1000]"),
    ("SET", "guidance.guidance_scale=1e30", "guidance.guidance_scale=1e+30 is out of range"),
    ("SET", "optim.grid_learning_rate=1e6", "optim.grid_learning_rate=1000000.0 is out of range: must be in (0, 1]"),
    ("SET", "optim.mlp_learning_rate=-0.001", "optim.mlp_learning_rate=-0.001 is out of range"),
    ("SET", "guidance.t_range=[0.9,0.1]", "guidance.t_range=[0.9, 0.1] is reversed"),
    ("SET", "guidance.t_range_end=[0.5,1.5]", "each value must be in [0, 1]"),
    ("SET", "cameras.distance=[-1,-1]", "cameras.distance=[-1.0, -1.0] is out of range"),
    ("SET", "validate_every=-1", "validate_every=-1 is out of range"),
    ("SET", "regularizers.opacity_entropy_from=1", "must be in [0, 1)"),
    ("SET", "export.formats=[stl]", "must be one of 'glb', 'obj', 'ply'"),
    # both chances set here, so the case does not depend on the preset's diffuse share
    ("LIFT", ["--set", "render.diffuse_probability=0.7", "--set", "render.textureless_probability=0.5"],
     "render.diffuse_probability + render.textureless_probability = 1.2 is over 1"),
    ("LIFT", ["--set", "render.diffuse_probability=0.8", "--set", "render.textureless_probability=0.2",
              "--set", "render.geometry_probability=0.1"],
     "render.diffuse_probability + render.textureless_probability + render.geometry_probability = 1.1 is over 1"),
    # --resume: conflicting arguments, damaged or mismatched checkpoints
    (["--resume", "{run}", "a blue mug"], "a prompt would be ignored"),
    (["--resume", "{run}", "--guidance", "vsd"], "--guidance would be ignored"),
    (["--resume", "{run}", "--seed", "0"], "--seed would be ignored"),
    (["--resume", "{run}", "--teacher", "{teacher}"], "--teacher would be ignored"),
    (["--resume", "{run}", "--steps", "1"], "--steps 1 is below the step of"),
    (["--resume", "{truncated}"], "cannot be read as a checkpoint"),
    (["--resume", "{empty}"], "cannot be read as a checkpoint (the file is empty)"),
    (["--resume", "{random}"], "cannot be read as a checkpoint"),
    (["--resume", "{mismatch}", "--device", "cpu"], "checkpoint.pt does not match"),
    # sample
    (["sample"], "the following arguments are required: prompt"),
    (["sample", PROMPT, "--steps", "0"], "--steps 0 is out of range: must be in [1, 1000]"),
    (["sample", PROMPT, "--steps", "-3"], "--steps -3 is out of range"),
    (["sample", PROMPT, "--steps", "5000"], "--steps 5000 is out of range"),
    (["sample", PROMPT, "--cfg", "nan"], "--cfg nan is out of range"),
    (["sample", PROMPT, "--seed", "-1"], "--seed -1 is out of range"),
    (["sample", PROMPT, "--device", "tpu"], "unknown device"),
    (["sample", PROMPT, "--out", "{png_folder}"], "that is a folder"),
    (["sample", PROMPT, "--model", "{empty_json}", "--device", "cpu"], "dreamdistill_teacher.json cannot be read"),
    # export
    (["export", "{run}", "--resolution", "0"], "--resolution 0 is out of range: must be in [8, 512]"),
    (["export", "{run}", "--resolution", "100000"], "--resolution 100000 is out of range"),
    (["export", "{run}", "--threshold=-1e9"], "--threshold -1000000000.0 is out of range: must be > 0"),
    (["export", "{run}", "--threshold", "nan"], "--threshold nan is out of range"),
    (["export", "{run}", "--format", "stl"], "--format 'stl'"),
    (["export", "{run}", "--device", "tpu"], "unknown device"),
    (["export", "{truncated}"], "cannot be read as a checkpoint"),
    (["export", "{empty}"], "cannot be read as a checkpoint"),
    (["export", "{random}"], "cannot be read as a checkpoint"),
    (["export", "{mismatch}", "--device", "cpu"], "checkpoint.pt does not match"),
    # eval
    (["eval", "{run}", "--resolution", "100000"], "--resolution 100000 is out of range: must be in [8, 1024]"),
    (["eval", "{run}", "--views", "0"], "--views 0 is out of range"),
    (["eval", "{run}", "--device", "cuda:7"], "cuda:7"),
    (["eval", "{truncated}"], "cannot be read as a checkpoint"),
    (["eval", "{random}"], "cannot be read as a checkpoint"),
    (["eval", "{mismatch}", "--device", "cpu"], "checkpoint.pt does not match"),
    # train-teacher
    (["train-teacher", "--width", "0"], "--width 0 is out of range"),
    (["train-teacher", "--dataset-size", "0"], "--dataset-size 0 is out of range"),
    (["train-teacher", "--threads", "-1"], "--threads -1 is out of range"),
    (["train-teacher", "--steps", "0"], "--steps 0 is out of range"),
    (["train-teacher", "--out", "{file}"], "that is a file, not a folder"),
    (["train-teacher", "--device", "tpu"], "unknown device"),
    # distill
    (["distill", "kdd"], "argument method: invalid choice: 'kdd'"),
    (["distill", "kd", "--steps", "0"], "loop.steps=0 is out of range"),
    (["distill", "kd", "--set", "cfg=.nan"], "cfg=nan is out of range"),
    (["distill", "guided", "--set", "guided.w_range=[5,1]"], "guided.w_range=[5.0, 1.0] is reversed"),
    (["distill", "kd", "--out", "{file}"], "that is a file, not a folder"),
    (["distill", "sid", "--set", "sid.t_range=[0.5,0.5]"], "sid.t_range=[0.5, 0.5] is empty"),
    (["distill", "dmd", "--set", "dmd.fake_steps=0"], "dmd.fake_steps=0 is out of range"),
    (["distill", "kd", "--set", "prompts={root}/nope.txt"], "no such readable file"),
    (["distill", "kd", "--teacher", "{empty_json}", "--out", "{root}/students/kd", "--device", "cpu"],
     "dreamdistill_teacher.json cannot be read"),
]


def expand(case, world) -> tuple[list[str], str]:
    # two steps, so that a broken check fails the test quickly (by running) instead of training for minutes
    teacher, out = world["teacher"], world["root"] / "runs2"
    if case[0] == "LIFT":
        return lift_argv(teacher, out, "--steps", "2", *case[1]), case[2]
    if case[0] == "SET":
        return lift_argv(teacher, out, "--steps", "2", overrides=SMALL + [case[1]]), case[2]
    argv, message = case
    return [arg.format(**world) for arg in argv], message


def case_id(case) -> str:
    words = case[1] if case[0] == "LIFT" else [case[1]] if case[0] == "SET" else case[0]
    return " ".join(str(w) for w in words)[:60]


def assert_one_error_line(code: int, err: str, message: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    assert message in lines[0], lines[0]


@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_bad_input_is_one_line_and_writes_nothing(case, world, capsys, monkeypatch):
    argv, message = expand(case, world)
    monkeypatch.chdir(world["root"])  # relative defaults (runs/, samples.png, students/) land in the snapshot
    before = snapshot(world["root"])
    code = cli.main(argv)
    captured = capsys.readouterr()
    assert_one_error_line(code, captured.err, message)
    assert not captured.out
    assert snapshot(world["root"]) == before


@pytest.mark.parametrize("argv,message", [
    (["smaple"], "did you mean `sample`?"),
    (["export", "{truncated}"], "cannot be read as a checkpoint"),
])
def test_bad_input_in_a_real_process(argv, message, world):
    before = snapshot(world["root"])
    result = subprocess.run([sys.executable, "-m", "dreamdistill", *[a.format(**world) for a in argv]],
                            capture_output=True, text=True, cwd=world["root"],
                            env={**os.environ, "PYTHONPATH": str(Path(cli.__file__).parents[1])})
    assert_one_error_line(result.returncode, result.stderr, message)
    assert snapshot(world["root"]) == before


def test_a_one_word_prompt_after_double_dash_is_not_a_typo():
    assert cli._typo_of_subcommand("smaple") == "sample" and cli._typo_of_subcommand("chair") is None
    assert cli._typo_of_subcommand("a red chair") is None and cli._typo_of_subcommand("--") is None
    args = cli.main_parser().parse_args(["--", "smaple"])
    assert args.prompt == "smaple"


def test_the_finished_run_records_its_nonfinite_steps(world):
    metrics = json.loads((world["run"] / "metrics.json").read_text())
    assert metrics["nonfinite_steps"] == 0 and metrics["steps"] == 2


# ---- the declared rules themselves ---------------------------------------------------------------------------


def test_every_config_default_and_preset_passes_its_own_rules():
    from dreamdistill.config import load_config
    from dreamdistill.distill import DistillConfig, preset_path
    from dreamdistill.lift3d import LiftConfig
    from dreamdistill.toyworld.train_teacher import TeacherTrainConfig

    for config in (LiftConfig(), DistillConfig(), TeacherTrainConfig(device="cpu")):
        validate(config)
    for method in ("kd", "pd", "guided", "dmd", "sid"):
        validate(load_config(DistillConfig, preset_path(method)))
    for preset in ("toy-sds", "toy-vsd", "sd-sds", "sd-vsd"):
        validate(load_config(LiftConfig, f"configs/{preset}.yaml"))


def test_range_rules():
    assert Range(0, 1).contains(0.5) and not Range(0, 1).contains(float("nan"))
    assert not Range(0, 1, open_low=True).contains(0.0) and Range(0, 1, open_low=True).contains(1.0)
    assert not Range(16, 64, multiple_of=16).contains(24) and Range(16, 64, multiple_of=16).contains(32)
    assert not Range(None, None).contains(float("inf")) and not Range(0, 1).contains(True)
    with pytest.raises(DreamDistillError, match=r"x=\[0.5, 0.2\] is reversed"):
        Range(0, 1, ordered=True).check((0.5, 0.2), "x")
    from dreamdistill.export import ExportConfig

    with pytest.raises(DreamDistillError, match=r"^--resolution 4 is out of range: must be in \[8, 512\]$"):
        check_field(ExportConfig, "resolution", 4, "--resolution")
    check_field(ExportConfig, "resolution", None, "--resolution")  # None: the run's own value


# ---- divergence: never silent --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def teacher_and_config(tiny_pixel_teacher_dir):
    from dreamdistill.config import load_config
    from dreamdistill.lift3d import LiftConfig, load_teacher

    config = load_config(LiftConfig, "configs/toy-sds.yaml",
                         TINY + [f"prompt={PROMPT}", f"teacher={tiny_pixel_teacher_dir}", "device=cpu", "steps=4"])
    return load_teacher(config), config


@pytest.fixture()
def lifter(teacher_and_config):
    from dreamdistill.lift3d import Lifter

    teacher, config = teacher_and_config
    return Lifter(config, teacher)


def scene_state(lifter) -> dict[str, torch.Tensor]:
    state = {f"field.{k}": v.clone() for k, v in lifter.field.state_dict().items()}
    for i, per_param in enumerate(lifter.optimizer.state.values()):
        state.update({f"adam.{i}.{k}": torch.as_tensor(v).clone() for k, v in per_param.items()})
    return state


@pytest.mark.parametrize("where", ["loss", "teacher"])
def test_a_nonfinite_step_changes_nothing_and_is_counted(lifter, where, monkeypatch):
    """A NaN in the loss and the gradients (a regulariser of the render), or in the teacher's prediction (which SDS
    zeroes element-wise but reports), skips the optimiser step: field and Adam moments and step counts stay bit for
    bit, and the step is counted."""
    assert lifter.step(0)["nonfinite"] == 0.0
    before = scene_state(lifter)
    assert any(k.endswith("exp_avg_sq") for k in before)
    if where == "loss":
        from dreamdistill.lift3d import lifter as lifter_module

        monkeypatch.setattr(lifter_module, "regularizer_losses",
                            lambda config, out, *args: {"poison": out.opacity.sum() * float("nan")})
    else:
        predict = lifter.teacher.predict_eps
        monkeypatch.setattr(lifter.teacher, "predict_eps", lambda *a, **k: predict(*a, **k) * float("nan"))
    stats = lifter.step(1)
    assert stats["nonfinite"] == 1.0 and lifter.nonfinite_steps == 1
    after = scene_state(lifter)
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert lifter.state_dict()["nonfinite_steps"] == 1


def test_finite_steps_still_move_the_field(lifter):
    before = scene_state(lifter)
    lifter.step(0)
    assert lifter.field_moved() and lifter.nonfinite_steps == 0
    assert not torch.equal(scene_state(lifter)["field.grid.params"], before["field.grid.params"])


def poison_teacher(monkeypatch, steps: set[int] | None = None):
    """Make the teacher predict NaN (at the given steps, counted by calls; all when None)."""
    from dreamdistill.guidance.sds import SDS

    original, calls = SDS.teacher_eps, iter(range(10**6))

    def teacher_eps(self, *args, **kwargs):
        eps = original(self, *args, **kwargs)
        return eps * float("nan") if steps is None or next(calls) in steps else eps

    monkeypatch.setattr(SDS, "teacher_eps", teacher_eps)


def test_a_diverged_run_stops_with_one_line_and_exports_nothing(tiny_pixel_teacher_dir, tmp_path, capsys,
                                                                monkeypatch):
    poison_teacher(monkeypatch)
    assert cli.main(lift_argv(tiny_pixel_teacher_dir, tmp_path, "--steps", "4")) == 2
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "the optimisation diverged: 3 of the 3 steps so far" in lines[0], err
    assert "Traceback" not in err
    (run_dir,) = tmp_path.iterdir()
    assert not list(run_dir.glob("mesh.*")) and not (run_dir / "metrics.json").exists()


def test_a_field_that_never_moves_is_not_exported(tiny_pixel_teacher_dir, tmp_path, capsys):
    argv = lift_argv(tiny_pixel_teacher_dir, tmp_path, "--steps", "2",
                     overrides=SMALL + ["optim.grid_learning_rate=1e-30", "optim.mlp_learning_rate=1e-30"])
    assert cli.main(argv) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "the field never moved from its initial values in 2 steps" in lines[0]
    (run_dir,) = tmp_path.iterdir()
    assert not list(run_dir.glob("mesh.*")) and not (run_dir / "metrics.json").exists()


# ---- interruptions and write failures ------------------------------------------------------------------------


def test_ctrl_c_checkpoints_the_current_step_then_resume_finishes(tiny_pixel_teacher_dir, tmp_path, capsys,
                                                                   monkeypatch):
    """Ctrl-C after step 1 (the second): checkpoint at step 2, the resume command, exit 130; resuming finishes the
    run, and the non-finite step 0 (a poisoned teacher) is still counted in metrics.json after the resume."""
    from dreamdistill.lift3d import Lifter

    poison_teacher(monkeypatch, steps={0})
    step = Lifter.step

    def step_then_ctrl_c(self, index):
        stats = step(self, index)
        if index == 1:
            os.kill(os.getpid(), signal.SIGINT)  # lands in the loop's handler: the step finishes first
        return stats

    monkeypatch.setattr(Lifter, "step", step_then_ctrl_c)
    handler = signal.getsignal(signal.SIGINT)
    argv = lift_argv(tiny_pixel_teacher_dir, tmp_path, "--steps", "4", overrides=SMALL + ["checkpoint_every=100"])
    assert cli.main(argv) == 130
    (run_dir,) = tmp_path.iterdir()
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"interrupted: stopped at step 2 of 4, checkpoint saved; continue with: dreamdistill --resume " \
                      f"{run_dir}"
    assert torch.load(run_dir / "checkpoint.pt", weights_only=False)["step"] == 2
    assert not (run_dir / "metrics.json").exists()
    assert signal.getsignal(signal.SIGINT) is handler  # the loop's handler is gone again
    monkeypatch.setattr(Lifter, "step", step)
    assert cli.main(["--resume", str(run_dir)]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["steps"] == 4 and metrics["nonfinite_steps"] == 1
    assert "warning: 1 of 4 steps had a NaN or infinite loss or gradient" in capsys.readouterr().err
    log = [json.loads(line) for line in (run_dir / "log.jsonl").read_text().splitlines()]
    assert [record["step"] for record in log] == [0, 1, 2, 3]
    assert [record["nonfinite"] for record in log] == [1.0, 0.0, 0.0, 0.0]


def test_sigterm_is_stop_request_too_and_exits_143():
    from dreamdistill.errors import Interrupted
    from dreamdistill.interrupt import StopRequest

    handler = signal.getsignal(signal.SIGTERM)
    with StopRequest() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
        assert stop.requested and stop.signum == signal.SIGTERM
        with pytest.raises(KeyboardInterrupt):  # a second signal stops at once
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is handler
    assert Interrupted("stopped", signal.SIGTERM).exit_code == 143


def test_a_write_failure_mid_run_names_the_folder_and_the_resume_command(tiny_pixel_teacher_dir, tmp_path, capsys,
                                                                         monkeypatch):
    import errno

    from dreamdistill.lift3d import run as run_module

    def disk_full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(run_module, "torch_save_atomic", disk_full)
    assert cli.main(lift_argv(tiny_pixel_teacher_dir, tmp_path, "--steps", "2",
                              overrides=SMALL + ["checkpoint_every=1"])) == 2
    (run_dir,) = tmp_path.iterdir()
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]
    assert lines == [f"error: writing to the run folder {run_dir} failed (No space left on device: "
                     f"{run_dir / 'checkpoint.pt'}); once there is space or write permission again, continue with: "
                     f"dreamdistill --resume {run_dir}"]


def test_a_refused_distill_leaves_no_work_folder(world, tmp_path, capsys, monkeypatch):
    """The teacher is refused after the work folder's settings were checked: no OUT-work/distill.yaml stays to
    block the corrected command."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["distill", "kd", "--teacher", str(world["invalid_json"]), "--out", "students/kd",
                     "--device", "cpu", "--steps", "1"]) == 2
    assert "cannot be read" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())
