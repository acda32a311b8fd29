"""assets/app-screenshot.png: the ``dreamdistill app`` page after an instant run of "a red chair".

    python scripts/app_screenshot.py [--out assets/app-screenshot.png]

Starts the app on a free port in a temporary working folder (its runs in runs/ there), drives it in headless
Chromium as a person would (type the prompt, tick instant, press Make 3D), waits for the mesh in the 3D view and
saves a screenshot of the page as a palette PNG (small enough to ship). Needs gradio, websockets and Chromium, as
tests/test_app.py does (whose Chromium helper, tests/browser.py, it uses).
"""

from __future__ import annotations

import argparse
import base64
import io
import os
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from browser import chromium_page  # noqa: E402

from dreamdistill.app import ELEMENT_IDS  # noqa: E402


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until(tools, expression: str, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not tools.evaluate(f"Boolean({expression})"):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{expression} stayed false for {seconds:.0f} s")
        time.sleep(0.25)


def screenshot(folder: Path, runs: str, width: int, height: int, prompt: str) -> bytes:
    port = free_port()
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen([sys.executable, "-m", "dreamdistill.cli", "app", "--port", str(port), "--out", runs],
                               stdin=subprocess.DEVNULL, env=env, cwd=folder)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                with urllib.request.urlopen(url, timeout=5):
                    break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("the app did not start") from None
                time.sleep(0.5)
        ids = ELEMENT_IDS
        with chromium_page(width, height, timeout=60) as tools:
            tools.call("Page.navigate", url=url)
            wait_until(tools, f'document.getElementById("{ids["run"]}")', 60)
            box = f'document.querySelector("#{ids["prompt"]} textarea, #{ids["prompt"]} input")'
            tools.evaluate(f"{box}.focus()")
            tools.call("Input.insertText", text=prompt)
            tools.evaluate(f'document.querySelector("#{ids["instant"]} input[type=checkbox]").click()')
            tools.evaluate(f'document.getElementById("{ids["run"]}").click()')
            wait_until(tools, f'document.getElementById("{ids["status"]}").innerText.includes("done")', 300)
            wait_until(tools, f'document.querySelector("#{ids["model"]} canvas")', 60)
            time.sleep(3)  # the viewer loads the GLB and draws
            return base64.b64decode(tools.call("Page.captureScreenshot", format="png")["data"])
    finally:
        process.terminate()
        process.wait(timeout=30)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=str(ROOT / "assets" / "app-screenshot.png"))
    parser.add_argument("--runs", default="runs", help="the app's --out, in a temporary working folder (default: runs)")
    parser.add_argument("--prompt", default="a red chair")
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=1100)
    args = parser.parse_args()
    from PIL import Image

    with tempfile.TemporaryDirectory(prefix="app-screenshot-") as folder:
        png = screenshot(Path(folder), args.runs, args.width, args.height, args.prompt)
    picture = Image.open(io.BytesIO(png)).convert("RGB").quantize(colors=128, method=Image.Quantize.MEDIANCUT)
    picture.save(args.out, optimize=True)
    print(f"wrote {args.out} ({Path(args.out).stat().st_size / 1024:.0f} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
