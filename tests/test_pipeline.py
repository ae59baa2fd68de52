"""invoke export end to end: artifact, manifest, parity, and errors that leave nothing behind."""

import json
import os
import subprocess
import sys

import gguf
import numpy as np
import pytest

from edgeport.core import manifest as mf
from edgeport.core import mxfp4
from edgeport.core.errors import ArchitectureError, OutputError, QuantizationError, TargetError
from edgeport.core.source import Source, sha256_file
from edgeport.export.imatrix import DEFAULT_BUDGET_TOKENS
from edgeport.export.pipeline import export
from tests.conftest import ROOT, copy_model


def _leftovers(parent):
    return [p.name for p in parent.iterdir() if ".partial-" in p.name or ".old-" in p.name]


@pytest.fixture(scope="module")
def mxfp4_artifact(exported):
    return exported("cpu-gpt-oss-mxfp4")


def test_default_cpu_export_of_mxfp4_source(mxfp4_artifact, mxfp4_dir):
    path, m = mxfp4_artifact
    assert m["schema"] == mf.SCHEMA and m["target"] == "cpu" and m["format"] == "gguf"
    assert m["runtime"]["name"] == "llama.cpp"
    assert m["quantization"]["requested"] == "Q4_K_M"
    assert m["quantization"]["variant"] == "mxfp4-source"
    per = m["quantization"]["per_tensor"]
    assert per["blk.0.ffn_gate_exps.weight"] == "MXFP4" and per["blk.0.attn_output.weight"] == "Q4_K"
    assert any(f["tensor"] == "blk.0.attn_q.weight" for f in m["quantization"]["applied"]["fallbacks"])
    # source checksums and artifact files are real
    src = Source.open(mxfp4_dir)
    assert set(m["source"]["files"]) == {p.name for p in src.files()}
    assert "model.safetensors.index.json" in m["source"]["files"] and "config.json" in m["source"]["files"]
    for name, entry in m["source"]["files"].items():
        assert entry["sha256"] == sha256_file(src.root / name)
    for f in m["files"]:
        assert sha256_file(path / f["path"]) == f["sha256"]
    # the GGUF, its parity report, its importance matrix (Q4_K_M's default: tests/test_imatrix.py), and
    # what runs it besides llama.cpp (Docker Model Runner's chat template layer, Ollama's Modelfile /
    # template / params: tests/test_ollama.py)
    assert {f["path"] for f in m["files"]} == {"parity.json", m["runtime"]["model_file"], "chat_template.jinja",
                                               "Modelfile", "template", "params", "imatrix.gguf"}
    im = m["quantization"]["imatrix"]
    budget = DEFAULT_BUDGET_TOKENS // 512  # the default budget, of the shipped set's 113 chunks
    assert im["used"] and im["dataset"]["default"] and im["chunks"] == budget and im["tokens"] == budget * 512
    assert m["parity"]["passed"] and set(m["parity"]["stages"]) == {"fidelity", "quantization", "end_to_end"}
    assert m["tools"]["gguf"] and m["tools"]["llama-cpp-python"]
    assert json.loads((path / "parity.json").read_text()) == m["parity"]


def test_mxfp4_experts_bit_exact_in_q4_k_m_artifact(mxfp4_artifact, mxfp4_dir):
    path, m = mxfp4_artifact
    src = Source.open(mxfp4_dir)
    tensors = {t.name: t for t in gguf.GGUFReader(path / m["runtime"]["model_file"]).tensors}
    for layer in range(4):
        b, s = mxfp4.ggml_to_hf(np.asarray(tensors[f"blk.{layer}.ffn_down_exps.weight"].data))
        want_b = src.read_raw(f"model.layers.{layer}.mlp.experts.down_proj_blocks")
        want_s = src.read_raw(f"model.layers.{layer}.mlp.experts.down_proj_scales")
        assert np.array_equal(b.reshape(want_b.shape), want_b) and np.array_equal(s.reshape(want_s.shape), want_s)
        b, _ = mxfp4.ggml_to_hf(np.asarray(tensors[f"blk.{layer}.ffn_up_exps.weight"].data))
        want_b = src.read_raw(f"model.layers.{layer}.mlp.experts.gate_up_proj_blocks")[:, 1::2]
        assert np.array_equal(b.reshape(want_b.shape), want_b)


def test_artifact_runs_through_the_runtime_interface(mxfp4_artifact):
    from edgeport import runtimes

    path, _ = mxfp4_artifact
    with runtimes.load(path) as rt:
        assert rt.info.chat_format == "harmony"
        text = rt.generate([{"role": "user", "content": "hi"}], max_new_tokens=8, reasoning_effort="fast")
        assert isinstance(text, str) and text


def test_unknown_architecture(gpt_oss_dir, tmp_path):
    d = copy_model(gpt_oss_dir, tmp_path / "m")
    cfg = json.loads((d / "config.json").read_text())
    cfg["architectures"] = ["MambaForCausalLM"]
    (d / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArchitectureError, match="unsupported architecture MambaForCausalLM; supported: "):
        export(str(d), "cpu", tmp_path / "out", parity=False)
    assert not (tmp_path / "out").exists()


def test_unknown_target_lists_targets(gpt_oss_dir, tmp_path):
    with pytest.raises(TargetError, match="available targets: apple, cpu"):
        export(str(gpt_oss_dir), "toaster", tmp_path / "out", parity=False)


def test_unwritable_output(gpt_oss_dir, tmp_path):
    if os.geteuid() == 0:
        target = "/proc/edgeport-out/cpu"  # root ignores permissions; /proc refuses anyway
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        target = ro / "sub" / "cpu"
    with pytest.raises(OutputError):
        export(str(gpt_oss_dir), "cpu", target, parity=False)


def test_existing_output_needs_force(gpt_oss_dir, tmp_path):
    out = tmp_path / "cpu"
    out.mkdir()
    with pytest.raises(OutputError, match="--force"):
        export(str(gpt_oss_dir), "cpu", out, parity=False)


def test_failure_midway_leaves_nothing(gpt_oss_dir, tmp_path, monkeypatch):
    import edgeport.export.gguf_export as pl

    def boom(*a, **k):
        raise QuantizationError("simulated failure")

    monkeypatch.setattr(pl, "quantize", boom)
    with pytest.raises(QuantizationError):
        export(str(gpt_oss_dir), "cpu", tmp_path / "cpu", parity=False)
    assert not (tmp_path / "cpu").exists() and _leftovers(tmp_path) == []


def test_interrupt_leaves_nothing_and_keeps_old_artifact(gpt_oss_dir, tmp_path, monkeypatch):
    import edgeport.export.gguf_export as pl

    out = tmp_path / "cpu"
    out.mkdir()
    (out / "old.txt").write_text("previous artifact")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(pl, "quantize", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export(str(gpt_oss_dir), "cpu", out, parity=False, force=True)
    assert (out / "old.txt").read_text() == "previous artifact" and _leftovers(tmp_path) == []


def test_cli_errors_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "invoke", "export", "--target", "toaster"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2
    want = "edgeport: error: unknown target 'toaster'; available targets: apple, cpu, jetson, onnx, vllm"
    assert r.stderr.strip().splitlines() == [want]


def test_parity_task_rechecks_an_artifact(mxfp4_artifact):
    from edgeport.export.pipeline import parity_for_artifact

    path, m = mxfp4_artifact
    before = m["parity"]["stages"]["quantization"]["summary"]["mean_kl"]
    report = parity_for_artifact(path)
    # same files, same eval set, deterministic runtimes: the same numbers again
    assert report["stages"]["quantization"]["summary"]["mean_kl"] == pytest.approx(before, rel=1e-6)
    assert mf.load(path)["parity"] == report


def test_parity_refuses_a_changed_source(mxfp4_dir, tmp_path):
    from edgeport.core.errors import SourceError
    from edgeport.export.pipeline import parity_for_artifact

    src = copy_model(mxfp4_dir, tmp_path / "src")
    path, _ = export(str(src), "cpu", tmp_path / "cpu", parity=False)
    cfg = src / "generation_config.json"
    cfg.write_text(cfg.read_text().replace("1.0", "0.7"))
    with pytest.raises(SourceError, match="no longer matches"):
        parity_for_artifact(path)


def test_run_task_streams_text(mxfp4_artifact):
    path, _ = mxfp4_artifact
    r = subprocess.run([sys.executable, "-m", "invoke", "run", "--artifact", str(path), "--prompt", "def main(",
                        "--max-new-tokens", "12"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-1000:]
    assert len(r.stdout.strip()) > 5


@pytest.mark.parametrize("target", ["cpu", pytest.param("apple", marks=pytest.mark.slow)])
def test_gate_catches_a_broken_converter(target, llama_dir, tmp_path, monkeypatch):
    """Drop llama's Q/K RoPE permutation: the GGUF loads and runs, and parity must fail."""
    import dataclasses

    import edgeport.core.architectures as archs
    from edgeport.core.errors import ParityFailure

    broken = dataclasses.replace(archs.LLAMA, rules=())
    monkeypatch.setattr(archs, "ARCHITECTURES", (archs.GPT_OSS, broken))
    with pytest.raises(ParityFailure, match="fidelity: mean_kl"):
        export(str(llama_dir), target, tmp_path / target)
    assert not (tmp_path / target).exists() and _leftovers(tmp_path) == []
