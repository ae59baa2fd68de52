"""Importance matrix: calibration input checks, the file format, what it changes, and (slow, with
llama.cpp's tools) the oracle: llama-imatrix's sums and llama-quantize --imatrix's tensors."""

import subprocess
import sys

import gguf
import numpy as np
import pytest

from edgeport.core.errors import CalibrationError, QuantizationError
from edgeport.export.gguf_quantize import quantize
from edgeport.export.imatrix import IMatrix, compute, load_calibration
from edgeport.models import MODELS
from tests.conftest import ROOT, gguf_of, unavailable


@pytest.mark.parametrize("content,message", [
    (None, "does not exist"), (b"", "is empty"), (b"  \n", "is empty"),
    (b"\xff\xfe\x00binary", "is not text"), (b"a\x00b", "is not text"),
])
def test_bad_calibration_is_one_line(tmp_path, content, message):
    p = tmp_path / "cal.txt"
    if content is not None:
        p.write_bytes(content)
    with pytest.raises(CalibrationError, match=message) as e:
        load_calibration(p)
    assert "\n" not in str(e.value)


def test_jsonl_needs_text_fields(tmp_path):
    p = tmp_path / "cal.jsonl"
    p.write_text('{"article": "x"}\n')
    with pytest.raises(CalibrationError, match='line 1: no "text" string'):
        load_calibration(p)
    p.write_text('{"text": "a"}\n{"text": "b"}\n')
    c = load_calibration(p)
    assert (c.text, c.samples, c.default) == ("a\n\nb", 2, False)
    assert load_calibration().default and load_calibration().samples == 128


def _text(n_chars: int, seed: int) -> str:
    """Python source from the standard library, the kind of text the tiny models know."""
    import random

    files = sorted((ROOT / "edgeport" / "export").glob("*.py")) + sorted((ROOT / "edgeport" / "parity").glob("*.py"))
    random.Random(seed).shuffle(files)
    return "\n".join(f.read_text() for f in files)[:n_chars]


def test_imatrix_file_and_moe_counts(gpt_oss_dir, gguf_dir, tmp_path):
    """Two chunks through the tiny gpt-oss: llama.cpp's GGUF imatrix layout, every dense weight
    counted once per token, each expert only for the tokens routed to it (top-2 of 4)."""
    p = tmp_path / "cal.txt"
    p.write_text(_text(20000, 0))
    m = compute(gguf_of(gpt_oss_dir, gguf_dir), load_calibration(p), max_chunks=2)
    path = m.write(tmp_path / "imatrix.gguf")
    r = gguf.GGUFReader(path)
    assert r.fields["general.type"].contents() == "imatrix"
    assert r.fields["imatrix.datasets"].contents() == ["cal.txt"]
    assert (r.fields["imatrix.chunk_count"].contents(), r.fields["imatrix.chunk_size"].contents()) == (2, 512)
    names = [t.name for t in r.tensors]
    weights = [n.rsplit(".", 1)[0] for n in names[::2]]
    assert weights == sorted(weights) and names[:2] == ["blk.0.attn_k.weight.in_sum2", "blk.0.attn_k.weight.counts"]
    back = IMatrix.read(path)
    assert back.counts["blk.0.attn_q.weight"].tolist() == [1024]
    gate = back.counts["blk.0.ffn_gate_exps.weight"]
    assert gate.shape == (4,) and gate.sum() == 1024 * 2 and back.sums["blk.0.ffn_gate_exps.weight"].shape == (4, 288)
    for k in m.sums:
        assert np.array_equal(back.sums[k], m.sums[k]) and np.array_equal(back.counts[k], m.counts[k])
    assert all((v > 0).all() for v in back.normalized().values())


def test_user_calibration_changes_the_quantized_model(llama_dir, gguf_dir, tmp_path):
    f16 = gguf_of(llama_dir, gguf_dir)
    out = {}
    for name, cal in (("default", load_calibration()), ("user", None)):
        if cal is None:
            (tmp_path / "mine.txt").write_text(_text(20000, 1))
            cal = load_calibration(tmp_path / "mine.txt")
        m = compute(f16, cal, max_chunks=2)
        quantize(f16, tmp_path / f"{name}.gguf", "Q4_K_M", imatrix=m)
        out[name] = {t.name: bytes(t.data) for t in gguf.GGUFReader(tmp_path / f"{name}.gguf").tensors}
        fields = gguf.GGUFReader(tmp_path / f"{name}.gguf").fields
        assert fields["quantize.imatrix.dataset"].contents() == cal.name
    changed = [n for n in out["default"] if out["default"][n] != out["user"][n]]
    assert "blk.0.attn_q.weight" in changed and "token_embd.weight" not in changed


def test_too_little_text(llama_dir, gguf_dir, tmp_path):
    (tmp_path / "short.txt").write_text("def f(): pass\n")
    with pytest.raises(CalibrationError, match="needs at least 1024"):
        compute(gguf_of(llama_dir, gguf_dir), load_calibration(tmp_path / "short.txt"))


def test_thresholds_per_scheme():
    from edgeport import targets

    p = targets.load("cpu")
    assert p.thresholds("llama", None, "Q2_K")["quantization"]["mean_kl_max"] > \
        p.thresholds("llama", None, "Q4_K_M")["quantization"]["mean_kl_max"]


@pytest.mark.parametrize("args,message", [
    (["--calibration", "nowhere.txt"], "edgeport: error: calibration file nowhere.txt does not exist"),
    (["--quantization", "IQ2_M", "--no-imatrix"], "edgeport: error: IQ2_M is an i-quant and needs an importance"),
    (["--quantization", "Q8_0", "--calibration", "README.md"], "edgeport: error: Q8_0 is quantized without"),
    (["--target", "onnx", "--no-imatrix"],
     "edgeport: error: --calibration / --no-imatrix / --imatrix / --imatrix-tokens are for GGUF targets"),
])
def test_cli_refusals_leave_nothing(tmp_path, args, message):
    out = tmp_path / "a"
    cmd = [sys.executable, "-m", "invoke", "export", "--model", "edgeport/models/tiny-llama", "--out", str(out), *args]
    if "--target" not in args:
        cmd[4:4] = ["--target", "cpu"]
    r = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(message)
    assert list(tmp_path.iterdir()) == []


def _tool(name):
    """The oracle, built here if this machine has not built it yet (about 10 minutes, once,
    cached): the test does not rely on another test file having built it first."""
    from edgeport.core import llama_tools as lt
    from edgeport.core.errors import RuntimeUnavailable

    try:
        return lt.tool(name, build=True)
    except RuntimeUnavailable as e:
        unavailable(f"the {name} oracle", str(e))


# the dense Llama, and the gpt-oss MoE path the default export takes: per-expert sums and counts
# (ffn_*_exps, accumulated by the tokens routed to each expert) and per-expert quantization
ORACLE_MODELS = ["tiny-llama", "tiny-gpt-oss"]


@pytest.mark.slow
@pytest.mark.parametrize("model", ORACLE_MODELS)
def test_collection_identical_to_llama_imatrix(model, gguf_dir, tmp_path):
    """Our in-process sums and counts equal llama-imatrix's (same llama.cpp commit) bit for bit, run
    one 512-token chunk per batch as we do (`-b 512`; its default -b 2048 batches four chunks,
    which reorders float additions: measured within 2.4e-6 relative of ours)."""
    f16 = gguf_of(MODELS / model, gguf_dir)
    text = tmp_path / "cal.txt"
    text.write_text(_text(30000, 2).rstrip("\n"))
    ours = compute(f16, load_calibration(text), max_chunks=4)
    r = subprocess.run([str(_tool("llama-imatrix")), "-m", str(f16), "-f", str(text), "-o", str(tmp_path / "t.gguf"),
                        "--chunks", "4", "--no-ppl", "-b", "512"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    theirs = IMatrix.read(tmp_path / "t.gguf")
    assert theirs.chunk_count == ours.chunk_count == 4 and set(theirs.sums) == set(ours.sums)
    for k in ours.sums:
        assert np.array_equal(theirs.counts[k], ours.counts[k]), k
        assert np.array_equal(theirs.sums[k], ours.sums[k]), k
    if model == "tiny-gpt-oss":  # the MoE path was really compared: per-expert rows, experts reached
        exps = [k for k in ours.sums if "_exps" in k]
        assert exps and all(ours.sums[k].shape[0] == 4 and ours.counts[k].shape[0] == 4 for k in exps), exps
        assert all((ours.counts[k] > 0).sum() >= 2 for k in exps)


def _oracle_schemes():
    for model in ORACLE_MODELS:
        for scheme in ("Q5_K_M", "Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_XS", "IQ3_M", "IQ2_M"):
            if model == "tiny-llama" or scheme in ("Q4_K_M", "Q2_K", "IQ3_M"):  # gpt-oss: one per family
                yield pytest.param(model, scheme)


@pytest.mark.slow
@pytest.mark.parametrize("model,scheme", list(_oracle_schemes()))
def test_quantized_identical_to_llama_quantize_imatrix(model, scheme, gguf_dir, tmp_path):
    """Given the same imatrix file, our tensors are byte-identical to `llama-quantize --imatrix`."""
    f16 = gguf_of(MODELS / model, gguf_dir)
    m = compute(f16, load_calibration(), max_chunks=4)
    m.write(tmp_path / "imatrix.gguf")
    quantize(f16, tmp_path / "ours.gguf", scheme, imatrix=IMatrix.read(tmp_path / "imatrix.gguf"))
    r = subprocess.run([str(_tool("llama-quantize")), "--imatrix", str(tmp_path / "imatrix.gguf"), str(f16),
                        str(tmp_path / "theirs.gguf"), scheme], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    ours, theirs = (gguf.GGUFReader(tmp_path / f) for f in ("ours.gguf", "theirs.gguf"))
    a = {t.name: (t.tensor_type, bytes(t.data)) for t in ours.tensors}
    b = {t.name: (t.tensor_type, bytes(t.data)) for t in theirs.tensors}
    assert a.keys() == b.keys()
    assert [n for n in a if a[n] != b[n]] == []
    for k in ("quantize.imatrix.dataset", "quantize.imatrix.entries_count", "quantize.imatrix.chunks_count"):
        assert ours.fields[k].contents() == theirs.fields[k].contents(), k


def test_iquant_refused_without_imatrix_by_llama_cpp_too(llama_dir, gguf_dir, tmp_path):
    """Below edgeport's own refusal: llama.cpp's IQ2 types cannot be made without an imatrix."""
    with pytest.raises(QuantizationError, match="imatrix"):
        quantize(gguf_of(llama_dir, gguf_dir), tmp_path / "q.gguf", "IQ2_M")
    assert not (tmp_path / "q.gguf").exists()
