"""What edgeport says about an artifact holds (issue #19): the gate refuses non-finite logits on
every runtime family, JSON is strict, a harmless command cannot re-bless an edited artifact,
manifests carry no local paths, and a typo in a threshold override is an error."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeport import targets
from edgeport.benchmarking.cases import case_model
from edgeport.core import manifest as mf
from edgeport.core.errors import ParityFailure, TargetError
from edgeport.core.source import scan_safetensors
from tests.conftest import ROOT


def strict_json(path: Path):
    """json.load that refuses NaN / Infinity, as strict parsers (and the issue's check) do."""
    def refuse(c):
        raise ValueError(f"{path.name}: non-standard JSON constant {c}")

    return json.loads(path.read_text(), parse_constant=refuse)


# --- poisoning: one non-finite value in the weights the gate scores, as a broken kernel or an
# overflowing scale would leave it ----------------------------------------------------------------

def _poison_safetensors(files: list[Path], suffix: str) -> str:
    """NaN into the first element of the (final) norm weight: every position's logits go NaN."""
    for f in files:
        for e in scan_safetensors(f):
            if e.name.endswith(suffix):
                nan = {"BF16": b"\xc0\x7f", "F16": b"\x00\x7e", "F32": np.float32("nan").tobytes()}[e.dtype]
                with open(f, "r+b") as fh:
                    fh.seek(e.start)
                    fh.write(nan)
                return e.name
    raise AssertionError(f"no tensor *{suffix} in {[f.name for f in files]}")


# byte offset of the f16 scale `d` in the first block, per GGML type (ggml-common.h's block layouts)
_GGML_D = {"Q8_0": 0, "Q4_0": 0, "Q5_0": 0, "Q4_K": 0, "Q5_K": 0, "Q6_K": 208, "F16": 0}


def poison_gguf(path: Path) -> str:
    """The output projection's first block scale set to NaN: token 0's logit is NaN at every
    position. (A NaN in a norm weight does not do it: llama.cpp quantizes activations to Q8 for
    the matmul, and its max-abs scale search skips NaN, so the NaN vanishes.)"""
    from gguf import GGUFReader

    r = GGUFReader(path, "r+")
    t = next(t for t in r.tensors if t.name == "output.weight")
    at = _GGML_D[t.tensor_type.name]
    t.data.reshape(-1).view(np.uint8)[at:at + 2] = np.frombuffer(np.float16("nan").tobytes(), np.uint8)
    r.data.flush()
    return f"{t.name} ({t.tensor_type.name})"


def poison_onnx(d: Path) -> str:
    """The lm_head's first block scale (MatMulNBits' float scales) set to NaN: token 0's logit
    is NaN everywhere. (A NaN norm weight vanishes: accuracy_level 4 quantizes activations to
    int8, as llama.cpp does.)"""
    import onnx

    m = onnx.load(str(d / "model.onnx"), load_external_data=False)
    t = next(t for t in m.graph.initializer if t.name.startswith("lm_head") and t.name.endswith("_scales"))
    assert t.data_type == onnx.TensorProto.FLOAT, t.data_type
    ext = {kv.key: kv.value for kv in t.external_data}
    with open(d / ext["location"], "r+b") as fh:
        fh.seek(int(ext.get("offset", 0)))
        fh.write(np.float32("nan").tobytes())
    return t.name


def poison_hf(d: Path) -> str:
    return _poison_safetensors(sorted(d.glob("*.safetensors")), "model.norm.weight")


def poison_trtllm(d: Path) -> str:
    return _poison_safetensors(sorted(d.glob("*.safetensors")), "ln_f.weight")


# runtime family -> (model, target, policy, poison the scored input)
FAMILIES = {
    "llama.cpp": ("tiny-llama", "cpu", None, poison_gguf),
    "onnxruntime": ("tiny-llama", "onnx", None, poison_onnx),
    "transformers": ("tiny-gpt-oss", "vllm", None, poison_hf),
    "simulated": ("tiny-llama", "jetson", {"jetpack": "6"}, poison_trtllm),
}
# the export case of each family the rest of the suite builds anyway
FAMILY_CASE = {"llama.cpp": "cpu-llama", "onnxruntime": "onnx-llama-int8", "transformers": "vllm-gpt-oss",
               "simulated": "jetson6-llama"}


def _family_params():
    """llama.cpp (the default target) in the default suite, every family in CI's (--slow)."""
    for name in FAMILIES:
        marks = ([pytest.mark.toolenv] if name == "onnxruntime" else []) + ([pytest.mark.slow] if name != "llama.cpp"
                                                                          else [])
        yield pytest.param(name, marks=marks)


@pytest.mark.parametrize("family", list(_family_params()))
def test_export_gate_refuses_non_finite_logits(family, tmp_path, monkeypatch):
    """The writer's output holds a NaN (poisoned just before the gate scores it): the export
    fails with a one-line reason naming the stage, the prompt and the position, and writes
    nothing. On 6726e68 this export passed: NaN > limit is false."""
    from edgeport.export import pipeline

    model, target, policy, poison = FAMILIES[family]
    real = pipeline.run_parity
    poisoned = []

    def run_parity(job, runtime, inputs, variant, *, root):
        poisoned.append(poison(Path(inputs["quantized"])))
        return real(job, runtime, inputs, variant, root=root)

    monkeypatch.setattr(pipeline, "run_parity", run_parity)
    out = tmp_path / "out"
    with pytest.raises(ParityFailure) as e:
        pipeline.export(str(case_model(model, tmp_path)), target, out, policy=policy)
    msg = str(e.value)
    assert poisoned and "\n" not in msg, msg
    assert "quantization: candidate logits not finite" in msg or "end_to_end: candidate logits not finite" in msg, msg
    assert "first at prompt " in msg and " position 0" in msg, msg
    assert not out.exists() and not list(tmp_path.glob(".out.*"))


@pytest.mark.parametrize("family", list(_family_params()))
def test_parity_rerun_refuses_non_finite_logits(family, exported, tmp_path):
    """`invoke parity` on an artifact whose shipped weights hold a NaN, its manifest consistent
    (re-sealed over the poisoned file): exit 1, the reason on the terminal, parity.json strict
    JSON recording the failure, and the manifest's parity no longer says passed."""
    src, m = exported(FAMILY_CASE[family])
    art = tmp_path / "art"
    shutil.copytree(src, art)
    rt = m["runtime"]
    scored = rt.get("parity_model", rt["model_file"])
    FAMILIES[family][3](art / scored)
    mf.seal(art, mf.load(art))  # consistent: the files are as the manifest says
    r = subprocess.run([sys.executable, "-m", "invoke", "parity", "--artifact", str(art)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    out = r.stdout + r.stderr
    assert r.returncode == 1, out[-3000:]
    assert "Traceback" not in out and "parity failed" in r.stderr
    report = strict_json(art / "parity.json")
    assert not report["passed"]
    fails = [f for s in report["stages"].values() for f in s["failures"]]
    assert any(f.startswith("candidate logits not finite") for f in fails), fails
    assert strict_json(art / "manifest.json")["parity"]["passed"] is False
    mf.verify(art)  # the failure was recorded without breaking the seal


def test_summary_of_non_finite_logits_is_strict_json_and_fails():
    from edgeport.parity.metrics import check, compare_logits, summarize

    rng = np.random.default_rng(0)
    ref = rng.normal(size=(10, 7))
    cand = ref.copy()
    cand[4, 2] = np.nan
    cand[6, :] = np.inf
    s = summarize([compare_logits("p1", "short", [i % 7 for i in range(11)], ref, cand)])
    json.dumps(s, allow_nan=False)  # raises on NaN
    assert s["mean_kl"] is None and s["nonfinite_logits"]["candidate"]["positions"] == 2
    fails = check(s, {"mean_kl_max": 1.0, "top1_min": 0.0})
    assert fails[0] == "candidate logits not finite at 2 position(s) of 1 prompt(s), first at prompt p1 position 4"
    assert "mean_kl is not finite (threshold mean_kl_max = 1)" in fails
    # the reference side too (a broken source, or a reference kernel)
    s = summarize([compare_logits("p2", "long", [i % 7 for i in range(11)], cand, ref)])
    assert check(s, {})[0].startswith("reference logits not finite at 2 position(s)")


# --- manifest integrity ----------------------------------------------------------------------------

def _invoke(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "invoke", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout)


def test_edit_then_bench_then_push_is_refused(exported, tmp_path):
    """Flip a byte of the model file; `invoke bench` says so and leaves manifest.json (and the
    artifact) byte-identical; `invoke push` still refuses. On 6726e68 bench re-hashed every file
    and push then accepted the edited weights with the old parity verdict."""
    src, m = exported("cpu-llama")
    art = tmp_path / "art"
    shutil.copytree(src, art)
    model = art / m["runtime"]["model_file"]
    with open(model, "r+b") as f:
        f.seek(model.stat().st_size // 2)
        b = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([b[0] ^ 0xFF]))
    before = (art / "manifest.json").read_bytes()
    listing = sorted(p.name for p in art.iterdir())
    r = _invoke("bench", "--artifact", str(art), "--reps", "1", "--no-raw")
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and f"{m['runtime']['model_file']} was changed" in r.stderr, r.stderr
    assert (art / "manifest.json").read_bytes() == before and sorted(p.name for p in art.iterdir()) == listing
    r = _invoke("push", "--artifact", str(art), "--to", f"file://{tmp_path / 'layout'}:v1")
    assert r.returncode == 2 and "changed after export" in r.stderr, r.stdout + r.stderr


def test_record_adds_results_without_resealing(exported, tmp_path):
    """bench / device results: new files get entries, every other entry stays as sealed, and
    the write is refused (manifest untouched) once another file differs."""
    src, _ = exported("cpu-llama")
    art = tmp_path / "art"
    shutil.copytree(src, art)
    sealed = mf.load(art)
    m = mf.record(art, {"bench": {"x": 1}}, {"bench.json": lambda p: p.write_text("{}\n")})
    assert m["parity"] == sealed["parity"] and m["bench"] == {"x": 1}
    assert [e for e in m["files"] if e["path"] != "bench.json"] == sealed["files"]
    mf.verify(art)
    (art / "chat_template.jinja").write_text("{{ edited }}")  # any listed file
    before = (art / "manifest.json").read_bytes()
    with pytest.raises(mf.ManifestMismatch, match=r"chat_template\.jinja was changed"):
        mf.record(art, {"bench": {"x": 2}}, {"bench.json": lambda p: p.write_text("{\"x\": 2}\n")})
    assert (art / "manifest.json").read_bytes() == before and (art / "bench.json").read_text() == "{}\n"


def test_manifest_write_is_atomic(tmp_path, monkeypatch):
    """A write that fails half-way (here: a value JSON cannot hold) leaves the old manifest."""
    d = tmp_path / "a"
    d.mkdir()
    (d / "w.bin").write_bytes(b"x")
    mf.seal(d, {"schema": mf.SCHEMA, "parity": None})
    before = (d / "manifest.json").read_bytes()
    with pytest.raises(ValueError):
        mf.seal(d, {"schema": mf.SCHEMA, "parity": {"mean_kl": float("nan")}})
    assert (d / "manifest.json").read_bytes() == before and sorted(p.name for p in d.iterdir()) == ["manifest.json",
                                                                                                   "w.bin"]


# --- no local paths ---------------------------------------------------------------------------------

def test_manifest_carries_no_local_paths(tmp_path, llama_dir):
    """An export from an absolute source path with the user's own calibration file: neither
    path (nor the home directory) is in manifest.json or parity.json, which push publishes;
    the source is its directory name and content digest, the calibration its name and digest.
    `invoke parity` still finds the source on this machine by that digest."""
    where = tmp_path / "private-place"
    src = shutil.copytree(llama_dir, where / "my-llama")
    calib = where / "secret-calibration.txt"
    calib.write_text(" ".join(f"word{i} and some text" for i in range(3000)))
    out = tmp_path / "out"
    r = _invoke("export", "--target", "cpu", "--model", str(src), "--out", str(out), "--calibration", str(calib),
                timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    for f in out.rglob("*"):  # every file push would publish, the GGUF and imatrix.gguf included
        if f.is_file():
            data = f.read_bytes()
            assert b"private-place" not in data and str(Path.home()).encode() + b"/" not in data, f.name
    m = strict_json(out / "manifest.json")
    assert (m["source"]["model"], m["source"]["hub"]) == ("my-llama", False)
    assert m["source"]["digest"] == mf.source_digest(m["source"]["files"])
    assert m["quantization"]["imatrix"]["dataset"]["name"] == "secret-calibration.txt"
    from edgeport.core.source import Source
    from edgeport.export.pipeline import source_location

    # found by content: this directory, or an identical copy exported from since (models/tiny-llama)
    assert Source.open(source_location(m)).checksums() == m["source"]["files"]


def test_unknown_source_asks_for_it(tmp_path):
    from edgeport.core.errors import SourceError
    from edgeport.export.pipeline import source_location

    m = {"source": {"model": "gone", "hub": False, "digest": "sha256:" + "0" * 64}}
    with pytest.raises(SourceError, match="pass --source DIR"):
        source_location(m)
    assert source_location(m, tmp_path) == str(tmp_path)


# --- profile validation ------------------------------------------------------------------------------

@pytest.mark.parametrize("table, msg", [
    ("[parity.thresholds.quantization.Q2_k]\nmean_kl_max = 1\n", "quantization.Q2_k"),
    ("[parity.thresholds.fidelity.gpt-os]\nmean_kl_max = 1\n", "fidelity.gpt-os"),
    ('[parity.thresholds.end_to_end."gpt-oss/mxfp4-sorce"]\nmean_kl_max = 1\n', "mxfp4-sorce"),
])
def test_override_sub_table_typo_is_an_error(table, msg, tmp_path, monkeypatch):
    """On 6726e68 these loaded, and the override silently fell back to the generic threshold."""
    for f in targets.HERE.glob("*.toml"):
        (tmp_path / f.name).write_text(f.read_text())
    monkeypatch.setattr(targets, "HERE", tmp_path)
    (tmp_path / "x.toml").write_text('extends = "cpu"\n' + table)
    with pytest.raises(TargetError, match=f"{msg}.*names no architecture, variant or quantization"):
        targets.load("x")
    (tmp_path / "y.toml").write_text('extends = "cpu"\n[parity.thresholds.quantization.Q2_K]\nmean_kl_max = 1\n'
                                     '[parity.thresholds.fidelity."gpt-oss/mxfp4-source"]\nmean_kl_max = 1\n')
    targets.load("y")  # the right names load
