"""edgeport as a user installs it: the wheel, in fresh venvs outside the checkout.

With the extras a converting machine takes (`[export,cpu]`): `edgeport --help`, `edgeport export
--target cpu` on the bundled model, `edgeport serve` answering the real `openai` client, `edgeport
push` / `edgeport pull` through a file:// layout. With no extras (a device): no torch, no
transformers, yet it pulls a GGUF artifact, shows it and serves it; a command that needs an extra
says which, in one line. The wheel holds one top-level name, `edgeport`."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.slow


def _run(argv: list, *, cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


def _env(venv: Path | None = None) -> dict:
    """This machine's environment without this venv or checkout on any path."""
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    here = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != here]
    env["PATH"] = os.pathsep.join(([str(venv / "bin")] if venv else []) + path)
    return env


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel, built once from a copy of the checkout's files (the build leaves nothing in it)."""
    root = tmp_path_factory.mktemp("wheel")
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True,
                           check=True).stdout.decode().split("\0")
    src = root / "src"
    for f in filter(None, files):
        if (ROOT / f).is_file():
            (src / f).parent.mkdir(parents=True, exist_ok=True)
            (src / f).write_bytes((ROOT / f).read_bytes())
    r = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", root / "dist",
              src], cwd=root, env=_env())
    assert r.returncode == 0, r.stderr[-3000:]
    (whl,) = (root / "dist").glob("edgeport-*.whl")
    return whl


def _venv(wheel: Path, where: Path, extras: str) -> tuple[Path, float]:
    """A fresh venv with the wheel (and `extras`) installed, from outside the checkout: (venv, seconds)."""
    venv = where / "venv"
    t0 = time.monotonic()
    r = _run([sys.executable, "-m", "venv", venv], cwd=where, env=_env())
    assert r.returncode == 0, r.stderr
    r = _run([venv / "bin" / "pip", "install", "-q", f"{wheel}{extras}"], cwd=where, env=_env(venv), timeout=1800)
    assert r.returncode == 0, r.stderr[-3000:]
    return venv, time.monotonic() - t0


@pytest.fixture(scope="module")
def full(wheel, tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("full")
    venv, seconds = _venv(wheel, where, "[export,cpu]")
    print(f"\n[export,cpu] venv installed in {seconds:.0f} s")
    return venv


@pytest.fixture(scope="module")
def base(wheel, tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("base")
    venv, seconds = _venv(wheel, where, "")
    site = next((venv / "lib").glob("python3*/site-packages"))
    size = sum(f.stat().st_size for f in site.rglob("*") if f.is_file() and not f.is_symlink())
    print(f"\nbase venv installed in {seconds:.0f} s; site-packages {size / 2**20:.0f} MiB")
    return venv


@contextlib.contextmanager
def served(venv: Path, artifact: Path, cwd: Path):
    """`edgeport serve --artifact ARTIFACT` from `venv` on a free port, until the block ends: its URL."""
    import httpx

    from edgeport.serving.engines import free_port

    port = free_port()
    log = cwd / f"serve-{port}.log"
    with open(log, "w") as out:
        proc = subprocess.Popen([str(venv / "bin" / "edgeport"), "serve", "--artifact", str(artifact), "--port",
                                 str(port)], cwd=cwd, env=_env(venv), stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while True:
            assert proc.poll() is None, f"edgeport serve exited {proc.returncode}:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, f"edgeport serve did not answer:\n{log.read_text()[-3000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                    break
            time.sleep(0.5)
        yield url
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _one_chat(url: str) -> None:
    """One chat request through the real openai client: an answer of at least one token."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=120)
    (model,) = [m.id for m in client.models.list().data]
    r = client.chat.completions.create(model=model, max_tokens=24, temperature=0,
                                       messages=[{"role": "user", "content": "Write a function called main."}])
    assert r.choices[0].finish_reason in ("stop", "length") and r.usage.completion_tokens > 0, r


def test_the_wheel_has_one_top_level_name(wheel):
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        (top_level,) = [n for n in names if n.endswith(".dist-info/top_level.txt")]
        assert z.read(top_level).decode().split() == ["edgeport"]
        entry_points = z.read(next(n for n in names if n.endswith(".dist-info/entry_points.txt"))).decode()
    assert {n.split("/")[0] for n in names} == {"edgeport", top_level.split("/")[0]}
    assert "edgeport = edgeport.cli:main" in entry_points
    # what a wheel user needs beside the code: the bundled models, target profiles, data
    for f in ("edgeport/models/tiny-gpt-oss/model.safetensors", "edgeport/models/tiny-llama/config.json",
              "edgeport/targets/cpu.toml", "edgeport/planning/configs/gpt-oss-20b.json",
              "edgeport/parity/evalset.json"):
        assert f in names, f
    assert not any("tiny-gpt-oss-mxfp4" in n for n in names)  # built on demand, never shipped


def test_export_serve_push_pull_from_the_wheel(full, tmp_path):
    edgeport = full / "bin" / "edgeport"
    env = _env(full)
    r = _run([edgeport, "--help"], cwd=tmp_path, env=env)
    assert r.returncode == 0 and "export" in r.stdout and "serve" in r.stdout, r.stderr

    # the bundled model, by default, from a directory that is no checkout
    r = _run([edgeport, "export", "--target", "cpu", "--out", "art"], cwd=tmp_path, env=env, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "art" / "manifest.json").is_file()

    with served(full, tmp_path / "art", tmp_path) as url:
        _one_chat(url)

    r = _run([edgeport, "push", "--artifact", "art", "--to", f"file://{tmp_path / 'layout'}:v1"], cwd=tmp_path,
             env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run([edgeport, "pull", "--from", f"file://{tmp_path / 'layout'}:v1", "--out", "pulled"], cwd=tmp_path,
             env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "pulled" / "manifest.json").read_bytes() == (tmp_path / "art" / "manifest.json").read_bytes()


def test_a_base_install_pulls_shows_and_serves_gguf(base, exported, tmp_path):
    from edgeport.publishing.transfer import push

    edgeport, env = base / "bin" / "edgeport", _env(base)
    for heavy in ("torch", "transformers", "llama_cpp"):
        r = _run([base / "bin" / "python", "-c", f"import {heavy}"], cwd=tmp_path, env=env)
        assert r.returncode != 0 and "ModuleNotFoundError" in r.stderr, f"{heavy} is in the base install"

    art, _ = exported("cpu-gpt-oss")
    layout = f"file://{tmp_path / 'layout'}:v1"
    push(art, layout)

    r = _run([edgeport, "pull", "--from", layout, "--out", "pulled"], cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    r = _run([edgeport, "show", "--artifact", "pulled"], cwd=tmp_path, env=env)
    assert r.returncode == 0 and "edgeport run --artifact pulled" in r.stdout, r.stderr[-3000:] + r.stdout
    with served(base, tmp_path / "pulled", tmp_path) as url:
        _one_chat(url)

    # what needs an extra says which, in one line, exit 2
    for argv, extra in ((["export", "--target", "cpu"], "export"),
                        (["run", "--artifact", "pulled", "--prompt", "hi"], "cpu")):
        r = _run([edgeport, *argv], cwd=tmp_path, env=env)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 2 and len(lines) == 1, r.stderr[-3000:]
        assert lines[0].startswith("edgeport: error: ") and f"pip install 'edgeport[{extra}]'" in lines[0], lines
