"""Open a page in headless Chromium and talk to it over the DevTools protocol (the report's and the app's browser
tests).

Chromium (Debian's ``chromium`` package) starts with ``--remote-debugging-port=0``, writes the port it chose into
``DevToolsActivePort`` in its profile folder, and lists its page at ``/json/list``; one websocket (the
``websockets`` package's sync client) then drives the page: navigate, wait until an element says it is drawn,
read an element's box, take a screenshot, and collect every console error, uncaught exception and request that
leaves the machine. :func:`chromium_page` hands over that connection itself, to drive a page step by step
(the app's test types, clicks and waits).
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

LOCAL_SCHEMES = ("file:", "data:", "blob:", "about:", "chrome-error:", "devtools:")


def find_chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        path = shutil.which(name)
        if path:
            return path
    return None


@dataclass
class PageVisit:
    """What a visit saw: the screenshot (PNG), the box (CSS px) and text of the watched element, whether it said
    it was drawn, console errors and exceptions, and requests to the network."""

    screenshot: bytes
    box: dict
    text: str
    rendered: bool
    errors: list[str] = field(default_factory=list)
    remote_requests: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)


class DevTools:
    """One websocket to one page target; ``call`` sends a command and returns its result, keeping the events."""

    def __init__(self, socket, timeout: float):
        self.socket = socket
        self.timeout = timeout
        self.events: list[dict] = []
        self.next_id = 0

    def call(self, method: str, **params) -> dict:
        self.next_id += 1
        self.socket.send(json.dumps({"id": self.next_id, "method": method, "params": params}))
        while True:
            message = json.loads(self.socket.recv(timeout=self.timeout))
            if message.get("id") == self.next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                return message.get("result", {})
            self.events.append(message)

    def wait_for_event(self, method: str, deadline: float) -> None:
        while not any(event.get("method") == method for event in self.events):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no {method} before the deadline")
            self.events.append(json.loads(self.socket.recv(timeout=remaining)))

    def evaluate(self, expression: str, await_promise: bool = False):
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=await_promise)
        return result.get("result", {}).get("value")


def _page_socket_url(profile: Path, process: subprocess.Popen, deadline: float) -> str:
    port_file = profile / "DevToolsActivePort"
    while not port_file.is_file() or not port_file.read_text().strip():
        if process.poll() is not None:
            raise RuntimeError(f"chromium exited with status {process.returncode} before opening DevTools")
        if time.monotonic() > deadline:
            raise TimeoutError("chromium did not open its DevTools port")
        time.sleep(0.1)
    port = int(port_file.read_text().splitlines()[0])
    while True:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as response:
            pages = [t for t in json.loads(response.read()) if t.get("type") == "page"]
        if pages:
            return pages[0]["webSocketDebuggerUrl"]
        if time.monotonic() > deadline:
            raise TimeoutError("chromium opened no page")
        time.sleep(0.1)


def _describe(events: list[dict]) -> tuple[list[str], list[str], list[str]]:
    """(errors, remote requests, every console line) from the DevTools events of a visit."""
    errors, remote, console = [], [], []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            errors.append("uncaught: " + (details.get("exception", {}).get("description") or details.get("text", "")))
        elif method == "Runtime.consoleAPICalled":
            text = " ".join(str(a.get("value", a.get("description", ""))) for a in params.get("args", []))
            console.append(f"console.{params.get('type')}: {text}")
            if params.get("type") in ("error", "assert"):
                errors.append(f"console.{params.get('type')}: {text}")
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            console.append(f"log.{entry.get('level')} ({entry.get('source')}): {entry.get('text')}")
            if entry.get("level") == "error":
                errors.append(f"log.error ({entry.get('source')}): {entry.get('text')}")
        elif method == "Network.requestWillBeSent":
            url = params.get("request", {}).get("url", "")
            if not url.startswith(LOCAL_SCHEMES):
                remote.append(url)
    return errors, remote, console


def page_events(tools: DevTools) -> tuple[list[str], list[str], list[str]]:
    """(errors, remote requests, every console line) seen on a :func:`chromium_page` so far."""
    return _describe(tools.events)


def _look(tools: DevTools, url: str, element_id: str, deadline: float) -> PageVisit:
    """Navigate, wait until the element is drawn, then read its box, the screenshot and the events."""
    tools.call("Page.navigate", url=url)
    tools.wait_for_event("Page.loadEventFired", deadline)
    check = f'document.getElementById("{element_id}")?.dataset.rendered === "true"'
    rendered = bool(tools.evaluate(check))
    while not rendered and time.monotonic() < deadline:
        time.sleep(0.2)
        rendered = bool(tools.evaluate(check))
    tools.evaluate("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))", True)
    seen = tools.evaluate(f'(() => {{ const e = document.getElementById("{element_id}"); if (!e) return null; '
                          "const b = e.getBoundingClientRect(); "
                          "return {x: b.x, y: b.y, width: b.width, height: b.height, text: e.innerText}; })()") or {}
    shot = base64.b64decode(tools.call("Page.captureScreenshot", format="png")["data"])
    errors, remote, console = _describe(tools.events)
    return PageVisit(shot, {k: v for k, v in seen.items() if k != "text"}, seen.get("text", ""), rendered, errors,
                     remote, console)


@contextlib.contextmanager
def chromium_page(width: int = 1280, height: int = 1400, timeout: float = 60.0, chromium: str | None = None,
                  flags: tuple[str, ...] = ()) -> Iterator[DevTools]:
    """Headless Chromium with one blank page, driven over DevTools (Runtime, Log, Network and Page enabled);
    the browser is closed on exit."""
    from websockets.sync.client import connect

    chromium = chromium or find_chromium()
    if chromium is None:
        raise RuntimeError("chromium is not installed")
    deadline = time.monotonic() + timeout
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as folder:
        profile = Path(folder)
        with open(profile / "chromium.log", "wb") as log:
            process = subprocess.Popen(
                [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--enable-unsafe-swiftshader",
                 "--no-first-run", "--no-default-browser-check", "--hide-scrollbars", "--mute-audio",
                 f"--window-size={width},{height}", "--remote-debugging-port=0", f"--user-data-dir={profile}",
                 *flags, "about:blank"],
                stdout=subprocess.DEVNULL, stderr=log)
            try:
                socket_url = _page_socket_url(profile, process, deadline)
                with connect(socket_url, max_size=None, open_timeout=timeout) as socket:
                    tools = DevTools(socket, timeout)
                    for domain in ("Runtime", "Log", "Network", "Page"):
                        tools.call(f"{domain}.enable")
                    yield tools
            finally:
                process.terminate()
                try:
                    process.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def visit(url: str, element_id: str, width: int = 1280, height: int = 1400, timeout: float = 60.0,
          chromium: str | None = None, flags: tuple[str, ...] = ()) -> PageVisit:
    """Load ``url`` in headless Chromium, wait until the element ``element_id`` has ``data-rendered="true"`` (or
    the timeout), then two more animation frames, and take a screenshot of the window."""
    deadline = time.monotonic() + timeout
    with chromium_page(width, height, timeout, chromium, flags) as tools:
        return _look(tools, url, element_id, deadline)
