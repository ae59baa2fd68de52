"""Shared fixtures: the bundled tiny models, their GGUF conversions and runtimes (built once)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import tempfile
import warnings
from pathlib import Path

import pytest

from edgeport.models import MODELS

# every test run computes its importance matrices and reference results afresh, in caches of its
# own removed when it ends (the user's caches are not the tests')
_OWN_CACHES = []
for _var, _prefix in (("EDGEPORT_IMATRIX_CACHE", "edgeport-test-imatrix-"),
                      ("EDGEPORT_REFERENCE_CACHE", "edgeport-test-reference-")):
    if _var not in os.environ:
        os.environ[_var] = tempfile.mkdtemp(prefix=_prefix)
        _OWN_CACHES.append(os.environ[_var])


def pytest_configure(config):
    """A shell without job control starts a background job with SIGINT ignored, and every child inherits
    that: tests/test_signals.py's Ctrl-C then reaches nothing (8 of its tests failed so, and pass in the
    foreground). The suite runs with Python's own SIGINT handler however it was started; children of a
    handled signal get the default one."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def pytest_sessionfinish(session, exitstatus):
    for d in _OWN_CACHES:
        shutil.rmtree(d, ignore_errors=True)

ROOT = Path(__file__).resolve().parent.parent

GPT_OSS = MODELS / "tiny-gpt-oss"
LLAMA = MODELS / "tiny-llama"


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def unavailable(what: str, why: str):
    """`what` cannot run here: fail in CI (CI=true), where it must run; elsewhere skip, saying why."""
    if in_ci():
        pytest.fail(f"CI=true: {what} must run, but {why}", pytrace=False)
    reason = f"{what} not run ({why}); in CI (CI=true) this fails instead"
    warnings.warn(reason, pytest.PytestWarning, stacklevel=2)
    pytest.skip(reason)


@contextlib.contextmanager
def asgi_server(app, what: str = "the server"):
    """`app` in a real uvicorn on a free loopback port, in a thread of this process: its URL."""
    import threading
    import time

    import uvicorn

    from edgeport.serving.engines import free_port

    port = free_port()
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    t = threading.Thread(target=srv.run, daemon=True)
    t.start()
    deadline = time.monotonic() + 30
    while not srv.started:
        assert time.monotonic() < deadline, f"{what} did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        srv.should_exit = True
        t.join(10)


def _no_constant(c: str):
    raise ValueError(f"not strict JSON: {c}")


@pytest.fixture(scope="session")
def gpt_oss_dir() -> Path:
    return GPT_OSS


@pytest.fixture(scope="session")
def llama_dir() -> Path:
    return LLAMA


@pytest.fixture(scope="session")
def mxfp4_dir(tmp_path_factory) -> Path:
    """The tiny gpt-oss saved the way openai/gpt-oss-20b is (experts MXFP4)."""
    from edgeport.core.source import Source
    from edgeport.export.hf_mxfp4 import write_mxfp4_checkpoint

    out = tmp_path_factory.mktemp("m") / "tiny-gpt-oss-mxfp4"
    write_mxfp4_checkpoint(Source.open(GPT_OSS), out)
    return out


@pytest.fixture(scope="session")
def truncate_true_dir(tmp_path_factory) -> Path:
    """The bundled gpt-oss with rope truncate=true: the YaRN variant llama.cpp implements."""
    d = tmp_path_factory.mktemp("t") / "tiny-gpt-oss-truncate"
    shutil.copytree(GPT_OSS, d)
    cfg = json.loads((d / "config.json").read_text())
    cfg["rope_parameters"]["truncate"] = True
    (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return d


def copy_model(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


_gguf_cache: dict = {}


def gguf_of(model_dir: Path, tmp_root: Path, **kw) -> Path:
    """GGUF conversion of a model dir, cached per (dir, options) for the session."""
    from edgeport.core.architectures import for_config
    from edgeport.core.source import Source
    from edgeport.export.gguf_convert import write_gguf

    key = (str(model_dir), tuple(sorted(kw.items())))
    if key not in _gguf_cache:
        src = Source.open(model_dir)
        out = tmp_root / f"{model_dir.name}-{len(_gguf_cache)}.gguf"
        write_gguf(src, for_config(src.config), out, **kw)
        _gguf_cache[key] = out
    return _gguf_cache[key]


@pytest.fixture(scope="session")
def gguf_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="session")
def exported(tmp_path_factory):
    """`exported(name)` -> (path, manifest) of a tests/export_cases.py case, exported once per
    session with the default gate (an export whose parity fails raises)."""
    from edgeport.benchmarking.cases import CASES, case_model
    from edgeport.export.pipeline import export

    root = tmp_path_factory.mktemp("cases")
    done: dict[str, tuple[Path, dict]] = {}

    def get(name: str) -> tuple[Path, dict]:
        if name not in done:
            c = CASES[name]
            model = case_model(c["model"], root / "models")
            done[name] = export(str(model), c["target"], root / name, quantization=c.get("quantization"),
                                policy=c.get("policy"))
            for f in ("manifest.json", "parity.json"):  # strict JSON: no NaN / Infinity anywhere
                json.loads((root / name / f).read_text(), parse_constant=_no_constant)
        return done[name]

    return get
