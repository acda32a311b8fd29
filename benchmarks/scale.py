"""Throughput of 1 and 2 processes, side by side: `dreamdistill batch` (prompts per minute) and `dreamdistill distill`
(training samples per second), one CPU thread per process.

    python benchmarks/scale.py [--prompts 8] [--steps 200] [--distill-steps 40] [--distill-batch 8]
                               [--processes 1 2] [--work runs/scale] [--out benchmarks/results/scale.json]
    python benchmarks/scale.py --quick --out /tmp/scale.json      # a smoke test of the script (seconds per row)

Each row is a fresh launch, ``torchrun --standalone --nproc_per_node W -m dreamdistill.cli ...`` (what
``accelerate launch --multi_gpu --num_processes W`` starts), with OMP_NUM_THREADS=1:
- batch: the first ``--prompts`` colour × category prompts of the toy vocabulary with the default toy preset
  (configs/toy-sds.yaml) at ``--steps`` steps, split across W processes. prompts_per_minute counts the whole
  launch (start-up, one teacher load per process, every run's export and report): what a user waits for.
- distill: progressive distillation of the toy teacher (one round, 4 → 2 steps) for ``--distill-steps`` steps
  with ``--distill-batch`` samples per process (a global batch of W × that); samples_per_second counts the
  training loop only (log.jsonl's elapsed_s), and launch_seconds the whole launch.
``speedup`` is the 2-process figure over the 1-process one, measured in the same run. The machine's load is
recorded: the rows compare only when nothing else competes for the cores.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dreamdistill.machine import device_info  # noqa: E402
from dreamdistill.paths import repo_relative  # noqa: E402

QUICK_LIFT = ["render.resolution=16", "render.batch_size=1", "render.occupancy_resolution=16",
              "render.step_divisions=32", "scene.levels=4", "scene.log2_table_size=10", "scene.max_resolution=32",
              "scene.hidden_dim=16", "export.resolution=24", "export.coarse_resolution=16", "view_resolution=16",
              "turntable_frames=2", "turntable_resolution=16", "metric_views=4", "validate_every=0"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=8, help="batch: number of prompts")
    parser.add_argument("--steps", type=int, default=200, help="batch: steps of each per-prompt run")
    parser.add_argument("--distill-steps", type=int, default=40, help="distill: optimiser steps")
    parser.add_argument("--distill-batch", type=int, default=8, help="distill: samples per step and process")
    parser.add_argument("--processes", type=int, nargs="+", default=[1, 2], help="process counts to compare")
    parser.add_argument("--work", default="runs/scale", help="scratch folder (emptied first)")
    parser.add_argument("--out", default="benchmarks/results/scale.json")
    parser.add_argument("--quick", action="store_true",
                        help="tiny runs (2 prompts × 2 steps, 2 distillation steps): checks the script, measures "
                             "start-up more than work")
    args = parser.parse_args(argv)
    if args.quick:
        args.prompts, args.steps, args.distill_steps, args.distill_batch = 2, 2, 2, 2
    return args


def launch(processes: int, argv: list[str]) -> float:
    """Run ``dreamdistill ARGV`` under ``processes`` processes; returns the wall seconds (raises on failure)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(processes),
               "-m", "dreamdistill.cli", *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    began = time.perf_counter()
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - began
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return seconds


def batch_row(args: argparse.Namespace, processes: int, work: Path) -> dict:
    from dreamdistill.instant.prompts import all_prompts

    prompts = all_prompts()[:: max(1, len(all_prompts()) // args.prompts)][: args.prompts]
    work.mkdir(parents=True, exist_ok=True)
    (work / "prompts.txt").write_text("\n".join(prompts) + "\n")
    settings = (QUICK_LIFT if args.quick else []) + ["checkpoint_every=1000000"]
    argv = ["batch", str(work / "prompts.txt"), "--out", str(work / "out"), "--steps", str(args.steps),
            "--threads", "1", "--device", "cpu", *sum((["--set", s] for s in settings), [])]
    seconds = launch(processes, argv)
    summary = json.loads((work / "out" / "summary.json").read_text())
    assert summary["done"] == len(prompts), summary
    return {"processes": processes, "prompts": len(prompts), "steps": args.steps, "launch_seconds": round(seconds, 1),
            "prompts_per_minute": round(len(prompts) / seconds * 60, 3),
            "run_seconds": [run["metrics"]["seconds"] for run in summary["runs"]]}


def distill_row(args: argparse.Namespace, processes: int, work: Path) -> dict:
    settings = ["pd.teacher_steps=4", "pd.student_steps=2", "loop.threads=1", "loop.warmup_steps=0",
                f"loop.log_every={args.distill_steps}", f"loop.checkpoint_every={args.distill_steps}",
                "data.size=64", "data.rollout_steps=4", "data.generate_batch=64"]
    argv = ["distill", "pd", "--out", str(work / "student"), "--steps", str(args.distill_steps),
            "--batch-size", str(args.distill_batch), "--device", "cpu", *sum((["--set", s] for s in settings), [])]
    seconds = launch(processes, argv)
    log = [json.loads(line) for line in (work / "student-work" / "log.jsonl").read_text().splitlines()]
    elapsed = max(record["elapsed_s"] for record in log if "elapsed_s" in record)
    samples = processes * args.distill_batch * args.distill_steps
    return {"processes": processes, "steps": args.distill_steps, "batch_per_process": args.distill_batch,
            "training_seconds": elapsed, "launch_seconds": round(seconds, 1),
            "samples_per_second": round(samples / max(elapsed, 1e-3), 3)}


def speedup(rows: list[dict], key: str) -> float | None:
    by_count = {row["processes"]: row[key] for row in rows}
    return round(by_count[2] / by_count[1], 3) if 1 in by_count and 2 in by_count else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    started = device_info("cpu")
    batch, distill = [], []
    for processes in args.processes:  # interleaved, so that a change of load hits both kinds alike
        batch.append(batch_row(args, processes, work / f"batch-{processes}"))
        print(f"batch, {processes} process(es): {batch[-1]['prompts_per_minute']} prompts/min", flush=True)
        distill.append(distill_row(args, processes, work / f"distill-{processes}"))
        print(f"distill, {processes} process(es): {distill[-1]['samples_per_second']} samples/s", flush=True)
    result = {
        "command": "python benchmarks/scale.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "quick": args.quick, "machine": started, "load_average_at_end": list(os.getloadavg()),
        "launcher": "torchrun --standalone --nproc_per_node W -m dreamdistill.cli (OMP_NUM_THREADS=1)",
        "work": repo_relative(work),
        "batch": {"rows": batch, "speedup_2_over_1": speedup(batch, "prompts_per_minute")},
        "distill": {"rows": distill, "speedup_2_over_1": speedup(distill, "samples_per_second")},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"batch speed-up {result['batch']['speedup_2_over_1']}, distill speed-up "
          f"{result['distill']['speedup_2_over_1']}; wrote {repo_relative(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
