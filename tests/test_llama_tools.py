"""llama.cpp's command-line tools built from the pinned llama-cpp-python sdist (tools.llama_cpp).

The first run builds them (about 10 minutes on 2 cores) into the user's cache; later runs
reuse that build. They must be the llama.cpp our quantizer and runtime use: the commit the
sdist records for its llama.cpp submodule, which is what `--version` prints, what ggml in
the Python binding reports (ggml_commit), and what makes llama-quantize write the same bytes
as the binding's quantizer. A build that fails or is interrupted must leave no tools behind.

In CI (CI=true) a missing sdist or toolchain fails; elsewhere it skips, saying why.
"""

from __future__ import annotations

import ctypes
import re
import signal
import subprocess
from pathlib import Path

import pytest

import edgeport.core.llama_tools as lt
from edgeport.core import llama_log
from edgeport.core.atomic import Interrupted
from edgeport.core.errors import RuntimeUnavailable
from tests.conftest import LLAMA, gguf_of, unavailable

# llama.cpp's `--version` (common's llama_print_build_info): "version: 0.5.0-dev (build 1, commit 0c1e570)"
VERSION_LINE = re.compile(r"version: (?P<version>\S+) \(build (?P<build>\d+), commit (?P<commit>[0-9a-f]{7,})\)")


def require_build_inputs() -> None:
    """The sdist and a toolchain; fails the test in CI when missing, skips (saying why) elsewhere."""
    try:
        lt.sdist()
        lt.check_prerequisites()
        return
    except (RuntimeError, RuntimeUnavailable) as e:
        unavailable("building llama.cpp's tools", str(e).strip())


@pytest.fixture(scope="module")
def built() -> dict:
    """The cached build (made now if missing: about 10 minutes, once)."""
    require_build_inputs()
    lt.build()
    info = lt.installed()
    assert info is not None
    return info


def run(*args, timeout: int = 120) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=timeout)


def binding_ggml() -> tuple[str, str]:
    """(ggml_version, ggml_commit) of the ggml inside the Python binding."""
    import llama_cpp

    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    lib.ggml_version.restype = lib.ggml_commit.restype = ctypes.c_char_p
    return lib.ggml_version().decode(), lib.ggml_commit().decode()


# --- without a build ---

@pytest.mark.parametrize(("amx", "env", "expected"), [
    (False, None, {}),
    (True, None, {"llama-server": ["--no-repack"], "llama-imatrix": ["--no-repack"],
                  "llama-bench": ["--repack", "0"], "llama-quantize": []}),
    (True, "1", {}),  # EDGEPORT_LLAMA_EXTRA_BUFTS=1 turns repacking back on, as for the runtime
])
def test_repack_args_follow_the_runtimes_choice(monkeypatch, amx, env, expected):
    monkeypatch.setattr(llama_log, "cpu_has_amx", lambda: amx)
    if env is None:
        monkeypatch.delenv("EDGEPORT_LLAMA_EXTRA_BUFTS", raising=False)
    else:
        monkeypatch.setenv("EDGEPORT_LLAMA_EXTRA_BUFTS", env)
    assert {t: lt.repack_args(t) for t in lt.TOOLS} == {t: expected.get(t, []) for t in lt.TOOLS}


def test_unbuilt_tool_without_building_says_how(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    with pytest.raises(RuntimeUnavailable) as e:
        lt.tool("llama-server", build=False)
    assert "\n" not in str(e.value) and "edgeport tools --build" in str(e.value)
    with pytest.raises(ValueError):
        lt.tool("llama-cli")


def test_failed_build_leaves_no_tools(tmp_path):
    require_build_inputs()
    with pytest.raises(RuntimeUnavailable) as e:
        lt.build(extra_cmake_args=["-DCMAKE_C_COMPILER=/nonexistent/cc"], cache=tmp_path)
    msg = str(e.value)
    assert "\n" not in msg, msg
    assert "cmake configure" in msg and "/nonexistent/cc" in msg, msg
    log = tmp_path / f"{lt.version()}.build.log"
    assert str(log) in msg and log.is_file(), msg
    assert not (tmp_path / lt.version()).exists()
    assert lt.installed(tmp_path) is None
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([log.name, f".{lt.version()}.lock"])


def test_interrupted_build_leaves_no_tools(tmp_path, monkeypatch):
    require_build_inputs()
    steps = []

    def interrupted(cmd, *a, **kw):  # Ctrl-C while cmake configures
        steps.append(cmd)
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(lt, "_run", interrupted)
    with pytest.raises(KeyboardInterrupt):
        lt.build(cache=tmp_path)
    assert len(steps) == 1
    assert not (tmp_path / lt.version()).exists()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(f".{lt.version()}.")
            and not p.name.endswith(".lock")] == [], "a partial or build directory was left"


# --- with the build (made once) ---

@pytest.mark.slow  # builds llama.cpp's tools on a cold cache (~10 min)
def test_build_is_cached_and_complete(built):
    d = lt.tools_dir()
    assert sorted(p.name for p in d.iterdir()) == sorted([*lt.TOOLS, "build.json", "build.log"])
    assert built["tools"] == {t: str(d / t) for t in lt.TOOLS}
    assert built["llama-cpp-python"] == lt.version()
    before = (d / "build.json").stat().st_mtime_ns
    assert lt.tool("llama-quantize") == d / "llama-quantize"
    assert lt.build() == d
    assert (d / "build.json").stat().st_mtime_ns == before, "built already: build() must not rebuild"


@pytest.mark.slow  # builds llama.cpp's tools on a cold cache (~10 min)
@pytest.mark.parametrize("name", ["llama-server", "llama-bench", "llama-imatrix"])
def test_tool_runs_and_prints_its_version(built, name):
    r = run(lt.tool(name), "--version")
    assert r.returncode == 0, r.stderr
    m = VERSION_LINE.search(r.stdout + r.stderr)
    assert m and built["llama.cpp_commit"].startswith(m["commit"]), r.stdout + r.stderr


@pytest.mark.slow  # builds llama.cpp's tools on a cold cache (~10 min)
def test_quantize_runs(built):
    r = run(lt.tool("llama-quantize"), "--help")  # its usage exits 1 by design (quantize.cpp)
    assert "usage:" in r.stdout and "Q4_K_M" in r.stdout, r.stdout + r.stderr


@pytest.mark.slow  # builds llama.cpp's tools on a cold cache (~10 min)
@pytest.mark.parametrize("name", lt.TOOLS)
def test_repack_flags_are_the_tools_own(built, name, monkeypatch):
    """The flags repack_args gives on an AMX CPU are accepted: parsed before --version exits."""
    monkeypatch.setattr(llama_log, "cpu_has_amx", lambda: True)
    monkeypatch.delenv("EDGEPORT_LLAMA_EXTRA_BUFTS", raising=False)
    flags = lt.repack_args(name)
    if name == "llama-quantize":
        assert flags == [] and "repack" not in run(lt.tool(name), "--help").stdout
        return
    r = run(lt.tool(name), *flags, "--version")
    assert r.returncode == 0, r.stdout + r.stderr
    assert run(lt.tool(name), "--bogus-flag", "--version").returncode != 0  # so the check can fail


@pytest.mark.slow  # builds llama.cpp's tools on a cold cache (~10 min)
def test_same_llama_cpp_as_the_binding(built):
    """One commit everywhere: the sdist's submodule HEAD, the tools' --version, and ggml's
    own version and commit as the Python binding reports them (the build log has the tools')."""
    commit = lt.sdist_commit(lt.sdist())
    assert built["llama.cpp_commit"] == commit
    m = VERSION_LINE.search(built["version_output"])
    assert m and commit.startswith(m["commit"]), built["version_output"]
    import llama_cpp

    # the binding's libllama carries llama.cpp's version as its soname (libllama.so.0.5.0)
    lib = sorted((Path(llama_cpp.__file__).parent / "lib").glob("libllama.so.*.*.*"))
    assert lib and m["version"].removesuffix("-dev") == lib[-1].name.removeprefix("libllama.so."), (lib, m[0])
    ggml_version, ggml_commit = binding_ggml()
    assert commit.startswith(ggml_commit.removesuffix("-dirty")), (ggml_commit, commit)
    log = (lt.tools_dir() / "build.log").read_text()
    assert f"ggml version: {ggml_version}\n" in log
    assert re.search(rf"ggml commit: +{re.escape(ggml_commit)}\n", log), (ggml_commit, "not in build.log")


@pytest.mark.slow  # builds llama.cpp's tools on a cold cache (~10 min)
def test_quantize_writes_what_the_binding_writes(built, gguf_dir, tmp_path):
    """llama-quantize and the binding's quantizer (export.gguf_quantize) turn the same F16
    GGUF into the same bytes, and llama-quantize names the sdist's commit."""
    from edgeport.export.gguf_quantize import quantize

    f16 = gguf_of(LLAMA, gguf_dir)
    quantize(f16, tmp_path / "binding.gguf", "Q4_K_M")
    r = run(lt.tool("llama-quantize"), f16, tmp_path / "cli.gguf", "Q4_K_M", timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    m = VERSION_LINE.search(r.stdout + r.stderr)
    assert m and built["llama.cpp_commit"].startswith(m["commit"])
    assert (tmp_path / "cli.gguf").read_bytes() == (tmp_path / "binding.gguf").read_bytes()
