"""``dreamdistill app``: a local web page (Gradio) for text-to-3D runs.

The page takes a prompt, a teacher (toy, toy-sd, or a folder / hub id typed in), the method, steps, seed and an
"instant" box, and runs exactly the command line it shows (``python -m dreamdistill.cli PROMPT ... --out RUNS``) in
a subprocess, so a run made here is an ordinary run folder ``RUNS/<slug>-<time>/`` (``dreamdistill --resume
RUN_DIR`` continues it) and the CLI's own checks, messages and Ctrl-C / SIGTERM checkpointing apply. While it runs
the page polls the folder: the step and loss from log.jsonl, the newest strip in validation/. When it is done it
shows mesh.glb in a 3D view, the meshes and turntable to download, the metrics and a link to report.html.

Input errors are shown in the page as one line (the CLI's DreamDistillError messages, checked here before the
subprocess starts: :func:`check_job`), never as a traceback. One job runs at a time (the queue), so two tabs
wait for each other instead of sharing two CPU cores. Gradio is an optional dependency:
``pip install "dreamdistill[app]"``.
"""

import os
import re
import shlex
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

from dreamdistill.errors import DreamDistillError
from dreamdistill.fileio import read_jsonl
from dreamdistill.run_files import (
    LOG_NAME,
    MESH_STEM,
    METRICS_NAME,
    REPORT_NAME,
    TURNTABLE_NAME,
    VALIDATION_FOLDER,
    VALIDATION_PATTERN,
)

DEFAULT_PORT = 7860
TEACHERS = ("toy", "toy-sd")
"""The shipped teachers offered in the list; any folder or cached hub id may be typed in instead."""
INSTANT_TEACHER = "toy"
"""The teacher the shipped instant generator was trained with (its text encoder); --instant runs use it."""
POLL_SECONDS = 1.0
"""How often a running job's folder is read (log.jsonl, validation/)."""
HEARTBEAT_SECONDS = 5.0
"""The status line is refreshed at least this often while nothing new is written (elapsed time)."""
DOWNLOADS = (f"{MESH_STEM}.glb", f"{MESH_STEM}.obj", f"{MESH_STEM}.mtl", f"{MESH_STEM}.ply", TURNTABLE_NAME,
             REPORT_NAME)
"""The files of a finished run offered for download, in this order (those it wrote)."""
ELEMENT_IDS = {"prompt": "prompt", "teacher": "teacher", "instant": "instant", "run": "run-button",
               "stop": "stop-button", "status": "status", "validation": "validation", "model": "model-view",
               "files": "downloads"}
"""The elem_id of each part of the page (the browser test finds them by these)."""


# ---- pure helpers -----------------------------------------------------------------------------------------


@dataclass
class Job:
    """What the form asks for."""

    prompt: str
    teacher: str = "toy"
    method: str = "sds"
    steps: int | None = None
    """None: the preset's."""
    seed: int = 0
    instant: bool = False


@dataclass
class CheckedJob:
    """A job the CLI's checks accept: its ``dreamdistill`` arguments, the number of steps it will run and the
    warnings to show (words outside a toy teacher's vocabulary)."""

    arguments: list[str]
    steps: int
    warnings: list[str] = field(default_factory=list)


@dataclass
class Progress:
    """What a running job's folder shows so far."""

    step: int | None = None
    loss: float | None = None
    validation: Path | None = None


def cli_arguments(job: Job, out: Path) -> list[str]:
    """The ``dreamdistill`` arguments of a job (what the page runs and shows), the prompt last after ``--`` (so a
    prompt such as "report" or "-x" stays a prompt). ``--instant`` runs the generator with its own teacher, so the
    teacher is left out; method, steps and seed still go into config.yaml, for ``dreamdistill --resume RUN_DIR``."""
    arguments = ["--guidance", job.method]
    arguments += ["--instant"] if job.instant else ["--teacher", job.teacher.strip()]
    if job.steps is not None:
        arguments += ["--steps", str(job.steps)]
    return arguments + ["--seed", str(job.seed), "--out", str(out), "--", job.prompt]


def command_line(arguments: list[str]) -> str:
    """The arguments as the shell command a person would type."""
    return shlex.join(["dreamdistill", *arguments])


def vocabulary_warning(teacher: str, prompt: str) -> str | None:
    """:meth:`Teacher.vocabulary_warning` for a teacher folder, read from its notes without loading the model."""
    from types import SimpleNamespace

    from dreamdistill.diffusion.teacher import Teacher, TeacherInfo, resolve_teacher_path
    from dreamdistill.lift3d.run import teacher_vocabulary

    vocabulary = teacher_vocabulary(teacher)
    if not vocabulary:
        return None
    info = TeacherInfo(resolve_teacher_path(teacher), "pixel", vocabulary)
    return Teacher.vocabulary_warning(SimpleNamespace(info=info), prompt)


def check_job(job: Job, out: Path) -> CheckedJob:
    """The CLI's own checks of ``dreamdistill PROMPT ...`` (argument parsing, the config's ranges, the teacher's
    folder, the instant generator's categories; an empty prompt or teacher among them), run here so the page
    answers at once; raises DreamDistillError with the CLI's message. Nothing is loaded or written."""
    from dreamdistill.cli import main_parser
    from dreamdistill.config import check_output_path
    from dreamdistill.diffusion.teacher import resolve_teacher_path
    from dreamdistill.lift3d.config import check_config, config_from_args

    arguments = cli_arguments(job, out)
    args = main_parser().parse_args(arguments)
    config = config_from_args(args)
    check_config(config)
    check_output_path(out, "--out", folder=True)
    if job.instant:
        from dreamdistill.instant.generator import category_of

        category_of(job.prompt)
        teacher = INSTANT_TEACHER
    else:
        resolve_teacher_path(config.teacher)
        teacher = config.teacher
    warning = vocabulary_warning(teacher, job.prompt)
    return CheckedJob(arguments, 0 if job.instant else config.steps,
                      [warning.removeprefix("warning: ")] if warning else [])


def slug(prompt: str) -> str:
    from dreamdistill.lift3d.run import slugify

    return slugify(prompt)


def new_run_dir(out: Path, prompt: str, before: set[Path]) -> Path | None:
    """The run folder a job started after ``before`` (the folders of ``out`` then) made for ``prompt``."""
    if not out.is_dir():
        return None
    prefix = slug(prompt) + "-"
    made = [path for path in out.iterdir() if path.is_dir() and path.name.startswith(prefix) and path not in before]
    return max(made, key=lambda path: path.stat().st_mtime) if made else None


def read_progress(run_dir: Path | None) -> Progress:
    """The last logged step and loss, and the newest validation strip, of a run folder (so far)."""
    if run_dir is None:
        return Progress()
    log = read_jsonl(run_dir / LOG_NAME)
    strips = sorted((run_dir / VALIDATION_FOLDER).glob(VALIDATION_PATTERN))
    last = log[-1] if log else {}
    loss = last.get("loss")
    return Progress(last.get("step"), float(loss) if isinstance(loss, (int, float)) else None,
                    strips[-1] if strips else None)


def progress_line(progress: Progress, steps: int, seconds: float, instant: bool) -> str:
    """One line for the page while a job runs."""
    if progress.step is not None:
        loss = f", loss {progress.loss:.4g}" if progress.loss is not None else ""
        return f"step {progress.step + 1} of {steps}{loss} · {seconds:.0f} s"
    what = "the generator's field, turntable and meshes" if instant else "the first steps"
    return f"loading the models, then {what} · {seconds:.0f} s"


def downloads(run_dir: Path) -> list[Path]:
    """The files of a finished run to offer for download (:data:`DOWNLOADS`, those present)."""
    return [run_dir / name for name in DOWNLOADS if (run_dir / name).is_file()]


def file_url(path: Path) -> str:
    """The page's link to a file under one of the app's allowed folders (Gradio's file route)."""
    return "gradio_api/file=" + quote(str(path.resolve()))


def output_lines(text: str, prefix: str) -> list[str]:
    """The lines of a job's output that start with ``prefix`` (``error:``, ``warning:``, ``interrupted:``), without
    it; tqdm's carriage-return updates are split off first."""
    lines = re.split(r"[\r\n]+", text)
    return [line[len(prefix):].strip() for line in lines if line.startswith(prefix)]


def metrics_line(metrics: dict) -> str:
    """The headline numbers of metrics.json (those present)."""
    shape = (metrics.get("shape") or {}).get("iou") or {}
    parts = [(label, value) for label, value in (("R-precision", metrics.get("r_precision")),
                                                ("view consistency", metrics.get("view_consistency")),
                                                ("shape IoU (best)", shape.get("best")))
             if isinstance(value, (int, float))]
    return " · ".join(f"{label} {value:.2f}" for label, value in parts)


def finished_text(run_dir: Path, seconds: float, warnings: list[str]) -> str:
    """The page's summary of a finished run (Markdown): the folder, the metrics, the report link, how to resume."""
    import json

    metrics_path = run_dir / METRICS_NAME
    metrics = json.loads(metrics_path.read_text()) if metrics_path.is_file() else {}
    lines = [f"**done** in {seconds:.0f} s: `{run_dir}`"]
    if metrics_line(metrics):
        lines.append(metrics_line(metrics))
    if (run_dir / REPORT_NAME).is_file():
        lines.append(f'<a href="{file_url(run_dir / REPORT_NAME)}" target="_blank">open {REPORT_NAME}</a>')
    lines.append(f"continue it per prompt: `dreamdistill --resume {shlex.quote(str(run_dir))}`")
    lines += [f"warning: {warning}" for warning in warnings]
    return "\n\n".join(lines)


def failed_text(output: str, exit_code: int, run_dir: Path | None) -> str:
    """The page's one-line account of a job that did not finish (the CLI's own error or interruption line)."""
    for prefix, title in (("error:", "error"), ("interrupted:", "stopped")):
        lines = output_lines(output, prefix)
        if lines:
            return f"**{title}:** {lines[-1]}"
    if exit_code in (-signal.SIGTERM, 128 + signal.SIGTERM):
        return "**stopped** while loading, before the first step" + (f" (`{run_dir}`)" if run_dir else "")
    return (f"**error:** the run stopped with exit code {exit_code} and no message; its output is in the terminal "
            "that runs `dreamdistill app`")


# ---- the job ----------------------------------------------------------------------------------------------


class Jobs:
    """The running subprocess of each browser session (so a Stop button stops its own session's job)."""

    def __init__(self):
        self._lock = threading.Lock()
        self._running: dict[str, subprocess.Popen] = {}

    def start(self, session: str, arguments: list[str], output) -> subprocess.Popen:
        process = subprocess.Popen([sys.executable, "-m", "dreamdistill.cli", *arguments], stdout=output,
                                   stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   env={**os.environ, "PYTHONUNBUFFERED": "1"})
        with self._lock:
            self._running[session] = process
        return process

    def finish(self, session: str) -> None:
        with self._lock:
            self._running.pop(session, None)

    def stop(self, session: str) -> bool:
        """SIGTERM to the session's job: the run saves a checkpoint at the end of its step and exits."""
        with self._lock:
            process = self._running.get(session)
        if process is None or process.poll() is not None:
            return False
        process.terminate()
        return True


def run_job(job: Job, out: Path, jobs: Jobs, session: str) -> Iterator[dict]:
    """Check and run one job, yielding what the page shows as it goes: dicts with ``status`` (Markdown),
    ``validation`` (a PNG path) when it changes, ``warnings`` once, ``error`` (one line) when it fails and, last,
    ``run_dir`` when it finished (the page then shows its mesh and files: :func:`result_files`)."""
    try:
        checked = check_job(job, out)
    except DreamDistillError as error:
        yield {"status": f"**error:** {error}", "error": str(error)}
        return
    command = command_line(checked.arguments)
    yield {"status": f"**starting** `{command}`", "warnings": checked.warnings, "validation": None}
    out.mkdir(parents=True, exist_ok=True)
    before = set(out.iterdir())
    began = time.monotonic()
    shown = Progress()
    last_yield = began
    run_dir = None
    with tempfile.TemporaryFile() as output:
        process = jobs.start(session, checked.arguments, output)
        try:
            while process.poll() is None:
                time.sleep(POLL_SECONDS)
                run_dir = run_dir or new_run_dir(out, job.prompt, before)
                progress = read_progress(run_dir)
                now = time.monotonic()
                if progress != shown or now - last_yield >= HEARTBEAT_SECONDS:
                    update = {"status": f"**running** `{command}`\n\n"
                                        + progress_line(progress, checked.steps, now - began, job.instant)}
                    if progress.validation != shown.validation:
                        update["validation"] = str(progress.validation) if progress.validation else None
                    shown, last_yield = progress, now
                    yield update
        finally:
            if process.poll() is None:  # the page went away: stop the run with a checkpoint
                process.terminate()
                try:
                    process.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    process.kill()
            jobs.finish(session)
        output.seek(0)
        text = output.read().decode("utf-8", "replace")
    run_dir = run_dir or new_run_dir(out, job.prompt, before)
    if process.returncode != 0 or run_dir is None:
        if process.returncode not in (2, 128 + signal.SIGINT, 128 + signal.SIGTERM):
            print(text, file=sys.stderr)  # an unexpected failure: the whole output goes to the app's terminal
        message = failed_text(text, process.returncode, run_dir)
        yield {"status": message, "error": message.split(":**", 1)[-1].strip()}
        return
    strips = read_progress(run_dir).validation
    warnings = [w for w in output_lines(text, "warning:") if w not in checked.warnings]
    yield {"status": finished_text(run_dir, time.monotonic() - began, warnings),
           "validation": str(strips) if strips else None, "run_dir": str(run_dir)}


def result_files(run_dir: str | None) -> tuple[str | None, list[str] | None]:
    """(the mesh for the 3D view: mesh.glb, y-up as glTF wants, the files to download) of a finished run;
    (None, None) for none."""
    if not run_dir:
        return None, None
    glb = Path(run_dir) / f"{MESH_STEM}.glb"
    shown = str(glb) if glb.is_file() else None
    return shown, [str(path) for path in downloads(Path(run_dir))]


# ---- the page ---------------------------------------------------------------------------------------------


def build_app(out: str | Path):
    """The Gradio Blocks of the page; runs go to ``out`` (the CLI's ``--out``, default runs/)."""
    import gradio as gr

    out = Path(out)
    jobs = Jobs()
    ids = ELEMENT_IDS
    # the handlers' ``gr.Request`` annotations are evaluated here (no ``from __future__ import annotations`` in
    # this module): Gradio passes the request to a parameter it can see is one
    with gr.Blocks(title="dreamdistill", analytics_enabled=False) as demo:
        gr.Markdown("# dreamdistill\nText-to-3D by score distillation. Each run is a folder under "
                    f"`{out}/`, the same as `dreamdistill PROMPT` makes.")
        with gr.Row():
            with gr.Column(scale=1):
                prompt = gr.Textbox(label="prompt", placeholder="a red chair", elem_id=ids["prompt"], max_lines=1)
                teacher = gr.Dropdown(list(TEACHERS), value=TEACHERS[0], allow_custom_value=True, label="teacher",
                                      info="toy, toy-sd, or type a teacher folder or a cached hub id",
                                      elem_id=ids["teacher"])
                method = gr.Radio(["sds", "vsd"], value="sds", label="method")
                with gr.Row():
                    steps = gr.Number(value=0, precision=0, label="steps (0: the preset's)")
                    seed = gr.Number(value=0, precision=0, label="seed")
                instant = gr.Checkbox(value=False, label="instant: one forward pass of the shipped generator "
                                      "(toy vocabulary, seconds; method, steps and seed are kept for --resume)",
                                      elem_id=ids["instant"])
                with gr.Row():
                    run = gr.Button("Make 3D", variant="primary", elem_id=ids["run"])
                    stop = gr.Button("Stop (checkpoint)", variant="stop", elem_id=ids["stop"])
                status = gr.Markdown("Type a prompt and press **Make 3D**.", elem_id=ids["status"])
                validation = gr.Image(label="latest validation strip (orbit views)", type="filepath",
                                      interactive=False, elem_id=ids["validation"])
            with gr.Column(scale=1):
                model = gr.Model3D(label="mesh.glb", elem_id=ids["model"], height=420, camera_position=(0, 70, None),
                                   clear_color=(1.0, 1.0, 1.0, 1.0))  # from the front-left, a little above
                files = gr.File(label="downloads", file_count="multiple", interactive=False, elem_id=ids["files"])

        finished = gr.State(None)  # the run folder of this page's last finished run

        def on_run(prompt_, teacher_, method_, steps_, seed_, instant_, request: gr.Request):
            job = Job(prompt_ or "", teacher_ or "", method_ or "sds", int(steps_) if steps_ else None,
                      int(seed_ or 0), bool(instant_))  # out-of-range numbers get the CLI's own message
            components = {"status": status, "validation": validation, "run_dir": finished}
            for update in run_job(job, out, jobs, request.session_hash or "default"):
                for warning in update.get("warnings", []):
                    gr.Warning(warning)
                if "error" in update:
                    gr.Warning(update["error"])
                yield {components[key]: value for key, value in update.items() if key in components}

        def on_stop(request: gr.Request):
            if not jobs.stop(request.session_hash or "default"):
                gr.Info("no run of this page is running")

        def on_instant(instant_: bool):
            return gr.Dropdown(interactive=not instant_)

        # three steps: clear the last result, run (a generator: status and validation strips as they come), then
        # show the mesh and files. The 3D view is set by a plain function: set from the generator, Gradio 6.31's
        # viewer may drop the mesh (a second update of the same value while its renderer is still loading).
        inputs = [prompt, teacher, method, steps, seed, instant]
        for trigger in (run.click, prompt.submit):
            trigger(lambda: (None, None, None), None, [finished, model, files], queue=False) \
                .then(on_run, inputs, [status, validation, finished]) \
                .then(result_files, finished, [model, files],
                      concurrency_limit=None)  # quick: not behind another page's job
        stop.click(on_stop, None, None, concurrency_limit=None)
        instant.change(on_instant, instant, teacher, queue=False)
    demo.queue(default_concurrency_limit=1)
    return demo


def serve(out: str | Path, host: str = "127.0.0.1", port: int = DEFAULT_PORT, block: bool = True):
    """Build the page and serve it; with ``block`` until Ctrl-C. Returns the Blocks (to ``close()`` it)."""
    try:
        import gradio as gr
    except ImportError:
        raise DreamDistillError('the web app needs gradio: pip install "dreamdistill[app]"') from None
    from dreamdistill.config import check_output_path

    check_output_path(Path(out), "--out", folder=True)
    Path(out).mkdir(parents=True, exist_ok=True)
    demo = build_app(out)
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    try:
        demo.launch(server_name=host, server_port=port, allowed_paths=[str(Path(out).resolve())], theme=theme,
                    prevent_thread_lock=not block, quiet=False, ssr_mode=False, inbrowser=False)
    except OSError as error:
        raise DreamDistillError(f"cannot serve on {host}:{port} ({error}); pass another --port") from None
    return demo
