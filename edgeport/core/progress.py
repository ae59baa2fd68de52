"""Progress for long steps (rich), silent when output is not a terminal or disabled."""

from __future__ import annotations

import os
import sys
import time
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress

from .atomic import raise_pending

console = Console(stderr=True, width=None if sys.stderr.isatty() else 140)


class _Task:
    def __init__(self, bar: RichProgress | None, tid, description: str = ""):
        self.bar, self.tid, self.description = bar, tid, description

    def advance(self, n: int) -> None:
        pause_point(f"progress: {self.description}")
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
        return _Task(self.bar, self.bar.add_task(description, total=total) if self.bar else None, description)


# --- test-only pause points ------------------------------------------------------------------
# EDGEPORT_TEST_PAUSE_AT=<regex> makes the first pause point whose label matches it (re.search)
# create EDGEPORT_TEST_PAUSE_FILE (holding the pid and the label) and then wait there until a
# signal ends the process, so a test can send SIGINT/SIGTERM while an export is *inside* a phase
# without racing it (tests/test_signals.py). Labels: "step: <the step's line>" on entering a
# step, "progress: <task description>" on each progress advance (bytes written, imatrix chunks).
# For tests only; unset (always, outside tests) it costs one dict lookup per step or advance.
PAUSE_AT, PAUSE_FILE, PAUSE_LIMIT = "EDGEPORT_TEST_PAUSE_AT", "EDGEPORT_TEST_PAUSE_FILE", 600.0
_paused: list[str] = []


def pause_point(label: str) -> None:
    pattern = os.environ.get(PAUSE_AT)
    if pattern is None or _paused:
        return
    import re

    if not re.search(pattern, label):
        return
    _paused.append(label)  # once per process
    if path := os.environ.get(PAUSE_FILE):
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write(f"{os.getpid()} {label}\n")
        os.replace(tmp, path)  # the test sees it whole or not at all
    end = time.monotonic() + PAUSE_LIMIT
    while time.monotonic() < end:  # a signal's handler raises out of sleep()
        time.sleep(0.05)
    raise RuntimeError(f"{PAUSE_AT}: paused at {label!r} for {PAUSE_LIMIT:.0f} s and no signal came")


@contextmanager
def step(message: str):
    """One line per pipeline step, with a spinner while it runs on a terminal. A Ctrl-C that
    landed in a C call during the step (llama.cpp's quantizer) surfaces when the step ends."""
    if sys.stderr.isatty():
        with console.status(message):
            pause_point(f"step: {message}")
            yield
    else:
        console.print(message, highlight=False)
        pause_point(f"step: {message}")
        yield
    raise_pending()
    console.print(f"[green]✓[/green] {message}", highlight=False) if sys.stderr.isatty() else None
