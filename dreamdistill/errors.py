"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class DreamDistillError(Exception):
    """A problem with the user's input or environment, with the fix in its message."""


class Interrupted(DreamDistillError):
    """Stopped by SIGINT / SIGTERM after saving what is needed to continue; exits with 128 + the signal number
    (130 for Ctrl-C, 143 for SIGTERM)."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum
