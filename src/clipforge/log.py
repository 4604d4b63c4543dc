"""Logging for the library: every module logs to ``logging.getLogger(__name__)`` (under "clipforge").

The "clipforge" logger gets one handler of its own on first import, as transformers does, so a
user calling the library from Python sees warnings (skipped samples, evaluation lines) without
configuring logging; ``set_verbosity`` changes the level and ``logging`` users can remove the
handler (:data:`HANDLER`) and let records propagate to their own.
"""

from __future__ import annotations

import logging
import sys


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at emit time (pytest's capture, a redirect)."""

    def __init__(self) -> None:
        super().__init__()

    @property  # type: ignore[override]
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it
        pass


class _Format(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno >= logging.WARNING:
            return f"{record.levelname.lower()}: {message}"
        return message


HANDLER = _StderrHandler()
HANDLER.setFormatter(_Format())
_root = logging.getLogger("clipforge")
if not _root.handlers:
    _root.addHandler(HANDLER)
    _root.setLevel(logging.INFO)
    _root.propagate = False


def set_verbosity(level: int | str) -> None:
    """The level of clipforge's messages (``logging.WARNING`` to keep only warnings)."""
    _root.setLevel(level)
