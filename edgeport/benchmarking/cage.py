"""A memory cgroup that holds a benchmark step to a smaller machine's memory: the proof that a
command runs on a 16 GB machine is that it runs with 16 GiB and no more. The limit counts what
the kernel charges the group (anonymous memory and the page cache of the files it reads and
writes, memory-mapped weights among them), as a machine of that size would hold it; no swap.

cgroup v1 (memory.limit_in_bytes, memory.max_usage_in_bytes, memory.oom_control's oom_kill: the
machine the scale benchmark ran on) or v2 (memory.max, memory.peak, memory.events' oom_kill: written
to the kernel's documented interface, not yet run); it needs a writable hierarchy (root in a
container that has one, or a delegated subtree)."""

from __future__ import annotations

import os
from pathlib import Path

V2 = Path("/sys/fs/cgroup")
V1 = Path("/sys/fs/cgroup/memory")


class CageUnavailable(RuntimeError):
    pass


class MemoryCage:
    def __init__(self, limit_bytes: int, name: str):
        """One cage per measured command (its peak is that command's)."""
        self.limit = limit_bytes
        if "memory" in _read(V2 / "cgroup.controllers").split():
            self.v2, self.path = True, V2 / name
        elif (V1 / "memory.limit_in_bytes").is_file():
            self.v2, self.path = False, V1 / name
        else:
            raise CageUnavailable("no memory cgroup controller here")
        try:
            self.path.mkdir(exist_ok=True)
            if self.v2:
                (self.path / "memory.max").write_text(str(limit_bytes))
                (self.path / "memory.swap.max").write_text("0")
            else:
                (self.path / "memory.limit_in_bytes").write_text(str(limit_bytes))
        except OSError as e:
            raise CageUnavailable(f"cannot make a memory cgroup at {self.path}: {e}") from None

    def enter(self) -> None:
        """Move the calling process into the cage (a child's preexec_fn: its children follow)."""
        (self.path / "cgroup.procs").write_text(str(os.getpid()))

    def report(self) -> dict:
        """The group's peak charge and whether the kernel had to kill in it."""
        if self.v2:
            peak = int(_read(self.path / "memory.peak") or 0)
            events = dict(line.split() for line in _read(self.path / "memory.events").splitlines())
            kills = int(events.get("oom_kill", 0))
        else:
            peak = int(_read(self.path / "memory.max_usage_in_bytes") or 0)
            ctl = dict(line.split() for line in _read(self.path / "memory.oom_control").splitlines())
            kills = int(ctl.get("oom_kill", 0))
        return {"limit_bytes": self.limit, "peak_charged_bytes": peak, "oom_kills": kills}

    def close(self) -> None:
        try:
            self.path.rmdir()
        except OSError:
            pass


def _read(p: Path) -> str:
    try:
        return p.read_text()
    except OSError:
        return ""
