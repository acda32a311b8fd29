"""Copy the trained students behind benchmarks/results/distill.json into assets/ (fp16, no optimiser state).

    python benchmarks/ship_students.py [--students students] [--assets assets]

students/pd -> assets/toy-pd4, students/dmd -> assets/toy-dmd, students/sid -> assets/toy-sid (each skipped when
missing), so that ``dreamdistill sample PROMPT --model toy-dmd`` works on a fresh clone and
``python benchmarks/distill.py --students assets`` measures them without retraining. Each folder's JSON keeps the
student's recipe and gains ``trained_steps`` and ``training_minutes`` (from the work folder's log).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SHIPPED = {"pd": "toy-pd4", "dmd": "toy-dmd", "sid": "toy-sid"}
"""Student folder under --students -> folder under --assets (the short name ``--model`` takes)."""


def main(argv: list[str] | None = None) -> int:
    from dreamdistill.distill.student import ship_student
    from dreamdistill.paths import assets_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=Path, default=Path("students"))
    parser.add_argument("--assets", type=Path, default=assets_dir())
    args = parser.parse_args(argv)
    for method, name in SHIPPED.items():
        folder = args.students / method
        if not (folder / "dreamdistill_teacher.json").is_file():
            print(f"{folder}: no student; skipped")
            continue
        out = ship_student(folder, args.assets / name)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
        print(f"{folder} -> {out} ({size:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
