"""The importance matrix costs what it is worth: computed once per (source, calibration, chunks,
llama.cpp) and reused from the cache by every later export; `--imatrix FILE` takes one already
made (llama.cpp's imatrix.gguf or legacy .dat), checked against the model. The llama-imatrix
oracle runs are slow (they need llama.cpp's tools, built on first use)."""

import json
import shutil
import struct
import subprocess
import sys

import gguf
import numpy as np
import pytest

from edgeport.core.errors import CalibrationError, QuantizationError
from edgeport.core.source import sha256_file
from edgeport.export import gguf_export
from edgeport.export.gguf_quantize import quantize
from edgeport.export.imatrix import CACHE_ENV, IMatrix, compute, load_calibration, read_given
from edgeport.export.pipeline import export
from edgeport.models import MODELS
from tests.conftest import ROOT, gguf_of
from tests.test_imatrix import _text, _tool


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """A private imatrix cache, and a count of the matrices really computed."""
    d = tmp_path / "imatrix-cache"
    monkeypatch.setenv(CACHE_ENV, str(d))
    calls = []
    real = gguf_export.compute

    def counted(*a, **kw):
        calls.append(a[0])
        return real(*a, **kw)

    monkeypatch.setattr(gguf_export, "compute", counted)
    return d, calls


@pytest.fixture
def cal(tmp_path):
    """A few chunks of calibration text: the default set's 113 would cost a minute per export."""
    p = tmp_path / "cal.txt"
    p.write_text(_text(3600, 5))
    return p


def _export(model, out, scheme="Q4_K_M", **policy):
    return export(str(model), "cpu", out, parity=False, quantization=scheme, policy=policy or None)


def _model_bytes(path, m):
    return (path / m["runtime"]["model_file"]).read_bytes()


def test_cache_hit_on_reexport(cache, cal, tmp_path):
    """The second and third exports (another quantization, the same one again) reuse the first
    one's matrix: not recomputed, the same bytes shipped, the same quantized model; a damaged
    entry is computed again."""
    d, calls = cache
    p1, m1 = _export(MODELS / "tiny-llama", tmp_path / "q4", calibration=str(cal))
    im1 = m1["quantization"]["imatrix"]
    assert len(calls) == 1 and (im1["origin"], im1["cached"]) == ("computed", False)
    assert sorted(f.suffix for f in d.iterdir()) == [".gguf", ".json"]
    p2, m2 = _export(MODELS / "tiny-llama", tmp_path / "q2", "Q2_K", calibration=str(cal))
    p3, m3 = _export(MODELS / "tiny-llama", tmp_path / "q4-again", calibration=str(cal))
    assert len(calls) == 1, "the cached importance matrix was computed again"
    for m in (m2, m3):
        im = m["quantization"]["imatrix"]
        assert (im["origin"], im["cached"], im["cache_key"]) == ("cache", True, im1["cache_key"])
        assert im["sha256"] == im1["sha256"] and im["chunks"] == im1["chunks"] >= 2
        assert im["tokens"] == im1["chunks"] * 512 and im["dataset"] == im1["dataset"]
    assert (p2 / "imatrix.gguf").read_bytes() == (p1 / "imatrix.gguf").read_bytes()
    assert _model_bytes(p3, m3) == _model_bytes(p1, m1)
    assert len(list(d.iterdir())) == 2  # still the one entry
    assert "cache" not in json.dumps(m1["files"])  # the cache's path is nowhere in the manifest
    assert str(d) not in json.dumps(m2)
    # an entry whose file no longer matches its record is a miss (computed again), not a wrong matrix
    (entry,) = d.glob("*.gguf")
    entry.write_bytes(entry.read_bytes()[:-8])
    _, m4 = _export(MODELS / "tiny-llama", tmp_path / "after-damage", "Q2_K", calibration=str(cal))
    assert len(calls) == 2 and m4["quantization"]["imatrix"]["origin"] == "computed"
    assert m4["quantization"]["imatrix"]["sha256"] == sha256_file(entry) == im1["sha256"]


def _change_one_weight(src, dst):
    """A copy of the checkpoint with one value of one weight changed (a mantissa bit of the first
    element of blk 0's q projection)."""
    shutil.copytree(src, dst)
    f = dst / "model.safetensors"
    raw = bytearray(f.read_bytes())
    n = struct.unpack_from("<Q", raw)[0]
    header = json.loads(raw[8:8 + n])
    name = next(k for k in header if k.endswith("layers.0.self_attn.q_proj.weight"))
    raw[8 + n + header[name]["data_offsets"][0]] ^= 0x40
    f.write_bytes(raw)


def test_cache_invalidated_by_source_and_calibration(cache, cal, tmp_path):
    d, calls = cache
    _, base = _export(MODELS / "tiny-llama", tmp_path / "base", calibration=str(cal))
    _change_one_weight(MODELS / "tiny-llama", tmp_path / "changed-llama")
    _, changed = _export(tmp_path / "changed-llama", tmp_path / "changed", calibration=str(cal))
    other = tmp_path / "other.txt"
    other.write_text(_text(7200, 5)[3600:])  # the text after cal's: another calibration whatever the files are
    assert other.read_text() != cal.read_text()
    _, recal = _export(MODELS / "tiny-llama", tmp_path / "recal", calibration=str(other))
    assert len(calls) == 3
    ims = [m["quantization"]["imatrix"] for m in (base, changed, recal)]
    assert [im["origin"] for im in ims] == ["computed"] * 3
    assert len({im["cache_key"] for im in ims}) == 3 and len({im["sha256"] for im in ims}) == 3
    assert len(list(d.glob("*.gguf"))) == 3


def test_given_imatrix_gguf_is_used_and_recorded(cache, cal, tmp_path):
    """--imatrix FILE: the file is shipped byte for byte, recorded by name and sha256 (no path),
    nothing computed, and the quantized model equals the one made with the matrix computed here."""
    _d, calls = cache
    p1, m1 = _export(MODELS / "tiny-llama", tmp_path / "computed", calibration=str(cal))
    given = tmp_path / "mine" / "published-imatrix.gguf"
    given.parent.mkdir()
    shutil.copyfile(p1 / "imatrix.gguf", given)
    p2, m2 = _export(MODELS / "tiny-llama", tmp_path / "given", imatrix_file=str(given))
    assert len(calls) == 1
    im = m2["quantization"]["imatrix"]
    assert (im["origin"], im["provided_by"], im["given"]["name"], im["given"]["format"]) == \
        ("given", "the user (--imatrix)", "published-imatrix.gguf", "gguf")
    assert im["given"]["sha256"] == im["sha256"] == sha256_file(given)
    assert str(given.parent) not in json.dumps(m2)
    assert _model_bytes(p2, m2) == _model_bytes(p1, m1)


@pytest.fixture(scope="module")
def gpt_oss_imatrix(tmp_path_factory, gguf_dir):
    p = tmp_path_factory.mktemp("wrong") / "gpt-oss-imatrix.gguf"
    cal_path = p.parent / "cal.txt"
    cal_path.write_text(_text(3600, 5))
    compute(gguf_of(MODELS / "tiny-gpt-oss", gguf_dir), load_calibration(cal_path), max_chunks=2).write(p)
    return p


def test_wrong_model_imatrix_refused_by_the_cli(gpt_oss_imatrix, tmp_path):
    out = tmp_path / "a"
    r = subprocess.run([sys.executable, "-m", "invoke", "export", "--target", "cpu", "--model",
                        "edgeport/models/tiny-llama", "--out", str(out), "--imatrix", str(gpt_oss_imatrix)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert last.startswith("edgeport: error: importance matrix gpt-oss-imatrix.gguf is not for this model: ")
    assert "ffn_" in last
    assert list(tmp_path.iterdir()) == []


def _one_line(fn, match):
    with pytest.raises(QuantizationError, match=match) as e:
        fn()
    assert "\n" not in str(e.value)


def test_given_imatrix_refusals(cache, tmp_path, gguf_dir, gpt_oss_imatrix):
    """Misfits and malformed files are one line and leave nothing; nothing is computed or cached."""
    d, calls = cache
    # the same tensor names at other sizes: a shape misfit, found before anything is quantized
    m = IMatrix.read(gpt_oss_imatrix)
    gguf_model = gguf_of(MODELS / "tiny-llama", gguf_dir)
    llama = gguf.GGUFReader(gguf_model)
    names = [t.name for t in llama.tensors if t.name.startswith("blk.") and t.name.endswith(".weight")
             and len(t.shape) == 2]
    m.sums = {n: np.ones((1, 7), np.float32) for n in names}
    m.counts = {n: np.array([512], np.int64) for n in names}
    m.write(tmp_path / "misfit.gguf")
    (tmp_path / "garbage.dat").write_bytes(b"\x02\x00\x00\x00not an imatrix")
    cases = [("misfit.gguf", r"misfit\.gguf is not for this model: blk\.0\.\S+ holds 7 values in 1 matrices"),
             ("garbage.dat", "neither a GGUF importance matrix nor llama.cpp's legacy .dat"),
             ("nowhere.gguf", "does not exist"),
             (str(gguf_model), "not a GGUF imatrix")]  # a model given where its imatrix belongs
    for name, match in cases:
        out = tmp_path / "out"
        _one_line(lambda name=name, out=out: _export(MODELS / "tiny-llama", out, imatrix_file=str(tmp_path / name)),
                  match)
        assert not out.exists()
    given = str(tmp_path / "misfit.gguf")
    _one_line(lambda: _export(MODELS / "tiny-llama", tmp_path / "o", imatrix_file=given, imatrix=False),
              "--no-imatrix turns off")
    _one_line(lambda: _export(MODELS / "tiny-llama", tmp_path / "o", imatrix_file=given, calibration="x.txt"),
              "give one or the other")
    _one_line(lambda: _export(MODELS / "tiny-llama", tmp_path / "o", "Q8_0", imatrix_file=given),
              "Q8_0 is quantized without an importance matrix")
    assert calls == [] and not d.exists() and not (tmp_path / "o").exists()


# --- the oracle: llama-imatrix's own files ------------------------------------------------------

def _llama_imatrix(f16, cal, out, *extra):
    """llama-imatrix on the unquantized GGUF, the calibration text named as we name it (run from
    its folder), one 512-token chunk per batch as we run it (`-b 512`)."""
    r = subprocess.run([str(_tool("llama-imatrix")), "-m", str(f16), "-f", cal.name, "-o", str(out),
                        "--no-ppl", "-b", "512", *extra], cwd=cal.parent, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("model", ["tiny-llama", "tiny-gpt-oss"])
def test_llama_imatrix_gguf_gives_the_same_gguf(model, cache, cal, gguf_dir, tmp_path):
    """--imatrix with llama-imatrix's imatrix.gguf (same calibration, same chunks) gives the very
    GGUF the export makes computing the matrix itself, byte for byte."""
    _d, calls = cache
    p1, m1 = _export(MODELS / model, tmp_path / "computed", calibration=str(cal))
    theirs = _llama_imatrix(gguf_of(MODELS / model, gguf_dir), cal, tmp_path / "theirs.gguf")
    p2, m2 = _export(MODELS / model, tmp_path / "given", imatrix_file=str(theirs))
    assert len(calls) == 1
    assert m2["quantization"]["imatrix"]["given"]["sha256"] == sha256_file(theirs)
    assert m2["quantization"]["imatrix"]["chunks"] == m1["quantization"]["imatrix"]["chunks"] >= 2
    if model == "tiny-llama":
        assert _model_bytes(p2, m2) == _model_bytes(p1, m1)
        return
    # gpt-oss: its experts are kept MXFP4, so the export does not measure them and its matrix has
    # fewer entries than llama-imatrix's; every tensor and every other key is the same
    a, b = (gguf.GGUFReader(p / m["runtime"]["model_file"]) for p, m in ((p1, m1), (p2, m2)))
    assert {t.name: bytes(t.data) for t in a.tensors} == {t.name: bytes(t.data) for t in b.tensors}
    count = "quantize.imatrix.entries_count"
    kv = [{k: f.contents() for k, f in r.fields.items() if k != count and not k.startswith("GGUF.")} for r in (a, b)]
    assert kv[0] == kv[1]
    ours, theirs = IMatrix.read(p1 / "imatrix.gguf"), IMatrix.read(theirs)
    assert a.fields[count].contents() == len(ours.sums) < b.fields[count].contents() == len(theirs.sums)
    assert set(theirs.sums) - set(ours.sums) == {k for k in theirs.sums if "_exps" in k}


@pytest.mark.slow
def test_llama_imatrix_legacy_dat(cache, cal, gguf_dir, tmp_path):
    """--imatrix with llama-imatrix's legacy .dat: quantized exactly as `llama-quantize --imatrix
    x.dat` quantizes, and shipped as an imatrix.gguf that the quantizer reads to the same values
    (the dense Llama: the gpt-oss export quantizes from a GGUF with its experts made MXFP4 first)."""
    model = "tiny-llama"
    f16 = gguf_of(MODELS / model, gguf_dir)
    dat = _llama_imatrix(f16, cal, tmp_path / "theirs.dat", "--output-format", "dat")
    assert dat.read_bytes()[:4] != b"GGUF"
    legacy, fmt = read_given(dat)
    assert fmt == "dat" and legacy.legacy and legacy.chunk_count >= 2 and legacy.datasets == ["cal.txt"]
    p, m = _export(MODELS / model, tmp_path / "given", imatrix_file=str(dat))
    im = m["quantization"]["imatrix"]
    assert (im["given"]["format"], im["given"]["name"], im["given"]["sha256"]) == ("dat", "theirs.dat",
                                                                                    sha256_file(dat))
    shipped = IMatrix.read(p / "imatrix.gguf").normalized()
    for k, v in legacy.normalized().items():
        assert np.array_equal(shipped[k], v), k
    r = subprocess.run([str(_tool("llama-quantize")), "--imatrix", str(dat), str(f16), str(tmp_path / "lq.gguf"),
                        "Q4_K_M"], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    a = {t.name: (t.tensor_type, bytes(t.data)) for t in gguf.GGUFReader(p / m["runtime"]["model_file"]).tensors}
    b = {t.name: (t.tensor_type, bytes(t.data)) for t in gguf.GGUFReader(tmp_path / "lq.gguf").tensors}
    assert a.keys() == b.keys() and [n for n in a if a[n] != b[n]] == []
    # and a quantization from the shipped file is that same model
    quantize(f16, tmp_path / "from-shipped.gguf", "Q4_K_M", imatrix=IMatrix.read(p / "imatrix.gguf"))
    c = {t.name: (t.tensor_type, bytes(t.data)) for t in gguf.GGUFReader(tmp_path / "from-shipped.gguf").tensors}
    assert [n for n in a if a[n] != c[n]] == []


def test_kept_experts_are_not_measured(cache, cal, tmp_path):
    """gpt-oss's experts stay MXFP4 (the quantizer keeps them): the export's matrix leaves them out
    (each measured MoE matmul halts llama.cpp's graph to copy its activations out), keeps every
    other weight, and quantizes the rest exactly as a matrix with the experts in would; with
    --bf16-experts kquant the experts are quantized with the matrix, so they are measured."""
    _d, calls = cache
    p1, _m1 = _export(MODELS / "tiny-gpt-oss", tmp_path / "kept", calibration=str(cal))
    kept = IMatrix.read(p1 / "imatrix.gguf")
    assert kept.sums and not [k for k in kept.sums if "_exps" in k]
    p2, _m2 = _export(MODELS / "tiny-gpt-oss", tmp_path / "kquant", calibration=str(cal), bf16_experts="kquant")
    full = IMatrix.read(p2 / "imatrix.gguf")
    assert len(calls) == 2, "a matrix without the experts cannot stand in for one with them"
    assert set(full.sums) - set(kept.sums) == {k for k in full.sums if "_exps" in k} != set()
    for k in kept.sums:  # the same pass: what both measured is the same
        assert np.array_equal(kept.sums[k], full.sums[k]) and np.array_equal(kept.counts[k], full.counts[k]), k


def test_budget_in_tokens(cache, tmp_path):
    """The default budget caps the chunks the matrix runs; --imatrix-tokens sets another (0: the
    whole set), which is part of the cache key."""
    from edgeport.export.imatrix import DEFAULT_BUDGET_TOKENS

    _d, calls = cache
    big = tmp_path / "big.txt"
    big.write_text(_text(400_000, 7))
    _, m1 = _export(MODELS / "tiny-llama", tmp_path / "default", calibration=str(big))
    assert m1["quantization"]["imatrix"]["chunks"] == DEFAULT_BUDGET_TOKENS // 512
    _, m2 = _export(MODELS / "tiny-llama", tmp_path / "two", calibration=str(big), imatrix_tokens=1024)
    assert m2["quantization"]["imatrix"]["chunks"] == 2 and len(calls) == 2
    _, m3 = _export(MODELS / "tiny-llama", tmp_path / "all", calibration=str(big), imatrix_tokens=0)
    assert m3["quantization"]["imatrix"]["chunks"] > DEFAULT_BUDGET_TOKENS // 512 and len(calls) == 3
    for bad, msg in ((100, "less than two chunks"), (-1, ">= 0")):
        with pytest.raises(QuantizationError if bad < 0 else CalibrationError, match=msg):
            _export(MODELS / "tiny-llama", tmp_path / f"bad{bad}", calibration=str(big), imatrix_tokens=bad)
    with pytest.raises(QuantizationError, match="does not apply with --no-imatrix"):
        _export(MODELS / "tiny-llama", tmp_path / "off", imatrix=False, imatrix_tokens=1024)
