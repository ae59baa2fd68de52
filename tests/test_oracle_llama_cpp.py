"""Differential oracle: llama.cpp's own converter (convert_hf_to_gguf.py from the
llama-cpp-python sdist, downloaded at test time, never committed) and quantizer must give
the same GGUF as our writer for the same checkpoint: the same tensors (names, types,
bytes) and the same metadata (every key, with its type and value), apart from the keys
listed below with the reason each may differ.

In CI (CI=true) the oracle must run: a converter that cannot be downloaded fails the run.
Elsewhere the test is skipped, and the reason is shown as a warning.
"""

import json
import shutil
import subprocess
from pathlib import Path

import gguf
import numpy as np
import pytest

from edgeport.benchmarking import llama_cpp_converter
from edgeport.benchmarking.llama_cpp_converter import converter_command
from edgeport.core.architectures import GPT_OSS
from edgeport.core.llama_log import LlamaLog
from edgeport.export.gguf_export import GGUFExporter
from edgeport.export.gguf_quantize import quantize
from tests.conftest import gguf_of, unavailable

# Keys allowed to differ, and why. Every other key must be present on both sides, equal.
MAY_DIFFER = {
    "general.name": "display name: ours is the checkpoint directory's name, theirs a title-cased guess at it",
    "general.size_label": "display label their converter derives from parameter counts (e.g. '4x2.4M'); "
                          "llama.cpp only prints it",
    "general.type": "their converter writes 'model'; llama.cpp reads general.type only to recognise LoRA adapters",
    "GGUF.kv_count": "the number of keys, which the keys above change",
}
# Keys our writer always states where their converter may leave llama.cpp's default: where
# theirs lacks one, ours must equal the value llama.cpp itself takes for their file.
EXPLICIT = {"tokenizer.ggml.add_bos_token": lambda vocab, lc: bool(lc.llama_vocab_get_add_bos(vocab))}


def require_converter() -> Path:
    """The converter script; fails the test in CI when it cannot be had, skips (saying why) elsewhere."""
    try:
        return llama_cpp_converter.converter_script()
    except RuntimeError as e:
        unavailable("the llama.cpp converter oracle", str(e).strip())


@pytest.fixture(scope="session")
def converter() -> Path:
    return require_converter()


def run_converter(script: Path, model: Path, out: Path, arch: str) -> Path:
    r = subprocess.run(converter_command(script, model, out, arch), capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


def tensors(path: Path) -> dict[str, tuple[str, tuple, bytes]]:
    return {t.name: (t.tensor_type.name, tuple(int(x) for x in t.shape), np.asarray(t.data).tobytes())
            for t in gguf.GGUFReader(path).tensors}


def metadata(path: Path) -> dict[str, tuple[tuple[str, ...], object]]:
    """Every key: (its GGUF type(s), e.g. ('ARRAY', 'STRING'), its decoded value)."""
    return {k: (tuple(t.name for t in f.types), f.contents()) for k, f in gguf.GGUFReader(path).fields.items()}


def llama_cpp_reads(path: Path, key: str):
    """The value llama.cpp itself takes for `key` when loading `path` (vocabulary only)."""
    import llama_cpp as lc

    p = lc.llama_model_default_params()
    p.vocab_only = True
    with LlamaLog() as log:
        model = lc.llama_model_load_from_file(str(path).encode(), p)
    assert model, log.reason()
    try:
        return EXPLICIT[key](lc.llama_model_get_vocab(model), lc)
    finally:
        lc.llama_model_free(model)


def _describe(x, y) -> str:
    """ours vs theirs for one key, short enough to read (arrays: where they first differ)."""
    if x and y and isinstance(x[1], list) and isinstance(y[1], list) and x[0] == y[0]:
        i = next((i for i, (p, q) in enumerate(zip(x[1], y[1], strict=False)) if p != q), min(len(x[1]), len(y[1])))
        at = lambda v: repr(v[1][i]) if i < len(v[1]) else "(end)"
        return f"{x[0]} of {len(x[1])} vs {len(y[1])}; first difference at [{i}]: ours {at(x)}, theirs {at(y)}"
    return f"ours {repr(x)[:300]}, theirs {repr(y)[:300]}"


def assert_same_metadata(ours: Path, theirs: Path) -> None:
    a, b = metadata(ours), metadata(theirs)
    for k in MAY_DIFFER:
        a.pop(k, None)
        b.pop(k, None)
    for k in EXPLICIT:
        assert k in a, f"our writer no longer writes {k}"
        if k not in b:
            assert a.pop(k)[1] == llama_cpp_reads(theirs, k), f"{k}: ours differs from llama.cpp's default"
    diff = {k: (a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys()) if a.get(k) != b.get(k)}
    assert not diff, "metadata differs from llama.cpp's:\n" + "\n".join(
        f"  {k}: {_describe(x, y)}" for k, (x, y) in diff.items())


def assert_same(ours: Path, theirs: Path) -> None:
    a, b = tensors(ours), tensors(theirs)
    assert sorted(a) == sorted(b), f"only ours: {sorted(a.keys() - b)}, only theirs: {sorted(b.keys() - a)}"
    for name in a:
        assert a[name][:2] == b[name][:2], (name, a[name][:2], b[name][:2])
        assert a[name][2] == b[name][2], f"{name}: bytes differ"
    assert_same_metadata(ours, theirs)


# The tiny Llama with each RoPE scaling llama.cpp's converter handles for Llama (llama3 is
# Llama 3.1+'s: a rope_freqs tensor rather than keys)
ROPE_SCALING = {
    "rope_llama3": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                    "original_max_position_embeddings": 256},
    "rope_linear": {"rope_type": "linear", "factor": 2.0},
    "rope_yarn": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 512, "beta_fast": 32.0},
}


@pytest.fixture(scope="session")
def rope_scaled(llama_dir, tmp_path_factory) -> dict[str, Path]:
    out = {}
    for name, rp in ROPE_SCALING.items():
        d = out[name] = tmp_path_factory.mktemp("rope") / f"tiny-llama-{name}"
        shutil.copytree(llama_dir, d)
        cfg = json.loads((d / "config.json").read_text())
        cfg["rope_parameters"] = {"rope_theta": cfg["rope_parameters"]["rope_theta"], **rp}
        (d / "config.json").write_text(json.dumps(cfg, indent=2))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("which", ["gpt_oss_dir", "llama_dir", "mxfp4_dir", *ROPE_SCALING])
def test_f16_and_q4_k_m_identical_to_llama_cpp(which, request, converter, gguf_dir, tmp_path):
    model = request.getfixturevalue("rope_scaled")[which] if which in ROPE_SCALING else request.getfixturevalue(which)
    arch = "GptOssForCausalLM" if which in ("gpt_oss_dir", "mxfp4_dir") else "LlamaForCausalLM"
    theirs_f16 = run_converter(converter, model, tmp_path / "theirs-f16.gguf", arch)
    ours_f16 = gguf_of(model, gguf_dir)
    assert_same(ours_f16, theirs_f16)
    # llama.cpp's Q4_K_M refuses MXFP4 experts; both sides then keep them (per-tensor override)
    keep = {GGUFExporter().expert_pattern(GPT_OSS): gguf.GGMLQuantizationType.MXFP4} if which == "mxfp4_dir" else None
    quantize(ours_f16, tmp_path / "ours-q.gguf", "Q4_K_M", keep=keep)
    quantize(theirs_f16, tmp_path / "theirs-q.gguf", "Q4_K_M", keep=keep)
    assert_same(tmp_path / "ours-q.gguf", tmp_path / "theirs-q.gguf")


@pytest.mark.parametrize("ci", ["true", None])
def test_unavailable_converter_fails_in_ci_and_says_why_elsewhere(monkeypatch, recwarn, ci):
    def no_download():
        raise RuntimeError("cannot download the llama-cpp-python sdist: network unreachable")

    monkeypatch.setattr(llama_cpp_converter, "converter_script", no_download)
    if ci:
        monkeypatch.setenv("CI", ci)
    else:
        monkeypatch.delenv("CI", raising=False)
    try:  # a skip must not pass for a failure here, nor the other way round
        require_converter()
        outcome = None
    except (pytest.fail.Exception, pytest.skip.Exception) as e:
        outcome = e
    expected = pytest.fail.Exception if ci else pytest.skip.Exception
    assert isinstance(outcome, expected), f"expected {expected.__name__}, got {outcome!r}"
    assert "network unreachable" in str(outcome)
    if not ci:
        assert any("network unreachable" in str(w.message) for w in recwarn), "the skip's reason is not shown"
