"""The AMX guard (core.llama_log, used by runtimes.llamacpp) must reach llama.cpp, not just a Python object.

A ctypes Structure takes a misspelt attribute without complaint, so setting
`use_extra_bufts` proves nothing by itself: these tests check the field name against
llama-cpp-python's struct and read llama.cpp's own load log for the buffer types it used
(extra buffer types on: Q4_K weights go to CPU_REPACK / AMX; off: plain CPU buffers only).
Loads run in subprocesses: on AMX CPUs a repacked Q4_K matmul segfaults
(ggml-org/llama.cpp#20824), so the "on" load is only attempted where the CPU has no AMX.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from edgeport.core import llama_log
from edgeport.core.llama_log import cpu_has_amx, extra_bufts_enabled, model_params
from edgeport.export.gguf_quantize import quantize
from tests.conftest import ROOT, gguf_of

ENV = "EDGEPORT_LLAMA_EXTRA_BUFTS"
EXTRA = {"CPU_REPACK", "AMX"}  # llama.cpp's CPU extra buffer types (ggml-cpu repack.cpp, amx.cpp)

# Load through the runtime with llama.cpp's log recorded (the runtime's LlamaLog would
# discard it), then run one forward pass so the chosen kernels actually execute.
CHILD = textwrap.dedent("""
    import json, sys
    import edgeport.core.llama_log as ll
    logs = []
    class Recorder(ll.LlamaLog):
        def __exit__(self, *exc):
            logs.append(self.text)
            return super().__exit__(*exc)
    ll.LlamaLog = Recorder
    from edgeport.runtimes.llamacpp import LlamaCppRuntime
    rt = LlamaCppRuntime({path!r}, n_ctx=256)
    rt.logits(list(range(10, 40)))
    print(json.dumps({{"extra_bufts": rt.extra_bufts, "log": logs[0]}}))
""")


def test_use_extra_bufts_is_a_field_of_llama_model_params():
    import llama_cpp

    assert "use_extra_bufts" in [f[0] for f in llama_cpp.llama_model_params._fields_]
    for flag in (True, False):
        with model_params(llama_cpp, flag):
            p = llama_cpp.llama_cpp.llama_model_default_params()  # what llama_cpp.Llama calls
        assert p.use_extra_bufts is flag
        # anything set outside _fields_ lands in the instance dict and never reaches C
        assert vars(p) == {}, f"attributes llama.cpp never sees: {sorted(vars(p))}"


@pytest.mark.parametrize(("env", "amx", "expected"), [
    (None, True, False), (None, False, True), ("1", True, True), ("0", False, False),
    ("false", False, False), ("False", False, False), ("off", False, False),
])
def test_extra_bufts_choice(monkeypatch, env, amx, expected):
    monkeypatch.setattr(llama_log, "cpu_has_amx", lambda: amx)
    if env is None:
        monkeypatch.delenv(ENV, raising=False)
    else:
        monkeypatch.setenv(ENV, env)
    assert extra_bufts_enabled() is expected


def test_a_model_too_big_to_copy_stays_mapped(monkeypatch, tmp_path):
    """Repacking copies a model's weights into anonymous memory: a file over REPACK_MAX_SHARE of
    physical memory is loaded memory-mapped on any CPU (unless the environment insists)."""
    monkeypatch.setattr(llama_log, "cpu_has_amx", lambda: False)
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(llama_log, "_physical_bytes", lambda: 8000)
    small, big = tmp_path / "small.gguf", tmp_path / "big.gguf"
    small.write_bytes(b"x" * 1000)
    big.write_bytes(b"x" * 1001)
    assert extra_bufts_enabled(small) is True and extra_bufts_enabled() is True
    assert extra_bufts_enabled(big) is False
    monkeypatch.setenv(ENV, "1")
    assert extra_bufts_enabled(big) is True


@pytest.fixture(scope="module")
def q4_k_m(llama_dir, gguf_dir, tmp_path_factory):
    """Q4_K weights: the type llama.cpp repacks (and whose AMX path crashes)."""
    out = tmp_path_factory.mktemp("amx") / "tiny-llama-q4_k_m.gguf"
    quantize(gguf_of(llama_dir, gguf_dir), out, "Q4_K_M")
    return out


def load_buffers(path, env: str | None) -> tuple[bool, set[str]]:
    """(the runtime's extra_bufts, the model buffer types llama.cpp's log reports)."""
    e = {k: v for k, v in os.environ.items() if k != ENV}
    if env is not None:
        e[ENV] = env
    r = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), path=str(path))],
                       capture_output=True, text=True, timeout=300, env=e)
    assert r.returncode == 0, f"llama.cpp load failed (rc {r.returncode}): {r.stderr[-1000:]}"
    out = json.loads(r.stdout.strip().splitlines()[-1])
    bufs = set(re.findall(r"load_tensors:\s+(\S+) model buffer size", out["log"]))
    assert bufs, f"no model buffer sizes in llama.cpp's log:\n{out['log'][-2000:]}"
    return out["extra_bufts"], bufs


def q4_k_repack_available() -> bool:
    """llama.cpp repacks Q4_K only with AVX2 (x86) or NEON dotprod / i8mm (Arm)."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info().decode(errors="replace")
    return "REPACK = 1" in info and any(f"{f} = 1" in info for f in ("AVX2", "DOTPROD", "MATMUL_INT8"))


@pytest.mark.parametrize("env", [None, "0", "1"], ids=["default", "forced-off", "forced-on"])
def test_extra_bufts_setting_reaches_llama_cpp(q4_k_m, env):
    on = {None: not cpu_has_amx(), "0": False, "1": True}[env]
    if on and cpu_has_amx():
        pytest.skip("CPU has AMX: loading with extra buffer types on segfaults (llama.cpp#20824)")
    if on and not q4_k_repack_available():
        pytest.skip("llama.cpp has no Q4_K repack kernel for this CPU: nothing to observe")
    extra, bufs = load_buffers(q4_k_m, env)
    assert extra is on
    if on:
        assert bufs & EXTRA, f"extra buffer types on, but llama.cpp used only {sorted(bufs)}"
    else:
        assert not bufs & EXTRA, f"extra buffer types off, but llama.cpp used {sorted(bufs & EXTRA)}"


@pytest.mark.parametrize("on", [False, True])
def test_importance_matrix_load_takes_the_choice(monkeypatch, llama_dir, gguf_dir, on):
    """The importance matrix loads through the binding's C API, not llama_cpp.Llama: the choice
    must reach the params it passes (model_params() patches another binding of the defaults)."""
    import llama_cpp

    from edgeport.export import imatrix

    seen = []
    real = llama_cpp.llama_model_load_from_file

    def spy(path, params):
        seen.append(bool(params.use_extra_bufts))
        return real(path, params)

    monkeypatch.setattr(llama_cpp, "llama_model_load_from_file", spy)
    monkeypatch.setattr(imatrix, "extra_bufts_enabled", lambda model=None: on)
    imatrix.compute(gguf_of(llama_dir, gguf_dir), imatrix.load_calibration(), max_chunks=2)
    assert seen == [on]


@pytest.mark.parametrize("repack", [True, False])
def test_llama_server_maps_weights_only_when_it_does_not_repack(monkeypatch, repack):
    """Repacked weights are anonymous copies: mapped too, the file's pages stay resident beside
    them (gpt-oss-20b: 20.6 GiB peak RSS for a 10.8 GiB GGUF), so a repacking llama-server reads
    the file (--load-mode none); without repacking it maps it."""
    from edgeport.serving.engines import llama_server_command

    monkeypatch.setattr(llama_log, "cpu_has_amx", lambda: not repack)
    monkeypatch.delenv(ENV, raising=False)
    cmd = llama_server_command(Path("llama-server"), Path("m.gguf"), 8000, 512, 2)
    assert (cmd[-2:] == ["--load-mode", "none"]) is repack and ("--no-repack" in cmd) is not repack
