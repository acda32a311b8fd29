"""``dreamdistill batch PROMPTS.txt --out DIR``: one per-prompt run per line, split across processes.

Every non-blank line of PROMPTS.txt that does not start with ``#`` is a prompt; each gets an ordinary run folder
(:mod:`.run`) named from its line number and prompt, ``DIR/003-a-red-chair/``, made with the same settings as a
single run (``--guidance``, ``--teacher``, ``--config``, ``--set``, ``--steps``, ``--seed``). Under
``accelerate launch`` / ``torchrun`` with W processes, process r takes the prompts r, r + W, r + 2W, ... and loads
the teacher once. Rerunning the same command skips finished prompts (``metrics.json`` written with the same
settings), resumes interrupted ones from their checkpoint and retries failed ones. A line that cannot run (not
UTF-8, settings the teacher refuses, a run that diverges) fails alone: its error goes to the summary and the other
prompts go on. At the end the main process writes

    DIR/summary.json   one record per prompt: line, prompt, status (done / failed), run folder, metrics, error
    DIR/index.html     a table of the prompts with thumbnails, metrics and links to each run's report.html,
                       and the failures
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import functools
import html
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from dreamdistill.config import save_yaml, to_dict
from dreamdistill.errors import DreamDistillError, Interrupted
from dreamdistill.fileio import first_line, write_json_atomic, write_text_atomic
from dreamdistill.lift3d.config import LiftConfig, check_config, config_from_args
from dreamdistill.lift3d.run import load_run, optimise, slugify
from dreamdistill.run_files import CONFIG_NAME, METRICS_NAME, REPORT_NAME, TURNTABLE_NAME

SUMMARY_NAME = "summary.json"
INDEX_NAME = "index.html"
RESUME_INSENSITIVE = ("device",)
"""Settings a finished or interrupted prompt may have had otherwise (the machine's choice)."""


@dataclass
class PromptLine:
    """One prompt of the file: its 1-based line number, the text, or why the line cannot be read."""

    number: int
    prompt: str
    error: str | None = None

    @property
    def folder(self) -> str:
        """The run folder's name: ``003-a-red-chair``."""
        return f"{self.number:03d}-{slugify(self.prompt)}"


def read_prompts(path: str | Path) -> list[PromptLine]:
    """The prompts of ``path`` (blank lines and ``#`` comments skipped); a line that is not UTF-8 is kept with its
    error, so that it fails alone. A missing, unreadable or empty file is a one-line error."""
    path = Path(path)
    if not path.exists():
        raise DreamDistillError(f"prompt file {path} does not exist; pass a text file with one prompt per line")
    if not path.is_file():
        raise DreamDistillError(f"{path} is not a file; pass a text file with one prompt per line")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise DreamDistillError(f"cannot read prompt file {path} ({error.strerror or first_line(error)})") from None
    lines = []
    for number, raw in enumerate(data.splitlines(), start=1):
        try:
            text = raw.decode("utf-8").strip()
        except UnicodeDecodeError as error:
            shown = raw.decode("utf-8", errors="replace").strip()
            lines.append(PromptLine(number, shown, f"line {number} is not UTF-8 text ({error.reason} at byte "
                                                   f"{error.start}); save the file as UTF-8"))
            continue
        if text and not text.startswith("#"):
            lines.append(PromptLine(number, text))
    if not lines:
        raise DreamDistillError(f"prompt file {path} has no prompts (only blank or # lines); write one prompt per "
                                "line")
    return lines


def share(lines: list, rank: int, world: int) -> list:
    """Process ``rank``'s prompts of ``world``: the prompts rank, rank + world, rank + 2·world, ..."""
    return lines[rank::world]


def _comparable(config: LiftConfig) -> dict:
    data = to_dict(config)
    for key in RESUME_INSENSITIVE:
        data.pop(key, None)
    return data


def run_prompt(line: PromptLine, base: LiftConfig, teacher: Callable[[], object], out: Path,
               progress_bar: bool = True, stop_after: int | None = None) -> dict:
    """Run (or skip, or resume) the prompt of one line; returns its summary record. ``teacher()`` returns the
    process's loaded teacher (loaded on the first call, so a process whose prompts are all done loads none).

    ``stop_after`` ends the run after that step without finishing (to test resuming). Errors of the line are
    returned in the record, except an interruption (Ctrl-C, SIGTERM), which stops the batch.
    """
    from dreamdistill.lift3d.lifter import Lifter

    run_dir = out / line.folder
    record = {"line": line.number, "prompt": line.prompt, "run_dir": line.folder, "status": "failed",
              "action": None, "metrics": None, "error": line.error}
    if line.error:
        return record
    started = time.perf_counter()
    lifter = None
    try:
        config = dataclasses.replace(base, prompt=line.prompt)
        check_config(config)
        checkpoint = None
        if (run_dir / CONFIG_NAME).is_file():
            _, saved, checkpoint = load_run(run_dir)
            if _comparable(saved) != _comparable(config):
                raise DreamDistillError(f"{run_dir} holds a run with other settings; delete it to run this prompt "
                                        "again with these, or pass another --out")
            if (run_dir / METRICS_NAME).is_file() and checkpoint is not None and checkpoint["step"] >= config.steps:
                import json

                record.update(status="done", action="skipped",
                              metrics=json.loads((run_dir / METRICS_NAME).read_text()))
                return record
        record["action"] = "resumed" if checkpoint is not None else "ran"
        warning = teacher().vocabulary_warning(config.prompt)
        if warning:
            print(f"line {line.number}: {warning}", file=sys.stderr)
        lifter = Lifter(config, teacher())
        run_dir.mkdir(parents=True, exist_ok=True)
        save_yaml(config, run_dir / CONFIG_NAME)
        result = optimise(lifter, run_dir, checkpoint, stop_after=stop_after, progress_bar=progress_bar)
        if result is None:  # stopped early on purpose (tests)
            record.update(status="stopped", error=f"stopped after step {stop_after}")
        else:
            record.update(status="done", metrics=result["metrics"])
    except Interrupted:
        raise
    except Exception as error:  # noqa: BLE001 -- a bad line fails alone; the others go on
        kind = "" if isinstance(error, DreamDistillError) else f"{type(error).__name__}: "
        record["error"] = f"{kind}{first_line(error, 400)}"
    finally:
        if lifter is not None:
            lifter.close()
    record["seconds"] = round(time.perf_counter() - started, 1)
    return record


def _process_group(cpu: bool):
    """accelerate's view of the launch (one process when not launched), with a week-long timeout: the processes
    meet only at the end, after the slowest one's share of the prompts."""
    from accelerate import PartialState

    return PartialState(cpu=cpu, timeout=datetime.timedelta(days=7))


def _gather(records: list[dict], state) -> list[dict]:
    if state.num_processes == 1:
        return records
    import torch.distributed as dist

    gathered: list = [None] * state.num_processes
    dist.all_gather_object(gathered, records)
    return [record for part in gathered for record in part]


def batch(args: argparse.Namespace, stop_after: int | None = None) -> int:
    """``dreamdistill batch``: this process's share of the prompts, then (main process) summary.json and index.html.
    Returns 0 when every prompt is done, else 2 (the failures are in the summary)."""
    import os

    import torch

    from dreamdistill.distill.loop import accelerate_on_cpu
    from dreamdistill.lift3d.run import load_teacher

    lines = read_prompts(args.prompts)
    out = Path(args.out)
    base = config_from_args(argparse.Namespace(**{**vars(args), "prompt": lines[0].prompt}))
    check_config(base)
    if args.threads:
        torch.set_num_threads(args.threads)
    state = _process_group(cpu=accelerate_on_cpu(base.device or "auto"))
    rank, world = state.process_index, state.num_processes
    if world > 1 and base.device is None:
        base = dataclasses.replace(base, device=str(state.device))  # one GPU per process
    mine = share(lines, rank, world)
    if state.is_main_process and world > len(lines):
        print(f"{world} processes for {len(lines)} prompts: processes {len(lines)}-{world - 1} have none and wait "
              "for the others", file=sys.stderr)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    if mine:
        teacher = functools.cache(lambda: load_teacher(base))  # at most once per process, for all its prompts
        print(f"process {rank} of {world}: {len(mine)} of {len(lines)} prompts -> {out}", file=sys.stderr)
        for line in mine:
            record = run_prompt(line, base, teacher, out, progress_bar=state.is_main_process, stop_after=stop_after)
            record["rank"] = rank
            records.append(record)
            what = record["status"] if record["status"] != "done" else f"done ({record['action']})"
            detail = f": {record['error']}" if record["error"] else ""
            print(f"line {line.number} {line.prompt!r}: {what}{detail}", file=sys.stderr, flush=True)
    records = sorted(_gather(records, state), key=lambda record: record["line"])
    failed = [record for record in records if record["status"] == "failed"]
    if state.is_main_process:
        done = sum(record["status"] == "done" for record in records)
        summary = {"prompts_file": os.path.relpath(args.prompts, out), "processes": world, "prompts": len(records),
                   "done": done, "failed": len(failed), "runs": records}
        write_json_atomic(out / SUMMARY_NAME, summary)
        write_text_atomic(out / INDEX_NAME, index_page(summary, out))
        print(f"batch: {summary['done']} of {len(records)} prompts done, {len(failed)} failed; "
              f"{out / INDEX_NAME}", flush=True)
    if failed:
        listed = ", ".join(f"line {record['line']}" for record in failed[:5]) + (" ..." if len(failed) > 5 else "")
        raise DreamDistillError(f"{len(failed)} of {len(records)} prompts failed ({listed}); their errors are in "
                                f"{out / SUMMARY_NAME}, and rerunning the command retries them")
    return 0


def _metric(value) -> str:
    return "–" if value is None else f"{value:.2f}" if isinstance(value, float) else html.escape(str(value))


def _shape_iou(shape) -> float | None:
    """The nearest-real IoU of a run's ``shape`` metric (None without one)."""
    return (shape.get("iou") or {}).get("best") if isinstance(shape, dict) else shape


def index_page(summary: dict, out: Path) -> str:
    """DIR/index.html: one row per prompt (thumbnail, metrics, report link), then the failures; relative links, so
    the folder can be moved or served as it is."""
    rows, failures = [], []
    for record in summary["runs"]:
        folder = html.escape(record["run_dir"])
        prompt = html.escape(record["prompt"])
        if record["status"] == "done":
            metrics = record.get("metrics") or {}
            thumb = (f'<img src="{folder}/{TURNTABLE_NAME}" alt="{prompt}" width="96" height="96">'
                     if (out / record["run_dir"] / TURNTABLE_NAME).is_file() else "")
            report = (f'<a href="{folder}/{REPORT_NAME}">report</a>'
                      if (out / record["run_dir"] / REPORT_NAME).is_file() else f'<a href="{folder}/">folder</a>')
            rows.append(f"<tr><td>{record['line']}</td><td>{thumb}</td><td>{prompt}</td>"
                        f"<td>{_metric(metrics.get('r_precision'))}</td>"
                        f"<td>{_metric(metrics.get('view_consistency'))}</td>"
                        f"<td>{_metric(_shape_iou(metrics.get('shape')))}</td><td>{_metric(metrics.get('steps'))}</td>"
                        f"<td>{_metric(metrics.get('seconds'))}</td><td>{report}</td></tr>")
        else:
            failures.append(f"<tr><td>{record['line']}</td><td>{prompt}</td>"
                            f"<td>{html.escape(record.get('error') or record['status'])}</td></tr>")
    failed = ("<h2>Failures</h2><table><tr><th>line</th><th>prompt</th><th>error</th></tr>"
              + "".join(failures) + "</table>") if failures else ""
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>dreamdistill batch: {summary['done']} of {summary['prompts']} done</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:left}}img{{image-rendering:pixelated}}</style></head>
<body><h1>{summary['done']} of {summary['prompts']} prompts done, {summary['failed']} failed</h1>
<p>{html.escape(summary['prompts_file'])}, {summary['processes']} process(es); rerun the same command to resume.</p>
<table><tr><th>line</th><th></th><th>prompt</th><th>R-precision</th><th>view consistency</th><th>shape IoU</th>
<th>steps</th><th>seconds</th><th></th></tr>
{"".join(rows)}
</table>
{failed}
</body></html>
"""
