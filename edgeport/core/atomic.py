"""Build artifacts in a temporary directory beside the destination and move them into place
only when complete: an interrupted or failed export leaves nothing half-written behind."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError

_STOP = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """A KeyboardInterrupt that remembers its signal, so the CLI can exit 128 + its number
    (130 for Ctrl-C, 143 for SIGTERM) as shells and CI runners expect."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def signal_of(e: KeyboardInterrupt) -> signal.Signals:
    """The signal behind an interrupt (a plain KeyboardInterrupt is Ctrl-C's SIGINT)."""
    return signal.Signals(getattr(e, "signum", signal.SIGINT))


def check_writable(out: Path, force: bool) -> None:
    if out.exists() and not force:
        raise OutputError(f"{out} already exists; pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise OutputError(f"{out} exists and is not a directory")
    parent = out.parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create output directory {parent}: {e.strerror}") from None
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output directory {parent} is not writable")


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()  # signal.signal works only there


def _restore(sig: int, handler) -> None:
    signal.signal(sig, signal.SIG_DFL if handler is None else handler)  # None: not set from Python


# every signal `interrupts` turned into an exception, in order
_received: list[int] = []
# those raised in a C callback, which cannot raise: ctypes prints and drops the exception
_pending: list[int] = []


def raise_pending() -> None:
    """Raise an interrupt a C callback swallowed (llama.cpp calls its log callback while its
    quantizer runs). Called where Python is back in control: when a progress step ends, and
    before `staging` commits."""
    if _pending:
        signum = _pending[0]
        _pending.clear()
        raise Interrupted(signum)


@contextlib.contextmanager
def interrupts() -> Iterator[None]:
    """SIGINT and SIGTERM (CI cancelling, `kill`) raise `Interrupted`, so `finally` cleanup runs
    and the CLI knows which signal it was; one that lands in a C callback is kept for
    `raise_pending`, not printed as a traceback. Each is recorded, and `staging` will not commit
    after one, even where something swallowed the exception. Nests; an ignored signal stays
    ignored."""
    if not _main_thread():
        yield
        return

    def handler(signum, frame):
        _received.append(signum)
        raise Interrupted(signum)

    def unraisable(u, prev=sys.unraisablehook):
        if isinstance(u.exc_value, Interrupted):
            _pending.append(u.exc_value.signum)
        else:
            prev(u)

    old = {s: signal.signal(s, handler) for s in _STOP if signal.getsignal(s) != signal.SIG_IGN}
    old_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        sys.unraisablehook = old_hook
        for s, h in old.items():
            _restore(s, h)


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while a step that must not stop halfway runs (swapping the artifact
    in, removing the staging dir, reaping a tool's processes): an impatient second Ctrl-C would
    otherwise leave half of it behind. A held signal is raised again once the step is done,
    unless the step itself failed. (Handlers, not a signal mask: any thread of the process,
    e.g. one of torch's, may be the one that receives a signal.)"""
    if not _main_thread():
        yield
        return
    held: list[int] = []
    old = {s: signal.signal(s, lambda signum, frame: held.append(signum)) for s in _STOP}
    failed = False
    try:
        yield
    except BaseException:
        failed = True
        raise
    finally:
        for s, h in old.items():
            _restore(s, h)
        if held and not failed:
            signal.raise_signal(held[0])


def umask() -> int:
    m = os.umask(0)
    os.umask(m)
    return m


def normal_permissions(root: Path) -> None:
    """Give a finished tree the user's usual permissions: mkdtemp makes the staging dir 0700
    (and mkstemp files 0600), and a rename keeps them."""
    mask = umask()
    for p in [root, *root.rglob("*")]:
        if p.is_symlink():
            continue
        executable = p.is_dir() or p.stat().st_mode & 0o100
        os.chmod(p, (0o777 if executable else 0o666) & ~mask)


@contextlib.contextmanager
def staging(out: Path, force: bool = False) -> Iterator[Path]:
    """Yield a fresh temp dir; on normal exit it replaces `out`, on any error or interrupt it
    is removed and `out` is left as it was."""
    check_writable(out, force)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    seen = len(_received)
    with interrupts():
        try:
            yield tmp
            raise_pending()
            if len(_received) > seen:  # interrupted, and something swallowed the exception
                raise Interrupted(_received[seen])
            with deferred_signals():  # between the two renames `out` would be missing
                normal_permissions(tmp)
                if out.exists():
                    old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
                    os.replace(out, old / "x")
                    os.replace(tmp, out)
                    shutil.rmtree(old, ignore_errors=True)
                else:
                    os.replace(tmp, out)
        finally:
            if tmp.exists():
                with deferred_signals():
                    shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: Path, mode: str = "w") -> Iterator:
    """A temp file beside `path`, renamed onto it (with the umask's mode) only if the block
    completes: a reader never sees half a file, an interrupted write leaves the old one."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.partial-", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            yield f
        os.chmod(tmp, 0o666 & ~umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: Path, obj) -> Path:
    """Strict JSON (no NaN or Infinity: other parsers reject them), written atomically."""
    import json

    text = json.dumps(obj, indent=2, allow_nan=False) + "\n"  # ValueError before anything is written
    with atomic_file(Path(path)) as f:
        f.write(text)
    return Path(path)
