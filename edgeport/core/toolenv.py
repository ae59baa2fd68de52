"""Isolated, pinned Python environments for exporters whose pins clash with the project's.

onnxruntime-genai's builder, optimum-onnx (transformers<4.58) and tensorrt-edgellm
(transformers==5.14.1) each want their own transformers; the project's reference runtime
wants a current one. So each such exporter runs in its own venv, created on first use under
`~/.cache/edgeport/toolenvs` (or `$EDGEPORT_TOOLENVS`) and reused after. The directory name
carries a hash of the pins: changing a pin makes a fresh env, never a half-upgraded one.
An env is built in a `.partial` directory and renamed only once its imports check out, so
an interrupted setup leaves nothing that looks usable.

Tool envs are only ever called as `<env>/bin/python -m ...`, which keeps a venv valid after
the rename (console-script shebangs would not be).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import venv
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from .atomic import deferred_signals
from .errors import EdgeportError
from .progress import console, step

MARKER = "edgeport-toolenv.json"


class ToolError(EdgeportError):
    """A tool (or setting up its environment) failed."""


@dataclass(frozen=True)
class ToolEnvSpec:
    name: str
    purpose: str
    requirements: tuple[str, ...]
    check: str  # python code that must run cleanly in a finished env

    @property
    def key(self) -> str:
        h = hashlib.sha256("\n".join([sys.version.split()[0], *self.requirements]).encode()).hexdigest()
        return f"{self.name}-{h[:10]}"


# torch is pinned to the CPU wheel the project uses everywhere (a bare `torch` could pull a
# multi-GB CUDA build); everything else to the versions these exporters were checked with.
TOOLENVS: dict[str, ToolEnvSpec] = {
    "onnxruntime-genai": ToolEnvSpec(
        "onnxruntime-genai",
        "onnxruntime-genai's model builder (GQA + MatMulNBits/QMoE graphs for CPU and CUDA)",
        ("onnxruntime-genai==0.18.0", "onnxruntime==1.32.0", "onnx==1.23.2", "onnx-ir==1.1.0",
         "torch==2.13.0", "transformers==5.24.0", "accelerate==1.15.0", "safetensors==0.8.0",
         "numpy==2.4.6"),
        "import onnxruntime_genai.models.builder, torch, transformers, onnx_ir, accelerate",
    ),
    "optimum-onnx": ToolEnvSpec(
        "optimum-onnx",
        "optimum-onnx's exporter (standard-op graphs with KV cache, for the TensorRT EP)",
        ("optimum-onnx==0.1.0", "transformers==4.57.6", "torch==2.13.0", "onnx==1.23.2",
         "onnxruntime==1.32.0"),
        "import optimum.exporters.onnx, torch, transformers",
    ),
    "tensorrt-edgellm": ToolEnvSpec(
        "tensorrt-edgellm",
        "TensorRT Edge-LLM's quantizer (ModelOpt SmoothQuant / AWQ, on CPU) and ONNX exporter",
        # the [export] extra has no ModelOpt; quantize needs it (and datasets for calibration text)
        ("tensorrt-edgellm[export]==0.11.0", "nvidia-modelopt==0.45.0", "datasets==5.0.0", "tqdm==4.69.0",
         "torch==2.13.0", "transformers==5.14.1"),
        "import tensorrt_edgellm.scripts.export, tensorrt_edgellm.scripts.quantize, modelopt.torch.quantization",
    ),
}


def root() -> Path:
    return Path(os.environ.get("EDGEPORT_TOOLENVS") or Path.home() / ".cache" / "edgeport" / "toolenvs")


class ToolEnv:
    def __init__(self, spec: ToolEnvSpec, base: Path | None = None):
        self.spec = spec
        self.base = base or root()
        self.path = self.base / spec.key
        self.python = self.path / "bin" / "python"

    @property
    def ready(self) -> bool:
        return (self.path / MARKER).is_file() and self.python.exists()

    def ensure(self) -> ToolEnv:
        """Create the env unless a finished one exists (held under a lock: two exports at once
        build it once)."""
        if self.ready:
            return self
        self.base.mkdir(parents=True, exist_ok=True)
        with open(self.base / f".{self.spec.key}.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not self.ready:
                self._create()
        return self

    def _create(self) -> None:
        partial = self.base / f".{self.spec.key}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        console.print(f"setting up the [bold]{self.spec.name}[/bold] tool environment (first use; "
                      f"reused after) in {self.path}", highlight=False)
        try:
            with step(f"{self.spec.name}: creating the venv"):
                venv.EnvBuilder(with_pip=True, clear=True, symlinks=True).create(partial)
            py = partial / "bin" / "python"
            self._pip(py, ["install", "--progress-bar", "off", *self.spec.requirements])
            with step(f"{self.spec.name}: checking its imports"):
                _checked([str(py), "-c", self.spec.check], f"{self.spec.name}: import check failed")
            freeze = subprocess.run([str(py), "-m", "pip", "freeze", "--all"], capture_output=True, text=True,
                                    check=True).stdout.split()
            (partial / MARKER).write_text(json.dumps(
                {"name": self.spec.name, "requirements": list(self.spec.requirements),
                 "python": sys.version.split()[0], "installed": freeze}, indent=2) + "\n")
            shutil.rmtree(self.path, ignore_errors=True)
            partial.rename(self.path)
        except BaseException:
            shutil.rmtree(partial, ignore_errors=True)
            raise

    def _pip(self, py: Path, args: list[str]) -> None:
        cmd = [str(py), "-m", "pip", *args]
        tail: deque[str] = deque(maxlen=30)
        with step(f"{self.spec.name}: pip install ({len(self.spec.requirements)} pinned requirements)"):
            collected = 0
            with _tool_process(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env=_clean_env()) as proc:
                assert proc.stdout is not None
                for line in proc.stdout:
                    line = line.rstrip()
                    tail.append(line)
                    if line.startswith("Collecting"):
                        collected += 1
                        if collected % 10 == 1:
                            console.print(f"  [dim]{self.spec.name}: {line} ({collected} so far)[/dim]",
                                          highlight=False)
                    elif line.startswith("Installing collected packages"):
                        console.print(f"  [dim]{self.spec.name}: installing {collected} packages[/dim]",
                                      highlight=False)
                proc.wait()
            if proc.returncode != 0:
                raise ToolError(f"{self.spec.name}: pip install failed:\n" + "\n".join(tail))

    def installed(self) -> dict:
        return json.loads((self.path / MARKER).read_text()) if self.ready else {}

    def version(self, dist: str) -> str | None:
        for line in self.installed().get("installed", []):
            name, _, ver = line.partition("==")
            if name.lower().replace("_", "-") == dist.lower():
                return ver
        return None

    def run(self, args: Sequence[str], log: Path, what: str, env_extra: dict[str, str] | None = None) -> str:
        """`python ...` in the env, output to `log` (returned); on failure the error shows its tail.
        Interrupted (Ctrl-C, SIGTERM), the tool and everything it started are stopped before the
        interrupt goes on, so nothing still writes into the staging dir being removed."""
        env = _clean_env()
        # never fetch weights or datasets
        env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"})
        env.update(env_extra or {})
        with (step(what), open(log, "w") as f,
              _tool_process([str(self.python), *args], stdout=f, stderr=subprocess.STDOUT, env=env) as proc):
            rc = proc.wait()
        text = log.read_text(errors="replace")
        if rc != 0:
            tail = "\n".join(text.splitlines()[-15:])
            raise ToolError(f"{what} failed (exit {rc}); last lines of {log.name}:\n{tail}")
        return text


@contextlib.contextmanager
def _tool_process(cmd: list[str], grace: float = 5.0, **kw) -> Iterator[subprocess.Popen]:
    """Start a tool in its own process group. On any exception (an interrupt above all) the
    group gets SIGTERM, then SIGKILL after `grace` seconds, and the tool is reaped, before the
    exception goes on: nothing may still write into the staging dir being removed.
    (subprocess.run only SIGKILLs the direct child, without waiting: its children live on.)
    In its own group a terminal's Ctrl-C reaches only us; this passes it on."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, process_group=0, **kw)
    try:
        yield proc
    except BaseException:
        with deferred_signals():
            _killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(grace)
            except subprocess.TimeoutExpired:
                pass
            _killpg(proc.pid, signal.SIGKILL)  # what ignored SIGTERM, and the tool's children
            proc.wait()
        raise


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the group is gone already
        os.killpg(pgid, sig)


def _clean_env() -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    env["PYTHONNOUSERSITE"] = "1"
    return env


def _checked(cmd: list[str], msg: str) -> None:
    r = subprocess.run(cmd, capture_output=True, text=True, env=_clean_env())
    if r.returncode != 0:
        raise ToolError(f"{msg}:\n{r.stderr[-2000:]}")


def get(name: str) -> ToolEnv:
    if name not in TOOLENVS:
        raise ToolError(f"unknown tool environment {name!r}; known: {', '.join(TOOLENVS)}")
    return ToolEnv(TOOLENVS[name]).ensure()


def listing() -> list[dict]:
    out = []
    for spec in TOOLENVS.values():
        env = ToolEnv(spec)
        out.append({"name": spec.name, "path": str(env.path), "ready": env.ready, "purpose": spec.purpose})
    return out


def clear(name: str | None = None) -> list[Path]:
    """Remove one tool env (every pinned version of it) or all of them."""
    base = root()
    if not base.is_dir():
        return []
    gone = []
    for p in sorted(base.iterdir()):
        stem = p.name.lstrip(".")
        if name is None or stem.startswith(f"{name}-"):
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
            gone.append(p)
    return gone
