"""``--init instant``: does a per-prompt run that starts from the generator reach the per-prompt default's quality
in fewer steps?

    python benchmarks/instant_init.py [--prompts "a red chair,a yellow house"] [--steps 400] [--generator DIR]
                                      [--baseline] [--runs DIR] [--out PATH] [--set KEY=VALUE ...]

Each prompt is one ``dreamdistill PROMPT --init instant --steps N`` run (the default preset, configs/toy-sds.yaml,
with its schedules compressed into N steps), made in this process. Per run: R-precision, view consistency,
nearest-real IoU, normal consistency, wall time; beside it the per-prompt default's figures for the same prompt at its
800 steps, read from ``benchmarks/results/text_to_3d.json`` (labelled so: not rerun here) and, with ``--baseline``, the
per-prompt default from a random start at its own steps run here, on this machine (the fair time comparison). Writes
``benchmarks/results/instant_init.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from dreamdistill.config import load_config, save_yaml
from dreamdistill.fileio import write_json_atomic
from dreamdistill.instant.infer import instant_metrics, is_held_out, load_instant_field, with_generator_scene
from dreamdistill.instant.run import load_generator, resolve_generator
from dreamdistill.lift3d import LiftConfig, Lifter, configs_dir, create_run_dir, load_teacher, optimise
from dreamdistill.machine import device_info
from dreamdistill.paths import repo_relative

PER_PROMPT_RESULTS = Path(__file__).parent / "results" / "text_to_3d.json"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", default="a red chair,a yellow house")
    parser.add_argument("--steps", type=int, default=400, help="per-prompt steps from the generator's field")
    parser.add_argument("--generator", default=None)
    parser.add_argument("--baseline", action="store_true",
                        help="also run the per-prompt default from a random start (its preset's steps) here")
    parser.add_argument("--runs", default="runs/benchmark-instant-init")
    parser.add_argument("--out", default=str(Path(__file__).parent / "results" / "instant_init.json"))
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    generator_dir = resolve_generator(args.generator)
    model, info = load_generator(generator_dir)
    earlier = json.loads(PER_PROMPT_RESULTS.read_text()) if PER_PROMPT_RESULTS.is_file() else {"runs": []}
    theirs = {r["prompt"]: r for r in earlier["runs"] if r["method"] == earlier.get("default_method", "sds")}
    runs = []
    for prompt in [p.strip() for p in args.prompts.split(",") if p.strip()]:
        overrides = [*args.overrides, f"prompt={prompt}", "device=cpu", f"steps={args.steps}"]
        config = with_generator_scene(load_config(LiftConfig, configs_dir() / "toy-sds.yaml", overrides), info)
        teacher = load_teacher(config)
        lifter = Lifter(config, teacher)
        load_instant_field(lifter, model, prompt)
        run_dir = create_run_dir(Path(args.runs), f"init-instant-{prompt}")
        save_yaml(config, run_dir / "config.yaml")
        start = time.perf_counter()
        metrics = optimise(lifter, run_dir, None, progress_bar=False)["metrics"]
        metrics.update(instant_metrics(prompt, generator_dir, info, f"{config.method}+instant-init"))
        write_json_atomic(run_dir / "metrics.json", metrics)
        shape = metrics.get("shape") or {}
        default = theirs.get(prompt)
        runs.append({
            "prompt": prompt, "held_out": is_held_out(prompt), "run_dir": repo_relative(run_dir),
            "init_instant": {"steps": args.steps, "wall_seconds": round(time.perf_counter() - start, 1),
                             "r_precision": metrics["r_precision"], "view_consistency": metrics["view_consistency"],
                             "nearest_real_iou": shape.get("iou", {}).get("best"),
                             "normal_consistency": shape.get("surface", {}).get("normal_consistency")},
            "per_prompt_default": default and {
                "source": repo_relative(PER_PROMPT_RESULTS) + " (read from that file, not rerun)",
                "steps": default["steps"], "wall_seconds": default["wall_seconds"],
                "r_precision": default["r_precision"], "view_consistency": default["view_consistency"],
                "nearest_real_iou": default["nearest_real_iou"],
                "normal_consistency": default.get("normal_consistency")}})
        if args.baseline:
            base = load_config(LiftConfig, configs_dir() / "toy-sds.yaml", [*args.overrides, f"prompt={prompt}",
                                                                            "device=cpu"])
            base_dir = create_run_dir(Path(args.runs), f"default-{prompt}")
            save_yaml(base, base_dir / "config.yaml")
            start = time.perf_counter()
            base_metrics = optimise(Lifter(base, teacher), base_dir, None, progress_bar=False)["metrics"]
            runs[-1]["per_prompt_default_here"] = {
                "run_dir": repo_relative(base_dir), "steps": base.steps,
                "wall_seconds": round(time.perf_counter() - start, 1), "r_precision": base_metrics["r_precision"],
                "view_consistency": base_metrics["view_consistency"],
                "nearest_real_iou": (base_metrics.get("shape") or {}).get("iou", {}).get("best"),
                "normal_consistency": (base_metrics.get("shape") or {}).get("surface", {}).get("normal_consistency")}
        print(json.dumps(runs[-1]), file=sys.stderr)
        write_json_atomic(Path(args.out), {"benchmark": "instant_init", "generator": repo_relative(generator_dir),
                                           "generator_trained_steps": info["trained_steps"],
                                           "settings": {"preset": "configs/toy-sds.yaml", "steps": args.steps,
                                                        "overrides": args.overrides},
                                           "device": device_info("cpu"), "runs": runs})
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
