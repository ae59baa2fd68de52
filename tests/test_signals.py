"""Real signals against `invoke export` in a subprocess, sent while a phase is running: during
conversion, during llama.cpp's quantizer (a C call that calls back into Python to log, where an
exception cannot be raised) and during a tool-env exporter (a process group of its own). Every
case: exit 128 + the signal (130 / 143), one line on stderr and no traceback, the previous
artifact at --out intact byte for byte, no `.partial-*` / `.old-*` beside it, and no process of
the tool left running."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
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

    def __init__(self, *args: str, env: dict | None = None):
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
def big_llama(tmp_path_factory) -> Path:
    """A randomly initialised Llama big enough (~80 M parameters, BF16) that conversion takes
    a few seconds and llama.cpp's Q4_K_M quantization longer on 2 cores (the signal must land
    inside the phase, not after it); the tiny Llama's tokenizer and vocabulary size."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    tiny = json.loads((LLAMA / "config.json").read_text())
    cfg = LlamaConfig(hidden_size=1024, intermediate_size=2816, num_hidden_layers=8, num_attention_heads=16,
                      num_key_value_heads=4, head_dim=64, max_position_embeddings=2048, tie_word_embeddings=False,
                      **{k: tiny[k] for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")})
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("big") / "random-llama"
    with torch.device("meta"):
        model = LlamaForCausalLM(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.02)
    model.save_pretrained(d)
    for f in ("tokenizer.json", "tokenizer_config.json", "generation_config.json", "chat_template.jinja"):
        shutil.copy(LLAMA / f, d / f)
    return d


@pytest.fixture(scope="module")
def previous(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A finished artifact at --out, which every interrupted `--force` re-export must leave as it was."""
    from export.pipeline import export

    out = tmp_path_factory.mktemp("prev") / "artifact"
    export(str(LLAMA), "cpu", out, parity=False)
    return out, _tree(out)


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


GGUF_PHASES = {
    # the step line, then proof the phase is under way: the file it writes in the staging dir, or
    # (the importance matrix, written only at its end) its first progress line
    "convert": (r"^converting random-llama to GGUF F16$", ".work/random-llama-F16.gguf"),
    "imatrix": (r"^importance matrix: random-llama on calibration\.jsonl", r"^  importance matrix: 1/\d+ chunks$"),
    "quantize": (r"^quantizing with llama\.cpp to Q4_K_M with the importance matrix$", "random-llama-Q4_K_M.gguf"),
}


@pytest.fixture(scope="module")
def short_calibration(tmp_path_factory) -> Path:
    """Three chunks' worth of the shipped calibration text: the quantize phase is reached in
    seconds instead of the minutes the full set takes on this model."""
    from export.imatrix import DEFAULT_CALIBRATION

    texts = [json.loads(line)["text"] for line in DEFAULT_CALIBRATION.read_text().splitlines() if line.strip()]
    p = tmp_path_factory.mktemp("calib") / "short.txt"
    p.write_text("\n\n".join(texts)[:12000])
    return p


@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("phase", list(GGUF_PHASES))
def test_gguf_export_interrupted(phase, how, big_llama, short_calibration, previous, run):
    out = previous[0]
    calibration = ["--calibration", str(short_calibration)] if phase == "quantize" else []
    e = run("--target", "cpu", "--model", str(big_llama), "--out", str(out), "--force", "--no-parity", *calibration)
    step, under_way = GGUF_PHASES[phase]
    e.wait_for(step)
    if under_way.startswith("^"):
        e.wait_for(under_way)
    else:
        _until(lambda: (p := _partial(out)) and (p / under_way).is_file() and (p / under_way).stat().st_size > 2**20,
               60, f"{under_way} being written")
    e.send(how)
    _check_outcome(e, how, previous)
    later = {"convert": r"^(importance matrix|quantizing)", "imatrix": r"^(importance matrix: \d+ chunks|quantizing)"}
    if phase in later:  # stopped during the phase, not after it
        assert not any(re.search(later[phase], line) for line in e.lines), "\n".join(e.lines)


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
    from export.toolenv import MARKER, TOOLENVS

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
    from export import toolenv

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
    from export import atomic

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
