"""User-facing errors: the CLI prints these as one line and exits non-zero."""


class DreamDistillError(Exception):
    """A problem with the user's input or environment, with the fix in its message."""
