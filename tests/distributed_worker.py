"""One process of a multi-process launch for tests/test_distributed.py: runs dreamdistill commands in turn.

    torchrun --standalone --nproc_per_node 2 tests/distributed_worker.py PLAN.json

PLAN.json is a list of ``{"argv": [...], "stop_at_step": N}`` (``stop_at_step`` optional). Each argv goes to
``dreamdistill.cli.main``; with ``stop_at_step`` every distillation phase (and every ``train-instant`` training) of
that command raises KeyboardInterrupt on every process when it reaches step N, as Ctrl-C would, after the
checkpoints of the earlier steps (the command exits with 130). Rank 0 writes the exit codes to PLAN.json.codes.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path


def stopping_at(step_to_stop: int):
    """A ``Run.phase`` whose step function raises KeyboardInterrupt at ``step_to_stop``."""
    from dreamdistill.distill.loop import Run

    original = Run.phase

    def phase(self, name, modules, step_fn, *args, **kwargs):
        def step(ctx):
            if ctx.step == step_to_stop:
                raise KeyboardInterrupt
            return step_fn(ctx)

        return original(self, name, modules, step, *args, **kwargs)

    return original, phase


def instant_stopping_at(step_to_stop: int):
    """An ``InstantTrainer.step`` that raises KeyboardInterrupt at ``step_to_stop``."""
    from dreamdistill.instant.trainer import InstantTrainer

    original = InstantTrainer.step

    def step(self, step):
        if step == step_to_stop:
            raise KeyboardInterrupt
        return original(self, step)

    return original, step


def main(plan_path: str) -> int:
    from dreamdistill import cli
    from dreamdistill.distill.loop import Run
    from dreamdistill.instant.trainer import InstantTrainer

    codes = []
    for entry in json.loads(Path(plan_path).read_text()):
        original = None
        if entry.get("stop_at_step") is not None:
            original, Run.phase = stopping_at(int(entry["stop_at_step"]))
            original_step, InstantTrainer.step = instant_stopping_at(int(entry["stop_at_step"]))
        try:
            codes.append(cli.main(list(entry["argv"])))
        finally:
            if original is not None:
                Run.phase = original
                InstantTrainer.step = original_step
    if int(os.environ.get("RANK", "0")) == 0:
        Path(f"{plan_path}.codes").write_text(json.dumps(codes))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
