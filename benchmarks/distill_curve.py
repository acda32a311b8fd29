"""A one-step student's quality while it trains: FD, KID ± SE and label accuracy every K steps (SiD or DMD).

    python benchmarks/distill_curve.py {sid,dmd} [--every 25] [--num 256] [--out students/METHOD]
                                       [--set KEY=VALUE ...] [--curve benchmarks/results/distill_curve_METHOD.json]

Trains the student with its preset (configs/distill-METHOD.yaml) and the CPU recipe of
``benchmarks/distill_cpu_students.sh`` (batch 8, one thread, 20 warm-up steps; ``--set`` overrides any key), and
every ``--every`` steps, before the step, samples the generator once on the first ``--num`` prompts and noises of
``benchmarks/distill.py`` (captions of toy-world renders, seed 2024) and scores the samples against those renders:
Fréchet distance and KID ± SE in the evaluator's features, and the share whose category and colour the evaluator
reads as prompted (with ``loop.ema_halflife`` > 0 both the last weights and their average, ``weights``). The
measurements draw no training randomness, so the student is the one the same
``dreamdistill distill`` command trains (their seconds count in its ``training_minutes``). Writes the curve, with the
loss log, to JSON: where a student falls behind another shows as the step where the curves part.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
CPU_RECIPE = ["loop.threads=1", "loop.warmup_steps=20", "loop.checkpoint_every=50", "loop.batch_size=8"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("method", choices=("sid", "dmd"))
    parser.add_argument("--every", type=int, default=25, help="steps between measurements")
    parser.add_argument("--num", type=int, default=256, help="prompts and noises per measurement")
    parser.add_argument("--seed", type=int, default=2024, help="seed of the renders and noise (distill.py's)")
    parser.add_argument("--out", type=Path, default=None, help="student folder (default: students/METHOD)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--curve", type=Path, default=None,
                        help="JSON to write (default: benchmarks/results/distill_curve_METHOD.json)")
    args = parser.parse_args(argv)

    from dreamdistill.config import load_config
    from dreamdistill.diffusion.teacher import Teacher
    from dreamdistill.distill import DistillConfig, distill, dmd, preset_path, sid
    from dreamdistill.distill.student import generate, student_schedule
    from dreamdistill.fileio import write_json_atomic
    from dreamdistill.toyworld import render_dataset
    from dreamdistill.toyworld.evaluator import Evaluator, frechet_distance, kernel_inception_distance

    out = args.out or Path("students") / args.method
    curve_path = args.curve or RESULTS / f"distill_curve_{args.method}.json"
    teacher = Teacher.from_pretrained("toy", device="cpu", dtype=torch.float32)
    evaluator = Evaluator.load(None, device=torch.device("cpu"))
    real = render_dataset(args.num, seed=args.seed)
    real_features = evaluator.embed(real.images)
    noise = torch.randn((args.num, *teacher.model_shape), generator=torch.Generator().manual_seed(args.seed))
    text = teacher.encode_text(real.captions)
    timestep = int(student_schedule(teacher).timesteps(1)[0])
    curve: list[dict] = []
    started = time.time()

    def measure(generator: torch.nn.Module, step: int, weights: str = "last") -> None:
        was_training = generator.training
        generator.eval()
        with torch.no_grad():
            x = torch.cat([generate(teacher, generator, noise[i:i + 64], text[i:i + 64], timestep)
                           for i in range(0, args.num, 64)])
        generator.train(was_training)
        images = teacher.model_to_images(x)
        features = evaluator.embed(images)
        predicted = evaluator.classify(images)
        right = (predicted["category"] == real.category) & (predicted["colour"] == real.colour)
        kid, kid_se = kernel_inception_distance(features, real_features)
        accuracy = round(100 * float(right.float().mean()), 1)
        curve.append({"step": step, "fd": round(frechet_distance(features, real_features), 2), "kid": round(kid, 2),
                      "kid_se": round(kid_se, 2), "category_colour_accuracy": accuracy,
                      "weights": weights, "elapsed_s": round(time.time() - started, 1)})
        print(json.dumps(curve[-1]), flush=True)

    module, factory = (sid, "_sid_step") if args.method == "sid" else (dmd, "_dmd_step")
    make_step = getattr(module, factory)

    def measured_step(*step_args, **step_kwargs):
        step_fn = make_step(*step_args, **step_kwargs)

        def step(ctx):
            if ctx.step % args.every == 0:
                measure(ctx.models["generator"], ctx.step)
                if ctx.average is not None:  # loop.ema_halflife > 0: the average is what gets shipped
                    measure(ctx.average, ctx.step, "average")
            return step_fn(ctx)

        return step

    setattr(module, factory, measured_step)
    config = load_config(DistillConfig, preset_path(args.method),
                         [f"out={out}", *CPU_RECIPE, *args.overrides], base={"method": args.method})
    folder = distill(config, teacher=teacher)
    saved = json.loads((Path(folder) / "dreamdistill_teacher.json").read_text())
    trained = sum((saved.get("steps_trained") or {}).values()) or config.loop.steps  # fewer after loop.max_minutes
    measure(Teacher.from_pretrained(folder, device="cpu", dtype=torch.float32).unet, trained,
            "average" if config.loop.ema_halflife > 0 else "last")
    log = Path(f"{str(folder).rstrip('/')}-work") / "log.jsonl"
    write_json_atomic(curve_path, {
        "command": "python benchmarks/distill_curve.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "method": args.method, "num": args.num, "seed": args.seed, "curve": curve,
        "losses": [json.loads(line) for line in log.read_text().splitlines() if line.strip()] if log.is_file() else [],
    })
    print(f"wrote {curve_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
