"""Copy the trained students behind benchmarks/results/distill.json into assets/ (fp16, no optimiser state).

    python benchmarks/ship_students.py [--students students] [--assets assets] [--teacher toy]

For the toy teacher: students/pd -> assets/toy-pd4, students/dmd -> assets/toy-dmd, students/sid -> assets/toy-sid;
for another teacher (``--teacher toy-sd``) students/TAG-METHOD -> assets/TAG-pd4, TAG-dmd, TAG-sid, where
benchmarks/distill.py looks for them (each skipped when missing), so that ``dreamdistill sample PROMPT --model
toy-dmd`` works on a fresh clone and ``python benchmarks/distill.py --students assets`` measures them without
retraining. Each folder's notes keep the student's recipe and gain ``trained_steps`` and ``training_minutes`` (from
the work folder's log).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

SHIPPED = {"pd": "pd4", "dmd": "dmd", "sid": "sid"}
"""Method -> the shipped folder's suffix (assets/TAG-SUFFIX, the short name ``--model`` takes for the toy teacher)."""


def main(argv: list[str] | None = None) -> int:
    from dreamdistill.distill.student import is_student_folder, ship_student
    from dreamdistill.paths import assets_dir

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--students", type=Path, default=Path("students"))
    parser.add_argument("--assets", type=Path, default=assets_dir())
    parser.add_argument("--teacher", default="toy", help="the students' teacher, by its short name (toy, toy-sd)")
    args = parser.parse_args(argv)
    for method, suffix in SHIPPED.items():
        folder = args.students / (method if args.teacher == "toy" else f"{args.teacher}-{method}")
        if not is_student_folder(folder):
            print(f"{folder}: no student; skipped")
            continue
        out = ship_student(folder, args.assets / f"{args.teacher}-{suffix}")
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20
        print(f"{folder} -> {out} ({size:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
