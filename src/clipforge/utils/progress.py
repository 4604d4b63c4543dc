"""Progress bars (rich) that degrade to periodic log lines when output is not a terminal."""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

log = logging.getLogger(__name__)


class _Bar:
    def __init__(self, progress: Progress | None, task: int | None, label: str, total: int | None) -> None:
        self.progress, self.task, self.label, self.total = progress, task, label, total
        self.done = 0
        self._last_print = time.monotonic()

    def advance(self, n: int = 1, **fields: object) -> None:
        self.done += n
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, advance=n, **fields)
        elif self.label and time.monotonic() - self._last_print > 30:
            # Not a terminal (CI, a log file): a line every 30 s instead of a bar.
            self._last_print = time.monotonic()
            extra = " ".join(f"{k}={v}" for k, v in fields.items())
            log.info(f"{self.label}: {self.done}/{self.total or '?'} {extra}")

    def update(self, **fields: object) -> None:
        if "total" in fields:
            self.total = fields["total"]  # type: ignore[assignment]
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, **fields)


@contextmanager
def progress_bar(label: str, total: int | None, enabled: bool = True, fields: str = "") -> Iterator[_Bar]:
    """A bar for ``total`` steps; ``fields`` is a rich format string of extra task fields."""
    if not enabled:
        yield _Bar(None, None, "", total)
        return
    if not sys.stderr.isatty():
        yield _Bar(None, None, label, total)
        return
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if fields:
        columns.append(TextColumn(fields))
    columns += [TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn()]
    with Progress(*columns, transient=False) as progress:
        task = progress.add_task(label, total=total)
        yield _Bar(progress, task, label, total)
