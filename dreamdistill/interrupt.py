"""Ctrl-C and SIGTERM during a training loop: finish the current step, save, then stop with a clear line."""

from __future__ import annotations

import signal
import threading


class StopRequest:
    """While active, SIGINT / SIGTERM only set :attr:`signum`, so a loop can checkpoint at the end of the current
    step and stop; a second signal stops at once (KeyboardInterrupt). :meth:`restore` puts the old handlers back.
    Outside the main thread (where handlers cannot be set) it never fires."""

    def __init__(self):
        self.signum: int | None = None
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum, frame):
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> StopRequest:
        return self

    def __exit__(self, *exc) -> None:
        self.restore()
