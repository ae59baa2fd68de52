"""Progress for long steps (rich), silent when output is not a terminal or disabled."""

from __future__ import annotations

import sys
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from .atomic import raise_pending

console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


class _Task:
    def __init__(self, bar: RichProgress | None, tid):
        self.bar, self.tid = bar, tid

    def advance(self, n: int) -> None:
        if self.bar is not None:
            self.bar.advance(self.tid, n)


class Progress:
    """A thin wrapper so pipeline code says `task.advance(bytes)` and never checks for a tty."""

    def __init__(self, enabled: bool | None = None):
        self.enabled = sys.stderr.isatty() if enabled is None else enabled
        self.bar = (RichProgress(TextColumn("{task.description}"), BarColumn(), DownloadColumn(),
                                 TimeRemainingColumn(), console=console, transient=True)
                    if self.enabled else None)

    def __enter__(self):
        if self.bar:
            self.bar.start()
        return self

    def __exit__(self, *exc):
        if self.bar:
            self.bar.stop()

    def task(self, description: str, total: int) -> _Task:
        return _Task(self.bar, self.bar.add_task(description, total=total) if self.bar else None)


@contextmanager
def step(message: str):
    """One line per pipeline step, with a spinner while it runs on a terminal. A Ctrl-C that
    landed in a C call during the step (llama.cpp's quantizer) surfaces when the step ends."""
    if sys.stderr.isatty():
        with console.status(message):
            yield
    else:
        console.print(message, highlight=False)
        yield
    raise_pending()
    console.print(f"[green]✓[/green] {message}", highlight=False) if sys.stderr.isatty() else None
