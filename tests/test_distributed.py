"""Several processes (2 CPU processes over gloo, started like `accelerate launch --multi_gpu` / torchrun) against one.

Distillation: 2 processes with batch B each train what 1 process with batch 2B trains (the global batch), to float
tolerance, for pd (killed mid-way and resumed under 2 processes), dmd and sid; only rank 0 writes and shows bars.
``train-instant``: 2 processes sharing out each step's prompts (killed mid-way and resumed) train what 1 process
trains on the same prompts: generator, occupancy grids and their clocks, logged stats; only rank 0 writes.
``dreamdistill batch``: a prompt list split across 2 processes, each prompt done exactly once, an interrupted batch
finished by the rerun, a bad line failing alone, summary.json and index.html.

Each launch costs a few seconds of imports per process; the module launches 5 times in all.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from dreamdistill import cli

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).with_name("distributed_worker.py")
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]


def accelerate_launch() -> list[str]:
    """`accelerate launch` with 2 processes. On a machine without GPUs `--multi_gpu` still starts them (torchrun
    underneath) and dreamdistill joins them over gloo; accelerate's own `--cpu --num_processes 2` starts one."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
            "--main_process_port", str(port)]


def launch(command: list[str], timeout: float = 400) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run([str(c) for c in command], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)


def failed(result: subprocess.CompletedProcess) -> str:
    return f"exit {result.returncode}\n--- stdout\n{result.stdout[-3000:]}\n--- stderr\n{result.stderr[-6000:]}"


# ------------------------------------------------------------------------------------------- distillation
METHODS = {
    "pd": ["pd.teacher_steps=4", "pd.student_steps=2", "data.source=toyworld", "pd.parameterisation=x"],
    "dmd": ["dmd.fake_steps=1", "dmd.fake=lora", "dmd.lora_rank=2"],  # with the regression loss (cached rollouts)
    "sid": ["sid.fake_steps=1", "sid.fake=copy"],
}
STEPS = 3


def distill_argv(method: str, teacher: Path, out: Path, batch_size: int) -> list[str]:
    settings = ["loop.warmup_steps=1", "loop.learning_rate=1e-3", "loop.checkpoint_every=1", "loop.log_every=1",
                "data.size=8", "data.rollout_steps=2", "data.generate_batch=8", "cfg=3.0", *METHODS[method]]
    return ["distill", method, "--teacher", str(teacher), "--out", str(out), "--steps", str(STEPS),
            "--batch-size", str(batch_size), "--device", "cpu", *sum((["--set", s] for s in settings), [])]


@pytest.fixture(scope="module")
def distilled(tiny_pixel_teacher_dir, tmp_path_factory):
    """One process with batch 4 (here), then 2 processes with batch 2 each: dmd and sid whole, pd killed at step 2
    (the worker raises Ctrl-C's KeyboardInterrupt there) and resumed by `accelerate launch -m dreamdistill.cli`."""
    root = tmp_path_factory.mktemp("distributed-distill")
    for method in METHODS:
        assert cli.main(distill_argv(method, tiny_pixel_teacher_dir, root / "one" / method, 4)) == 0
    plan = [{"argv": distill_argv(method, tiny_pixel_teacher_dir, root / "two" / method, 2),
             "stop_at_step": 2 if method == "pd" else None} for method in ("dmd", "sid", "pd")]
    (root / "plan.json").write_text(json.dumps(plan, default=str))
    first = launch([*TORCHRUN, WORKER, root / "plan.json"])
    assert first.returncode == 0, failed(first)
    assert json.loads((root / "plan.json.codes").read_text()) == [0, 0, 130]  # 130: the interrupted pd
    assert torch.load(root / "two" / "pd-work" / "pd-4to2.pt", weights_only=False)["step"] == 2
    resumed = launch([*accelerate_launch(), "-m", "dreamdistill.cli",
                      *distill_argv("pd", tiny_pixel_teacher_dir, root / "two" / "pd", 2)])
    assert resumed.returncode == 0, failed(resumed)
    return root, first, resumed


def unet_update(student: Path, teacher: Path) -> torch.Tensor:
    """The student's weights minus the teacher's, flattened: what training changed."""
    from safetensors.torch import load_file

    name = "unet/diffusion_pytorch_model.safetensors"
    trained, initial = load_file(student / name), load_file(teacher / name)
    return torch.cat([(trained[key] - initial[key]).flatten() for key in sorted(initial)])


@pytest.mark.parametrize("method", list(METHODS))
def test_two_processes_train_what_one_process_trains_on_the_global_batch(method, distilled, tiny_pixel_teacher_dir):
    """The update of 2 × batch 2 equals that of 1 × batch 4 to float tolerance (measured: relative error 4e-5 for
    pd and dmd, 6e-4 for sid, whose Adam amplifies rounding in tiny gradients). Without gradient averaging the
    error is 0.6-1.1. The logged losses (averaged over the processes) are the global batch's."""
    root, _, _ = distilled
    one = unet_update(root / "one" / method, tiny_pixel_teacher_dir)
    two = unet_update(root / "two" / method, tiny_pixel_teacher_dir)
    assert one.abs().max() > 1e-4, "training did not move the student"
    relative = float((two - one).norm() / one.norm())
    assert relative < 1e-2, f"{method}: 2 processes moved the student differently (relative error {relative:.3g})"
    logs = [[json.loads(line) for line in (root / run / f"{method}-work" / "log.jsonl").read_text().splitlines()]
            for run in ("one", "two")]
    assert [r["step"] for r in logs[1]] == list(range(1, STEPS + 1))  # each step logged once, by rank 0 alone
    for a, b in zip(*logs, strict=True):
        for key in a.keys() - {"phase", "step", "elapsed_s"}:
            assert b[key] == pytest.approx(a[key], rel=1e-3, abs=1e-4), (method, a["step"], key)


def test_only_rank_zero_writes_and_shows_progress_and_a_killed_run_resumes(distilled):
    root, first, resumed = distilled
    for phase in ("dmd", "sid"):  # one bar per phase, not one per process
        assert first.stderr.count(f"{phase}:   0%") == 1, first.stderr[-3000:]
    assert first.stdout.count("student written to") == 2  # dmd and sid, each once; pd was interrupted
    assert resumed.stdout.count("pd-4to2: resuming from") == 1 and "at step 2" in resumed.stdout
    assert resumed.stdout.count("student written to") == 1
    assert not list((root / "two").glob("**/.*tmp*"))


def test_processes_share_out_the_global_batch_row_by_row():
    """Rank r's draws are rows [rB, (r+1)B) of the single-process draws of the global batch: nothing drawn twice,
    nothing left out."""
    from dreamdistill.distill.loop import StepContext

    def draws(rank, world, batch):
        ctx = StepContext(0, torch.Generator().manual_seed(5), {}, torch.device("cpu"), None, rank=rank, world=world)
        return ctx.randint(1000, batch), ctx.randn(batch, 3), ctx.rand(batch)

    whole = draws(0, 1, 6)
    parts = [draws(rank, 3, 2) for rank in range(3)]
    for i, tensor in enumerate(whole):
        torch.testing.assert_close(torch.cat([part[i] for part in parts]), tensor, rtol=0, atol=0)


# ------------------------------------------------------------------------------------------- train-instant
INSTANT_TINY = ["render.resolution=12", "render.step_divisions=24", "scene.levels=4", "scene.log2_table_size=8",
                "scene.max_resolution=32", "scene.hidden_dim=8", "conditioning.code_dim=8", "checkpoint_every=1",
                "validate_every=0", "threads=1",
                # 3 prompts on 2 processes (rows 0 | 1, 2), 2 cameras each; per-grid occupancy refreshed every step
                # (data-dependent draws); a random background (torch's global stream); jittered rays and light
                "prompts_per_step=3", "cameras_per_prompt=2", "conditioning.modulate=albedo",
                "render.occupancy_resolution=8", "render.occupancy_warmup=1", "render.occupancy_update_every=1",
                "render.background=random", "render.pixel_jitter=true", "render.light_jitter=0.3"]
INSTANT_STEPS = 4


def instant_argv(teacher: Path, out: Path) -> list[str]:
    return ["train-instant", "--out", str(out), "--teacher", str(teacher), "--steps", str(INSTANT_STEPS),
            "--device", "cpu", *sum((["--set", s] for s in INSTANT_TINY), [])]


@pytest.fixture(scope="module")
def instant_runs(tiny_pixel_teacher_dir, tmp_path_factory):
    """One process (here), then 2 processes (torchrun) killed at step 2 and resumed by `accelerate launch`."""
    root = tmp_path_factory.mktemp("distributed-instant")
    assert cli.main(instant_argv(tiny_pixel_teacher_dir, root / "one")) == 0
    (root / "plan.json").write_text(json.dumps([{"argv": instant_argv(tiny_pixel_teacher_dir, root / "two"),
                                                  "stop_at_step": 2}]))
    first = launch([*TORCHRUN, WORKER, root / "plan.json"])
    assert first.returncode == 0, failed(first)
    assert json.loads((root / "plan.json.codes").read_text()) == [130]
    assert torch.load(root / "two" / "checkpoint.pt", weights_only=False)["step"] == 2
    resumed = launch([*accelerate_launch(), "-m", "dreamdistill.cli", *instant_argv(tiny_pixel_teacher_dir,
                                                                                      root / "two")])
    assert resumed.returncode == 0, failed(resumed)
    return root, first, resumed


def test_two_processes_train_the_instant_generator_one_process_trains(instant_runs):
    """Same generator to float tolerance (measured: largest difference 4e-9 on weights up to 0.36; without summing
    the gradients over the processes, 0.035), the same occupancy grids and clocks, and the logged stats of the
    global batch."""
    root, _, _ = instant_runs
    one, two = (torch.load(root / run / "checkpoint.pt", weights_only=False) for run in ("one", "two"))
    assert one["step"] == two["step"] == INSTANT_STEPS
    assert one["model"]["code_mlp.2.weight"].abs().max() > 1e-4, "training did not move the generator (FiLM starts 0)"
    for name, value in one["model"].items():
        torch.testing.assert_close(two["model"][name], value, rtol=1e-4, atol=2e-5, msg=name)
    assert two["grid_updates"] == one["grid_updates"] and sum(one["grid_updates"]) == 3 * INSTANT_STEPS
    for name, value in one["occupancy"].items():
        torch.testing.assert_close(two["occupancy"][name], value, rtol=1e-4, atol=1e-6, msg=name)
    logs = [[json.loads(line) for line in (root / run / "log.jsonl").read_text().splitlines()]
            for run in ("one", "two")]
    assert [r["step"] for r in logs[1]] == list(range(INSTANT_STEPS))  # each step logged once, by rank 0 alone
    for a, b in zip(*logs, strict=True):
        assert a["prompts"] == b["prompts"] and a.keys() == b.keys()
        for key in a.keys() - {"step", "prompts"}:
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-5), (a["step"], key)


def test_train_instant_writes_on_rank_zero_alone_and_a_killed_run_resumes(instant_runs):
    root, first, resumed = instant_runs
    assert first.stderr.count("instant:   0%") == 1 and first.stderr.count("2 processes, ->") == 1
    assert resumed.stderr.count("steps 2 -> 4, 2 processes") == 1
    assert resumed.stderr.count("instant:  50%") == 1  # one bar, resuming at step 2 of 4
    info = json.loads((root / "two" / "generator" / "instant.json").read_text())
    assert info["trained_steps"] == INSTANT_STEPS
    assert not list((root / "two").glob("**/.*tmp*"))


def test_instant_processes_share_out_the_prompts_and_replay_the_others_draws(tiny_pixel_teacher_dir):
    """Each process renders contiguous rows of the step's prompts, together all of them once; a process replays
    another's render on a blank field and draws exactly the numbers that render draws; a process without a prompt
    is refused in one line."""
    from dreamdistill.config import load_config
    from dreamdistill.diffusion.teacher import Teacher
    from dreamdistill.errors import DreamDistillError
    from dreamdistill.instant.config import InstantConfig
    from dreamdistill.instant.trainer import InstantTrainer, Processes, camera_slice, light_slice
    from dreamdistill.lift3d.schedules import pick_shading
    from dreamdistill.render.cameras import sample_cameras
    from dreamdistill.render.lights import camera_light
    from dreamdistill.render.volume import render

    for count in range(1, 9):
        for world in range(1, count + 1):
            shares = [Processes(rank, world).share(count) for rank in range(world)]
            assert [row for share in shares for row in share] == list(range(count))
            assert max(map(len, shares)) - min(map(len, shares)) <= 1 and min(map(len, shares)) >= 1

    teacher = Teacher.from_pretrained(tiny_pixel_teacher_dir, device="cpu")
    overrides = [s for s in INSTANT_TINY if not s.startswith("checkpoint")] + ["render.supersample=2",
                                                                                "regularizers.orientation=0.1"]
    config = load_config(InstantConfig, ROOT / "configs" / "instant-toy.yaml", overrides)
    with pytest.raises(DreamDistillError, match="prompts_per_step 3 is below the 4 processes"):
        InstantTrainer(config, teacher, processes=Processes(0, 4))
    trainer = InstantTrainer(config, teacher, processes=Processes(1, 2))
    for step in range(2):  # the second step marches through the refreshed occupancy grids
        generator = torch.Generator().manual_seed(step)
        cameras = sample_cameras(2, config.cameras, generator)
        shading = pick_shading(config.render, 1.0, generator)
        light = camera_light(cameras, config.render, generator)
        states = []
        for field_ in (trainer.bound_field("a red chair", 0.5), trainer.blank):
            torch.manual_seed(step)
            occupancy = trainer.occupancy[trainer.model.grid_index("a red chair")]
            snapshot = generator.get_state()
            render(field_, trainer.background, camera_slice(cameras, slice(0, 2)), 12, shading=shading,
                   light=light_slice(light, slice(0, 2)), occupancy=occupancy, prune=field_ is not trainer.blank,
                   **trainer.render_settings(generator))
            states.append((generator.get_state(), torch.get_rng_state()))
            generator.set_state(snapshot)
        assert all(torch.equal(a, b) for a, b in zip(*states))
        trainer.replay("a red chair", 0.5, camera_slice(cameras, slice(0, 2)), 12, shading,
                       light_slice(light, slice(0, 2)), generator)


# ------------------------------------------------------------------------------------------- batch
LIFT_TINY = ["render.resolution=16", "render.batch_size=2", "render.occupancy_resolution=16",
             "render.step_divisions=48", "render.albedo_warmup=0.0", "scene.levels=4", "scene.log2_table_size=10",
             "scene.max_resolution=32", "scene.hidden_dim=16", "scene.hidden_layers=1", "export.resolution=24",
             "export.coarse_resolution=16", "view_resolution=16", "turntable_frames=2", "turntable_resolution=16",
             "metric_views=4", "checkpoint_every=2", "validate_every=0", "render.occupancy_warmup=2",
             "render.occupancy_update_every=2"]
PROMPTS = b"a red chair\na blue mug\n\n\xff\xfe not text\n# a comment\na red chair\n"
"""Prompts on lines 1, 2 and 6 (6 repeats 1: an uninterrupted twin of line 1's resumed run); line 4 is not UTF-8."""


def batch_argv(prompts: Path, out: Path, teacher: Path) -> list[str]:
    return ["batch", str(prompts), "--out", str(out), "--teacher", str(teacher), "--steps", "4", "--device", "cpu",
            *sum((["--set", s] for s in LIFT_TINY), [])]


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


@pytest.fixture(scope="module")
def batched(tiny_pixel_teacher_dir, tmp_path_factory):
    """An interrupted batch (here, one process: lines 1 and 2 stopped after step 2 of 4, then line 2 finished), the
    rerun under 2 processes, plus a 1-prompt batch under 2 processes; then a rerun of the first here."""
    from dreamdistill.cli import batch_parser
    from dreamdistill.lift3d.batch import batch

    root = tmp_path_factory.mktemp("distributed-batch")
    out, prompts = root / "out", root / "prompts.txt"
    prompts.write_bytes(PROMPTS)
    (root / "head.txt").write_bytes(b"a red chair\na blue mug\n")
    (root / "second.txt").write_bytes(b"\na blue mug\n")
    (root / "one.txt").write_bytes(b"a blue mug\n")
    teacher = tiny_pixel_teacher_dir
    assert batch(batch_parser().parse_args(batch_argv(root / "head.txt", out, teacher)[1:]), stop_after=2) == 0
    assert cli.main(batch_argv(root / "second.txt", out, teacher)) == 0
    plan = [{"argv": batch_argv(prompts, out, teacher)}, {"argv": batch_argv(root / "one.txt", root / "one", teacher)}]
    (root / "plan.json").write_text(json.dumps(plan))
    two = launch([*TORCHRUN, WORKER, root / "plan.json"])
    assert two.returncode == 0, failed(two)
    after_two = summary_of(out)
    stamps = {p: p.stat().st_mtime_ns for p in out.glob("*/metrics.json")}
    assert cli.main(batch_argv(prompts, out, teacher)) == 2  # line 4 fails again; the rest is skipped
    return root, two, after_two, stamps


def test_a_batch_split_across_two_processes_does_every_prompt_exactly_once(batched):
    root, two, summary, _ = batched
    assert json.loads((root / "plan.json.codes").read_text()) == [2, 0]  # 2: line 4 failed
    runs = {record["line"]: record for record in summary["runs"]}
    assert summary["processes"] == 2 and sorted(runs) == [1, 2, 4, 6]
    assert {n: (r["status"], r["action"], r["rank"]) for n, r in runs.items()} == {
        1: ("done", "resumed", 0), 2: ("done", "skipped", 1), 4: ("failed", None, 0), 6: ("done", "ran", 1)}
    assert "not UTF-8" in runs[4]["error"]
    out = root / "out"
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == ["001-a-red-chair", "002-a-blue-mug",
                                                                   "006-a-red-chair"]
    for folder in ("001-a-red-chair", "002-a-blue-mug", "006-a-red-chair"):  # each step once, in one run
        steps = [json.loads(line)["step"] for line in (out / folder / "log.jsonl").read_text().splitlines()]
        assert steps == [0, 1, 2, 3], folder
    resumed = torch.load(out / "001-a-red-chair" / "checkpoint.pt", weights_only=False)
    whole = torch.load(out / "006-a-red-chair" / "checkpoint.pt", weights_only=False)
    for key, value in whole["field"].items():  # the resumed run ends where its uninterrupted twin does
        torch.testing.assert_close(resumed["field"][key], value, atol=1e-5, rtol=1e-4)
    page = (out / "index.html").read_text()
    for folder in ("001-a-red-chair", "002-a-blue-mug", "006-a-red-chair"):
        assert f'href="{folder}/report.html"' in page and f'src="{folder}/turntable.gif"' in page
    assert "Failures" in page and "not UTF-8" in page and "3 of 4 prompts done, 1 failed" in page
    assert "2 processes for 1 prompts" in two.stderr  # the 1-prompt batch: process 1 had nothing to do
    assert summary_of(root / "one")["done"] == 1


def test_rerunning_a_finished_batch_skips_every_prompt(batched):
    root, _, _, stamps = batched
    summary = summary_of(root / "out")
    assert [(r["line"], r["status"], r["action"]) for r in summary["runs"]] == [
        (1, "done", "skipped"), (2, "done", "skipped"), (4, "failed", None), (6, "done", "skipped")]
    assert stamps and {p: p.stat().st_mtime_ns for p in stamps} == stamps


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"), (b"\n# only a comment\n\n", "has no prompts"), ("folder", "is not a file")])
def test_a_bad_prompt_file_is_one_line(content, message, tmp_path, capsys):
    path = tmp_path / "prompts.txt"
    if content == "folder":
        path.mkdir()
    elif content is not None:
        path.write_bytes(content)
    assert cli.main(["batch", str(path), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and message in err[0]
    assert not (tmp_path / "out").exists()


def test_prompts_are_dealt_round_robin():
    from dreamdistill.lift3d.batch import share

    lines = list(range(7))
    assert [share(lines, rank, 3) for rank in range(3)] == [[0, 3, 6], [1, 4], [2, 5]]
    assert share([0], 1, 2) == []
