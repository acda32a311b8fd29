"""dreamdistill app: its pure helpers, and the page in a real browser (headless Chromium): an instant run ends with the
mesh drawn in the 3D view and its files offered, and bad prompts get their message in the page."""

import base64
import io
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from dreamdistill import cli
from dreamdistill.app import (
    ELEMENT_IDS,
    Job,
    Jobs,
    Progress,
    check_job,
    cli_arguments,
    command_line,
    failed_text,
    file_url,
    new_run_dir,
    output_lines,
    progress_line,
    read_progress,
    run_job,
)
from dreamdistill.cli import main_parser
from dreamdistill.errors import DreamDistillError

# ---- pure helpers ---------------------------------------------------------------------------------------------


def test_the_page_runs_the_cli_command_it_shows(tmp_path):
    job = Job("a red chair", teacher="toy-sd", method="vsd", steps=300, seed=3)
    arguments = cli_arguments(job, tmp_path)
    args = main_parser().parse_args(arguments)
    assert (args.prompt, args.teacher, args.guidance, args.steps, args.seed, args.out, args.instant) == \
        ("a red chair", "toy-sd", "vsd", 300, 3, str(tmp_path), False)
    instant = main_parser().parse_args(cli_arguments(Job("a red chair", teacher="toy-sd", instant=True), tmp_path))
    assert instant.instant and instant.teacher is None and instant.steps is None  # the generator's own teacher
    assert command_line(arguments) == \
        f"dreamdistill --guidance vsd --teacher toy-sd --steps 300 --seed 3 --out {tmp_path} -- 'a red chair'"
    assert main_parser().parse_args(cli_arguments(Job("report"), tmp_path)).prompt == "report"  # not a subcommand


@pytest.mark.parametrize("job,message", [
    (Job("   "), "empty prompt"),
    (Job("a red chair", teacher=" "), "empty teacher name"),
    (Job("a red chair", teacher="no/such-teacher-here"), "teacher 'no/such-teacher-here' not found"),
    (Job("a red chair", steps=0), "steps"),
    (Job("a dragon", instant=True), "names no toy-world category"),
])
def test_bad_jobs_get_the_clis_message(job, message, tmp_path):
    with pytest.raises(DreamDistillError, match=message):
        check_job(job, tmp_path)


def test_a_bad_job_is_one_message_and_starts_nothing(tmp_path):
    updates = list(run_job(Job("a dragon", instant=True), tmp_path / "runs", Jobs(), "session"))
    assert len(updates) == 1 and updates[0]["status"].startswith("**error:** 'a dragon' names no toy-world category")
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv,message", [
    (["app", "--port", "0"], "--port 0: choose a port between 1 and 65535"),
    (["app", "--port", "7"], 'the web app needs gradio: pip install "dreamdistill[app]"'),
])
def test_app_command_errors_are_one_line(argv, message, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # as where the app extra is not installed
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: {message}"]


def test_words_outside_the_toy_vocabulary_are_a_warning(tmp_path):
    assert check_job(Job("a red chair"), tmp_path).warnings == []
    checked = check_job(Job("a dragon"), tmp_path)  # the CLI warns and runs: so does the page
    assert checked.steps > 0 and len(checked.warnings) == 1 and "unknown: dragon" in checked.warnings[0]


def test_progress_is_read_from_the_run_folder(tmp_path):
    out = tmp_path / "runs"
    (out / "a-red-chair-20260101-000000").mkdir(parents=True)
    before = set(out.iterdir())
    assert new_run_dir(out, "a red chair", before) is None
    run_dir = out / "a-red-chair-20260101-000001"
    (run_dir / "validation").mkdir(parents=True)
    (out / "a-blue-mug-20260101-000001").mkdir()
    assert new_run_dir(out, "A red chair!", before) == run_dir
    assert read_progress(run_dir) == Progress()
    (run_dir / "log.jsonl").write_text(json.dumps({"step": 0, "loss": 2.0}) + "\n"
                                       + json.dumps({"step": 1, "loss": 1.5}) + "\n{\"step\": 2, \"lo")
    for step in (0, 10):
        (run_dir / "validation" / f"step-{step:06d}.png").write_bytes(b"")
    progress = read_progress(run_dir)
    assert progress == Progress(1, 1.5, run_dir / "validation" / "step-000010.png")
    assert progress_line(progress, 800, 12.3, False) == "step 2 of 800, loss 1.5 · 12 s"


def test_the_clis_error_and_interruption_lines_become_the_message():
    output = "note: x\r  5%|#  | 40/800\rwarning: w\nerror: --steps 0 is below 1\n"
    assert output_lines(output, "warning:") == ["w"]
    assert failed_text(output, 2, None) == "**error:** --steps 0 is below 1"
    stopped = "interrupted: stopped at step 40 of 800, checkpoint saved; continue with: dreamdistill --resume r\n"
    assert failed_text(stopped, 143, Path("r")).startswith("**stopped:** stopped at step 40")
    assert "exit code 1" in failed_text("Traceback ...", 1, None)
    assert file_url(Path("/tmp/a b/report.html")) == "gradio_api/file=/tmp/a%20b/report.html"


# ---- the page in a browser ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def app_server(tmp_path_factory):
    """``dreamdistill app`` on a free port in a subprocess, as a person starts it (stopped after the tests)."""
    pytest.importorskip("gradio", reason='the app needs gradio (pip install "dreamdistill[app]")')
    pytest.importorskip("websockets", reason="the browser test talks to Chromium with the websockets package")
    from browser import find_chromium

    if find_chromium() is None:
        pytest.skip("chromium is not installed (apt-get install -y chromium; .ci/run does this)")
    folder = tmp_path_factory.mktemp("app")
    out, port = folder / "runs", free_port()
    # one torch thread: on 2 busy cores the instant run takes seconds instead of tens of seconds
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    log = open(folder / "app.log", "wb")
    process = subprocess.Popen([sys.executable, "-m", "dreamdistill.cli", "app", "--port", str(port), "--out",
                                str(out)], stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env,
                               cwd=folder)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 240  # importing gradio takes a while on a busy 2-core machine
    try:
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"the app did not start: {(folder / 'app.log').read_text()}") from None
                time.sleep(0.5)
        yield url, out, folder / "app.log"
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


def wait_until(tools, expression: str, seconds: float, what: str, log: Path | None = None):
    """Poll a JavaScript expression in the page until it is truthy (an element counts)."""
    deadline = time.monotonic() + seconds
    while True:
        if tools.evaluate(f"Boolean({expression})"):
            return
        if time.monotonic() > deadline:
            status = tools.evaluate(f'document.getElementById("{ELEMENT_IDS["status"]}")?.innerText')
            server = log.read_text()[-3000:] if log else ""
            raise AssertionError(f"no {what} after {seconds:.0f} s; the status says {status!r}\n{server}")
        time.sleep(0.25)


def set_prompt(tools, text: str) -> None:
    """Clear the prompt box and type ``text`` into it (key input, as a person types)."""
    box = f'document.querySelector("#{ELEMENT_IDS["prompt"]} textarea, #{ELEMENT_IDS["prompt"]} input")'
    tools.evaluate(f"(() => {{ const e = {box}; e.focus(); e.value = ''; "
                   "e.dispatchEvent(new Event('input', {bubbles: true})); })()")
    if text:
        tools.call("Input.insertText", text=text)
    assert tools.evaluate(f"{box}.value") == text


def click(tools, selector: str) -> None:
    tools.evaluate(f'document.querySelector("{selector}").click()')


def status_text(tools) -> str:
    return tools.evaluate(f'document.getElementById("{ELEMENT_IDS["status"]}").innerText') or ""


def test_an_instant_run_in_the_browser_then_bad_prompts(app_server, tmp_path):
    """Type a prompt, tick instant, press the button: the status ends with done, the 3D view's canvas is drawn
    (not one colour), the downloads list the meshes and turntable, the report link is served; then a prompt
    outside the generator's categories and an empty prompt each show their one-line message in the page. No
    uncaught exception, and nothing requested from outside the app."""
    from browser import chromium_page, page_events
    from PIL import Image

    url, out, log = app_server
    ids = ELEMENT_IDS
    with chromium_page(1280, 1100, timeout=60) as tools:
        tools.call("Page.navigate", url=url)
        wait_until(tools, f'document.getElementById("{ids["run"]}")', 30, "page")
        set_prompt(tools, "a red chair")
        click(tools, f"#{ids['instant']} input[type=checkbox]")
        assert tools.evaluate(f'document.querySelector("#{ids["instant"]} input").checked')
        click(tools, f"#{ids['run']}")
        wait_until(tools, f'document.getElementById("{ids["status"]}").innerText.includes("done")', 120,
                   "finished run", log)
        canvas = f'document.querySelector("#{ids["model"]} canvas")'
        wait_until(tools, canvas, 60, "3D view")
        box = tools.evaluate(f"(() => {{ const b = {canvas}.getBoundingClientRect(); "
                             "return {x: b.x, y: b.y, width: b.width, height: b.height}; })()")
        assert box["width"] > 200 and box["height"] > 200, box
        deadline = time.monotonic() + 30
        while True:  # the viewer fetches the GLB, then draws: read the canvas's pixels back until it has
            png = base64.b64decode(tools.call("Page.captureScreenshot", format="png", clip={**box, "scale": 1})["data"])
            picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)
            drawn = (np.abs(picture - picture[2, 2]).max(axis=-1) > 24).mean()  # differs from the corner's colour
            if drawn > 0.01 or time.monotonic() > deadline:
                break
            time.sleep(1)
        (tmp_path / "model-view.png").write_bytes(png)  # to look at when it fails
        assert drawn > 0.01, f"the 3D view is blank ({drawn:.2%} of it differs from its corner)"

        status = status_text(tools)
        run_dirs = [path for path in out.iterdir() if path.is_dir()]
        assert len(run_dirs) == 1 and run_dirs[0].name.startswith("a-red-chair-") and str(run_dirs[0]) in status
        assert (run_dirs[0] / "config.yaml").is_file() and (run_dirs[0] / "checkpoint.pt").is_file()  # resumable
        assert "R-precision" in status and "dreamdistill --resume" in status
        listed = tools.evaluate(f'document.getElementById("{ids["files"]}").innerText.replace(/\\s+/g, "")')
        for name in ("mesh.glb", "mesh.obj", "mesh.ply", "turntable.gif", "report.html"):
            assert name in listed, listed
        link = tools.evaluate(f'document.querySelector("#{ids["status"]} a[href*=\\"report.html\\"]").href')
        with urllib.request.urlopen(link, timeout=10) as response:
            assert response.headers.get_content_type() == "text/html" and b"Plotly.newPlot(" in response.read()

        for prompt, message in (("a dragon", "names no toy-world category"), ("", "empty prompt")):
            set_prompt(tools, prompt)
            click(tools, f"#{ids['run']}")
            wait_until(tools, f'document.getElementById("{ids["status"]}").innerText.includes({message!r})', 60,
                       f"message for {prompt!r}", log)
            assert "Traceback" not in status_text(tools)
        assert len([path for path in out.iterdir() if path.is_dir()]) == 1  # bad prompts write nothing
        errors, remote, _ = page_events(tools)
        assert [error for error in errors if error.startswith("uncaught")] == []
        assert [request for request in remote if not request.startswith(url)] == []  # works offline (no web fonts)
