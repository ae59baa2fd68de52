"""Tool environments: created once (atomically), reused, keyed by their pins, cleared on request;
and the onnxruntime runtime's clear errors."""

import builtins

import pytest

from edgeport.core import toolenv
from edgeport.core.errors import RuntimeUnavailable
from edgeport.core.toolenv import ToolEnv, ToolEnvSpec, ToolError

# pip is already in a fresh venv: "installing" it needs no network and takes a second
SPEC = ToolEnvSpec("probe", "test", ("pip",), "import json")


def test_created_once_then_reused(tmp_path):
    env = ToolEnv(SPEC, tmp_path).ensure()
    assert env.ready and env.python.exists()
    assert env.installed()["requirements"] == ["pip"]
    assert env.version("pip")
    marker = env.path / toolenv.MARKER
    stamp = marker.stat().st_mtime_ns
    ToolEnv(SPEC, tmp_path).ensure()
    assert marker.stat().st_mtime_ns == stamp  # not rebuilt
    assert not list(tmp_path.glob(".*partial*"))


def test_pins_key_the_directory():
    a = ToolEnvSpec("x", "", ("a==1",), "")
    b = ToolEnvSpec("x", "", ("a==2",), "")
    assert a.key != b.key and a.key.startswith("x-")


def test_a_failed_setup_leaves_nothing_usable(tmp_path):
    bad = ToolEnvSpec("broken", "test", ("pip",), "import edgeport_no_such_module")
    with pytest.raises(ToolError, match="import check failed"):
        ToolEnv(bad, tmp_path).ensure()
    assert not ToolEnv(bad, tmp_path).ready
    assert [p.name for p in tmp_path.iterdir() if p.is_dir()] == []


def test_run_failure_shows_the_tools_output(tmp_path):
    env = ToolEnv(SPEC, tmp_path).ensure()
    with pytest.raises(ToolError, match="boom") as e:
        env.run(["-c", "import sys; print('boom'); sys.exit(3)"], tmp_path / "t.log", "probe tool")
    assert "exit 3" in str(e.value)


def test_clear_and_listing(tmp_path, monkeypatch):
    monkeypatch.setenv("EDGEPORT_TOOLENVS", str(tmp_path))
    ToolEnv(SPEC).ensure()
    assert toolenv.root() == tmp_path
    assert {e["name"] for e in toolenv.listing()} == set(toolenv.TOOLENVS)
    gone = toolenv.clear("probe")
    assert gone and not any(tmp_path.iterdir())
    with pytest.raises(ToolError, match="unknown tool environment"):
        toolenv.get("nope")


def test_onnx_runtime_without_onnxruntime_says_how_to_install(monkeypatch, tmp_path):
    real = builtins.__import__

    def fake(name, *a, **kw):
        if name == "onnxruntime":
            raise ImportError(name)
        return real(name, *a, **kw)

    monkeypatch.setattr(builtins, "__import__", fake)
    from edgeport.runtimes.onnxrt import OnnxRuntime

    with pytest.raises(RuntimeUnavailable, match=r"pip install -e '\.\[onnx\]'"):
        OnnxRuntime(tmp_path)


def test_execution_provider_fallback_is_named(capsys):
    from edgeport.runtimes.onnxrt import pick_providers

    assert pick_providers("tensorrt", ["CPUExecutionProvider"]) == ["CPUExecutionProvider"]
    assert "running on CPUExecutionProvider" in " ".join(capsys.readouterr().err.split())
    assert pick_providers("cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"])[0] == "CUDAExecutionProvider"
    with pytest.raises(RuntimeUnavailable, match="unknown execution provider"):
        pick_providers("npu", ["CPUExecutionProvider"])
