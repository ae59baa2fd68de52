"""Real signals against `invoke export` in a subprocess, sent while a phase is running: during
conversion, during the importance matrix, in the quantize step and during a tool-env exporter (a
process group of its own). Every case: exit 128 + the signal (130 / 143), one line on stderr and no
traceback, the previous artifact at --out intact byte for byte, no `.partial-*` / `.old-*` beside
it, and no process of the tool left running.

No case races the export: the GGUF cases make it wait inside the phase (the test-only pause
point of export/progress.py, EDGEPORT_TEST_PAUSE_AT / EDGEPORT_TEST_PAUSE_FILE) until the signal
comes, the tool cases' fake tool runs for ten minutes, and each case has its own copy of the
previous artifact, so one that went wrong cannot change what the others compare against. A
signal inside a C call (llama.cpp's quantizer, which calls back into Python only to log) is
raised deterministically from that callback in-process
(test_signal_inside_llama_cpps_quantizer_surfaces_when_the_step_ends)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import LLAMA, ROOT

# how the signal is sent: to the invoke process only, or to its whole process group (a terminal's
# Ctrl-C, which also reaches every child that stayed in the group)
HOW = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "ctrl-c": signal.SIGINT}


def _message(sig: signal.Signals) -> str:
    return f"edgeport: interrupted ({sig.name}); nothing half-written was left behind"


def _tree(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(d.rglob("*"))}


def _until(cond, timeout: float, what: str):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if r := cond():
            return r
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")


def _live(pid: int) -> bool:
    """Running, not a zombie (an orphan's zombie waits for init, which may never reap it)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def _live_with(text: str, but: int) -> list[str]:
    """Live processes (other than `but`) whose command line contains `text`."""
    found = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit() or int(p.name) in (but, os.getpid()):
            continue
        try:
            cmd = (p / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmd and _live(int(p.name)):
            found.append(f"{p.name}: {cmd[:300]}")
    return found


class Export:
    """`invoke export ...` in its own session (so the test can Ctrl-C its process group),
    stderr read line by line as it comes."""

    def __init__(self, *args: str, env: dict | None = None, pause_at: str | None = None,
                 pause_file: Path | None = None):
        if pause_at is not None:  # export/progress.py's test-only pause point
            env = {**(env or {}), "EDGEPORT_TEST_PAUSE_AT": pause_at, "EDGEPORT_TEST_PAUSE_FILE": str(pause_file)}
        # an empty importance-matrix cache of its own: every phase (the matrix included) really runs
        self.cache = tempfile.mkdtemp(prefix="edgeport-signals-imatrix-")  # removed by kill()
        env = {**(env or {}), "EDGEPORT_IMATRIX_CACHE": self.cache}
        self.pause_file = pause_file
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "invoke", "export", *args], cwd=ROOT, text=True, start_new_session=True,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})})
        self.args, self.lines = args, []
        self.sent_at = 0
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stderr:
            self.lines.append(line.rstrip("\n"))

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        def seen():
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"export ended (exit {self.proc.returncode}) before /{pattern}/:\n"
                                     + "\n".join(self.lines))
            return any(re.search(pattern, line) for line in self.lines)
        _until(seen, timeout, f"/{pattern}/ on stderr")

    def wait_paused(self, timeout: float = 300) -> str:
        """Until the export waits at its pause point; returns the pause point's label."""
        def paused():
            if self.pause_file.is_file():
                return self.pause_file.read_text().split(" ", 1)[1].strip()
            if self.proc.poll() is not None and not self._reader.is_alive():
                raise AssertionError(f"export ended (exit {self.proc.returncode}) before pausing:\n"
                                     + "\n".join(self.lines))
            return None
        return _until(paused, timeout, f"the export to pause ({self.pause_file})")

    def send(self, how: str) -> None:
        self.sent_at = len(self.lines)
        if how == "ctrl-c":
            os.killpg(self.proc.pid, HOW[how])
        else:
            os.kill(self.proc.pid, HOW[how])

    def finish(self, timeout: float = 120) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(10)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:  # a failed test must not leave it running, nor its staging
            os.killpg(self.proc.pid, signal.SIGKILL)  # dir in the way of the next test
            self.proc.wait()
            out = Path(self.args[self.args.index("--out") + 1])
            for p in out.parent.glob(f".{out.name}.partial-*"):
                shutil.rmtree(p, ignore_errors=True)
        shutil.rmtree(self.cache, ignore_errors=True)


@pytest.fixture
def run():
    started: list[Export] = []

    def start(*args, **kw) -> Export:
        started.append(Export(*args, **kw))
        return started[-1]

    yield start
    for e in started:
        e.kill()


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A finished artifact, exported once; each case gets its own copy (`previous`)."""
    from edgeport.export.pipeline import export

    out = tmp_path_factory.mktemp("prev") / "artifact"
    export(str(LLAMA), "cpu", out, parity=False)
    return out, _tree(out)


@pytest.fixture
def previous(pristine, tmp_path) -> tuple[Path, dict[str, str]]:
    """This case's finished artifact at --out (alone in its directory), which its interrupted
    `--force` re-export must leave as it was."""
    src, tree = pristine
    out = tmp_path / "out" / "artifact"
    shutil.copytree(src, out)
    assert _tree(out) == tree
    return out, tree


def _read(p: Path) -> str:
    try:
        return p.read_text(errors="replace")
    except FileNotFoundError:
        return ""


def _partial(out: Path) -> Path | None:
    found = sorted(out.parent.glob(f".{out.name}.partial-*"))
    return found[0] if found else None


def _check_outcome(e: Export, how: str, previous) -> None:
    out, before = previous
    rc = e.finish()
    sig = HOW[how]
    assert rc == 128 + sig, "\n".join(e.lines)
    assert e.lines[e.sent_at:] == [_message(sig)], "\n".join(e.lines)
    assert not any("Traceback" in line for line in e.lines)
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]  # no .partial-* / .old-*
    assert _tree(out) == before


# phase -> the step line, and the pause point the export waits at (a regex on its label, see
# export/progress.py): inside the phase, with its work under way
GGUF_PHASES = {
    # the F16 GGUF half written: after its first tensor
    "convert": (r"^converting tiny-llama to GGUF F16$", r"^progress: writing tiny-llama-F16\.gguf$"),
    # after the first calibration chunk
    "imatrix": (r"^importance matrix: tiny-llama on calibration\.jsonl", r"^progress: importance matrix: \d+ chunks$"),
    # entering the quantizer's step (a signal inside its C call: the in-process test below)
    "quantize": (r"^quantizing with llama\.cpp to Q4_K_M with the importance matrix$",
                 r"^step: quantizing with llama\.cpp to Q4_K_M"),
}
UNDER_WAY = {"convert": ".work/tiny-llama-F16.gguf", "imatrix": None, "quantize": None}


@pytest.fixture(scope="module")
def short_calibration(tmp_path_factory) -> Path:
    """Three chunks' worth of the shipped calibration text: the quantize phase is reached in
    seconds instead of the time the full set takes."""
    from edgeport.export.imatrix import DEFAULT_CALIBRATION

    texts = [json.loads(line)["text"] for line in DEFAULT_CALIBRATION.read_text().splitlines() if line.strip()]
    p = tmp_path_factory.mktemp("calib") / "short.txt"
    p.write_text("\n\n".join(texts)[:12000])
    return p


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("phase", list(GGUF_PHASES))
def test_gguf_export_interrupted(phase, how, short_calibration, previous, run, tmp_path):
    out = previous[0]
    calibration = ["--calibration", str(short_calibration)] if phase == "quantize" else []
    step, pause_at = GGUF_PHASES[phase]
    e = run("--target", "cpu", "--model", str(LLAMA), "--out", str(out), "--force", "--no-parity", *calibration,
            pause_at=pause_at, pause_file=tmp_path / "paused")
    label = e.wait_paused()
    assert re.search(pause_at, label), label
    e.wait_for(step, 30)  # printed before the pause: the reader thread may still be catching up
    if UNDER_WAY[phase]:
        assert (p := _partial(out)) and (p / UNDER_WAY[phase]).stat().st_size > 0
    e.send(how)
    _check_outcome(e, how, previous)
    later = {"convert": r"^(importance matrix|quantizing)", "imatrix": r"^(importance matrix: \d+ chunks|quantizing)"}
    if phase in later:  # stopped during the phase, not after it
        assert not any(re.search(later[phase], line) for line in e.lines), "\n".join(e.lines)


def test_signal_inside_llama_cpps_quantizer_surfaces_when_the_step_ends(previous, gguf_dir, monkeypatch, capfd):
    """llama.cpp's quantizer is one C call; Python runs during it only in llama.cpp's log
    callback, where an exception cannot propagate (ctypes prints and drops it). A SIGINT landing
    there (raised from that callback on its first line: no race) must still stop the export when
    the step ends, silently, and leave --out as it was."""
    import llama_cpp

    from edgeport.core import atomic, llama_log
    from edgeport.core.progress import step
    from edgeport.export.gguf_quantize import quantize
    from tests.conftest import gguf_of

    f16 = gguf_of(LLAMA, gguf_dir)
    out, before = previous
    fired, returned = [], []
    real_init = llama_log.LlamaLog.__init__

    def init(self):
        real_init(self)

        @llama_cpp.llama_log_callback
        def cb(level, text, user_data):
            self.lines.append(text.decode("utf-8", "replace"))
            if not fired:
                fired.append(text)
                signal.raise_signal(signal.SIGINT)  # its handler raises here, inside the C call

        self.cb = cb

    monkeypatch.setattr(llama_log.LlamaLog, "__init__", init)
    with pytest.raises(KeyboardInterrupt) as e, atomic.staging(out, force=True) as tmp:
        with step("quantizing with llama.cpp to Q4_K_M"):
            quantize(f16, tmp / "q.gguf", "Q4_K_M")
            returned.append(True)  # the C call ran to its end: nothing could stop it
        raise AssertionError("the step ended without raising the interrupt")
    assert fired and returned and atomic.signal_of(e.value) == signal.SIGINT
    assert "Traceback" not in capfd.readouterr().err
    assert sorted(p.name for p in out.parent.iterdir()) == [out.name]
    assert _tree(out) == before


FAKE_TOOL = """#!/bin/bash
# stands in for the tool env's python: a tool that starts a helper (which, started in the
# background by a script, ignores SIGINT) and then works for a long time
{python} -c 'import time; time.sleep(600)' "$@" &
echo "$$ $!" > {pids}
wait
"""


@pytest.fixture
def fake_edgellm_env(tmp_path) -> Iterator[tuple[dict, Path]]:
    """EDGEPORT_TOOLENVS with a finished-looking tensorrt-edgellm env whose python is FAKE_TOOL."""
    from edgeport.core.toolenv import MARKER, TOOLENVS

    env = tmp_path / "toolenvs" / TOOLENVS["tensorrt-edgellm"].key
    (env / "bin").mkdir(parents=True)
    pids = tmp_path / "pids"
    py = env / "bin" / "python"
    py.write_text(FAKE_TOOL.format(python=sys.executable, pids=pids))
    py.chmod(0o755)
    (env / MARKER).write_text(json.dumps({"name": "tensorrt-edgellm", "installed": []}))
    yield {"EDGEPORT_TOOLENVS": str(tmp_path / "toolenvs")}, pids
    for pid in map(int, pids.read_text().split() if pids.is_file() else []):
        if _live(pid):  # a failed test must not leave them running
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("how", list(HOW))
def test_tool_exporter_interrupted(how, fake_edgellm_env, previous, run):
    """The tool and the helper it started are stopped (and the tool reaped) before the staging
    dir goes, whether the signal reached only us or the whole process group."""
    env, pids = fake_edgellm_env
    out = previous[0]
    e = run("--target", "jetson", "--model", str(LLAMA), "--out", str(out), "--force", "--no-parity", env=env)
    e.wait_for(r"^Edge-LLM quantize")
    tool, helper = map(int, _until(lambda: pids.is_file() and pids.read_text().split(), 30, "the fake tool"))
    assert _live(tool) and _live(helper)
    e.send(how)
    _check_outcome(e, how, previous)
    assert not _live(tool) and not _live(helper)
    assert _live_with(str(out.parent), but=e.proc.pid) == []


@pytest.mark.toolenv
@pytest.mark.parametrize("how", ["SIGTERM", "ctrl-c"])
def test_edgellm_quantizer_interrupted(how, previous, run):
    """The real thing: Edge-LLM's quantizer in its tool env (created on first use)."""
    from edgeport.core import toolenv

    toolenv.get("tensorrt-edgellm")  # outside the timed part: creating it takes a minute or two
    out = previous[0]
    e = run("--target", "jetson", "--model", str(LLAMA), "--out", str(out), "--force", "--no-parity")
    e.wait_for(r"^Edge-LLM quantize")
    mine = f"{out.parent}/.{out.name}.partial-"
    _until(lambda: (p := _partial(out)) and "Calibrating" in _read(p / ".work" / "quantize.log"), 120,
           "ModelOpt calibrating (in the quantizer's log)")
    assert _live_with(mine, but=e.proc.pid)
    e.send(how)
    _check_outcome(e, how, previous)
    assert _live_with(mine, but=e.proc.pid) == []


def test_signal_while_the_artifact_is_swapped_in_waits_for_the_swap(tmp_path, monkeypatch):
    """Between the two renames --out does not exist: a Ctrl-C there must not lose both the old
    and the new artifact. It is held until the swap is done, then raised."""
    from edgeport.core import atomic

    out = tmp_path / "artifact"
    out.mkdir()
    (out / "f").write_text("old")
    real = os.replace

    def replace_then_ctrl_c(a, b):
        real(a, b)
        if replace_then_ctrl_c.first:
            replace_then_ctrl_c.first = False
            signal.raise_signal(signal.SIGINT)

    replace_then_ctrl_c.first = True
    monkeypatch.setattr(atomic.os, "replace", replace_then_ctrl_c)
    with pytest.raises(KeyboardInterrupt), atomic.staging(out, force=True) as tmp:
        (tmp / "f").write_text("new")
    assert (out / "f").read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["artifact"]
