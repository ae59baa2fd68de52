"""The Jetson proof covers what ships: llm/ (Edge-LLM's ONNX and its external data) must hold the
checkpoint that simulated parity scores, bit for bit and wired where each linear computes. A
perturbed graph (one scale x2, a flipped int8 value, a re-wired scale) passes the op-count checks
and the simulation, which never read llm/; it must fail export and `invoke parity --artifact`."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from edgeport.core.errors import QuantizationError
from edgeport.export import edgellm
from edgeport.export.pipeline import export

pytestmark = pytest.mark.toolenv
ROOT = Path(__file__).resolve().parent.parent
L1_DOWN = "model.layers.1.mlp.down_proj"


@pytest.fixture(scope="module")
def art(llama_dir, tmp_path_factory) -> Path:
    """An int8 (W8A8 SmoothQuant) artifact, parity left to the tests."""
    path, _ = export(str(llama_dir), "jetson", tmp_path_factory.mktemp("g") / "int8", parity=False,
                     policy={"calibration_samples": 16})
    return path


@pytest.fixture
def copy(art, tmp_path) -> Path:
    return Path(shutil.copytree(art, tmp_path / "a"))


def poke(llm: Path, name: str, fn) -> None:
    """Rewrite one initializer in place in the graph's external data (model.onnx is untouched)."""
    m = onnx.load(str(llm / "model.onnx"), load_external_data=False)
    t = next(t for t in m.graph.initializer if t.name == name)
    info = {e.key: e.value for e in t.external_data}
    dt = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
    off, n = int(info["offset"]), int(info["length"])
    mm = np.memmap(llm / info["location"], np.uint8, "r+")
    a = np.frombuffer(mm[off:off + n].tobytes(), dt).reshape(tuple(t.dims))
    new = np.asarray(fn(a.copy()), dt)
    assert new.shape == a.shape and new.tobytes() != a.tobytes()
    mm[off:off + n] = np.frombuffer(new.tobytes(), np.uint8)
    mm.flush()
    del mm


def first_x2(a):
    a.reshape(-1)[0] *= 2
    return a


def problems(d: Path, precision: str = "int8", ckpt: Path | None = None) -> list[str]:
    return edgellm.verify_graph(d / "llm", ckpt or d / "checkpoint", precision)


def ops_still_pass(d: Path, precision: str = "int8") -> None:
    """What the graph check alone sees: op counts. Every perturbation here passes it."""
    cfg = json.loads((d / "checkpoint" / "config.json").read_text())
    edgellm.check_graph(d / "llm" / "model.onnx", precision, cfg["num_hidden_layers"],
                        edgellm.checkpoint_weights(d / "checkpoint"))


def test_int8_graph_holds_the_checkpoint_bit_for_bit(art):
    rep = edgellm.artifact_check(art / "llm", art / "checkpoint", "int8")
    assert rep["passed"] and rep["failures"] == []
    # 28 int8 weights + their scales, Q and DQ scale per linear (56), 28 smoothing factors,
    # 9 norms, lm_head, embedding
    assert rep["tensors"] == 28 + 28 + 56 + 28 + 9 + 1 + 1


def test_one_scale_x2_fails_invoke_parity(copy):
    """The edited graph fails the re-run (exit 1, the tensor named); since llm/ no longer matches
    the manifest, the failure is said and nothing is recorded: manifest.json (and parity.json,
    where the artifact has one) stay as export sealed them."""
    poke(copy / "llm", f"_model.{L1_DOWN}.weight_scale", first_x2)
    ops_still_pass(copy)
    before = {f.name: f.read_bytes() for f in (copy / "manifest.json", copy / "parity.json") if f.is_file()}
    r = subprocess.run([sys.executable, "-m", "invoke", "parity", "--artifact", str(copy)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 1, r.stdout[-2000:] + r.stderr[-2000:]
    err = " ".join(r.stderr.split())
    # the simulation scores checkpoint/, untouched: every stage passes; the bit-for-bit check fails
    assert f"artifact check (llm/ graph tensors -> checkpoint/ (bit for bit), 151 tensors): FAIL {L1_DOWN}" in err
    assert f"{L1_DOWN}.weight_scale (graph `_model.{L1_DOWN}.weight_scale`): 1 of 256 values differ" in err
    assert "the failure is not recorded" in err and "llm/model.onnx.data was changed" in err, err[-2000:]
    assert {f: (copy / f).read_bytes() for f in before} == before


@pytest.mark.parametrize("name,fn,expect", [
    # activation scale: deduplicated, one initializer serves every Q/DQ -> each linear reports it
    ("_model.model.layers.0.self_attn.q_proj.input_scale", lambda a: a * 2,
     "model.layers.0.mlp.down_proj.input_scale (QuantizeLinear)"),
    ("_model.model.layers.2.self_attn.o_proj.pre_quant_scale", first_x2,
     "model.layers.2.self_attn.o_proj.pre_quant_scale"),
    ("_model.model.layers.3.mlp.up_proj.weight", lambda a: np.where(np.arange(a.size).reshape(a.shape) == 7, ~a, a),
     "model.layers.3.mlp.up_proj.weight (graph"),
    ("_model.model.layers.0.input_layernorm.weight", first_x2, "model.layers.0.input_layernorm.weight"),
    ("_model.lm_head.weight", first_x2, "lm_head.weight"),
])
def test_each_perturbation_is_named(copy, name, fn, expect):
    poke(copy / "llm", name, fn)
    ops_still_pass(copy)
    found = problems(copy)
    assert found and any(p.startswith(expect) for p in found), found
    assert all("values differ" in p for p in found)


def test_embedding_is_checked(copy):
    from safetensors.numpy import load_file, save_file

    emb = load_file(str(copy / "llm" / "embedding.safetensors"))
    emb["embedding"][5, 3] *= 2
    save_file(emb, str(copy / "llm" / "embedding.safetensors"))
    found = problems(copy)
    assert len(found) == 1 and found[0].startswith("model.embed_tokens.weight (embedding.safetensors): 1 of "), found


def test_rewiring_is_caught_though_every_value_is_intact(copy):
    """Values alone are not the proof: k and v of layer 0 swap weight scales (same shape), and
    the down projection's input skips its smoothing Mul."""
    path = copy / "llm" / "model.onnx"
    m = onnx.load(str(path), load_external_data=False)
    dq = {n.input[0]: n for n in m.graph.node if n.op_type == "DequantizeLinear"}
    k, v = (dq[f"_model.model.layers.0.self_attn.{p}_proj.weight"] for p in "kv")
    k.input[1], v.input[1] = v.input[1], k.input[1]
    smooth = next(n for n in m.graph.node if n.op_type == "Mul" and f"_model.{L1_DOWN}.pre_quant_scale" in n.input)
    q = next(n for n in m.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == smooth.output[0])
    q.input[0] = smooth.input[0]
    m.graph.node.remove(smooth)
    onnx.save(m, str(path))
    onnx.checker.check_model(str(path))
    found = problems(copy)
    for a, b in (("k", "v"), ("v", "k")):
        assert any(p.startswith(f"model.layers.0.self_attn.{a}_proj.weight_scale (graph `_model.model.layers.0."
                                f"self_attn.{b}_proj.weight_scale`): ") for p in found), found
    assert f"{L1_DOWN}: no smoothing Mul(x, pre_quant_scale) feeds it" in found
    assert f"{L1_DOWN}.pre_quant_scale: graph tensor `_model.{L1_DOWN}.pre_quant_scale` is read by no node" in found
    assert len(found) == 4, found


def test_export_refuses_a_graph_that_does_not_hold_its_checkpoint(art, llama_dir, tmp_path, monkeypatch):
    """Export time: the real Edge-LLM export, its output perturbed before the check runs."""
    real = edgellm.export_onnx

    def quantize(src, out, precision, samples, log):  # the fixture's checkpoint: same quantizer
        shutil.copytree(art / "checkpoint", out)

    def export_onnx(ckpt, out, log, extra=None):
        llm = real(ckpt, out, log, extra)
        poke(llm, f"_model.{L1_DOWN}.weight_scale", first_x2)
        return llm

    monkeypatch.setattr(edgellm, "quantize", quantize)
    monkeypatch.setattr(edgellm, "export_onnx", export_onnx)
    out = tmp_path / "bad"
    with pytest.raises(QuantizationError, match=rf"does not hold checkpoint/ bit for bit \(1 problems\): "
                                                rf"{L1_DOWN}\.weight_scale"):
        export(str(llama_dir), "jetson", out, parity=False)
    assert not out.exists()


def test_w8a16_graph_from_the_same_checkpoint(art, tmp_path):
    llm = edgellm.export_onnx(art / "checkpoint", tmp_path / "w8a16", tmp_path / "export.log",
                              ["--no-quantize-activations"])
    assert edgellm.verify_graph(llm, art / "checkpoint", "int8-w8a16") == []
    # the W8A8 proof of it fails: no activation Q/DQ where the checkpoint has input scales
    assert any("is not Q/DQ-quantized" in p for p in edgellm.verify_graph(llm, art / "checkpoint", "int8"))
    poke(llm, "_model.model.layers.1.mlp.gate_proj.pre_quant_scale", first_x2)
    assert [p.split(" (")[0] for p in edgellm.verify_graph(llm, art / "checkpoint", "int8-w8a16")] == [
        "model.layers.1.mlp.gate_proj.pre_quant_scale", "model.layers.1.mlp.up_proj.pre_quant_scale"]


def test_int4_layouts_scales_and_smoothing(llama_dir, tmp_path):
    """INT4 AWQ: the plugin's repacked nibbles (cuteDSL V2, and the legacy AWQ swizzle of V1),
    fp16 transposed group scales and smoothing; the unquantized MLP as folded fp16 W.T."""
    ckpt = tmp_path / "q4"
    edgellm.quantize(llama_dir, ckpt, "int4", 16, tmp_path / "q.log")
    v2 = edgellm.export_onnx(ckpt, tmp_path / "v2", tmp_path / "v2.log")
    v1 = edgellm.export_onnx(ckpt, tmp_path / "v1", tmp_path / "v1.log", ["--int4-gemm-plugin-version", "1"])
    for llm, op in ((v2, "Int4GroupwiseGemmPluginV2"), (v1, "Int4GroupwiseGemmPlugin")):
        g = onnx.load(str(llm / "model.onnx"), load_external_data=False)
        assert sum(n.op_type == op for n in g.graph.node) == 16
        assert edgellm.verify_graph(llm, ckpt, "int4") == []
    poke(v2, "_model.model.layers.1.self_attn.k_proj.weight_scale", first_x2)
    poke(v1, "_model.model.layers.0.self_attn.q_proj.weight", lambda a: a ^ np.int8(1))
    assert edgellm.verify_graph(v2, ckpt, "int4")[0].startswith(
        "model.layers.1.self_attn.k_proj.weight_scale (transposed, fp16) (graph")
    assert edgellm.verify_graph(v1, ckpt, "int4")[0].startswith(
        "model.layers.0.self_attn.q_proj.weight (Int4GroupwiseGemmPlugin layout)")
    mlp = next(n for n in onnx.load(str(v2 / "model.onnx"), load_external_data=False).graph.node
               if n.op_type == "MatMul" and not n.input[1].startswith("_model."))
    poke(v2, mlp.input[1], first_x2)
    assert any(p.startswith("model.layers.0.mlp.gate_proj.weight (fp16, transposed)")
               for p in edgellm.verify_graph(v2, ckpt, "int4"))


def test_fp16_graph_against_the_source(llama_dir, tmp_path):
    """FP16: the source's bf16 weights cast to fp16; q/k/v fused into one folded constant."""
    llm = edgellm.export_onnx(llama_dir, tmp_path / "f", tmp_path / "f.log")
    assert edgellm.verify_graph(llm, llama_dir, "fp16") == []
    fused = next(n for n in onnx.load(str(llm / "model.onnx"), load_external_data=False).graph.node
                 if n.op_type == "MatMul")
    poke(llm, fused.input[1], first_x2)
    assert edgellm.verify_graph(llm, llama_dir, "fp16")[0].startswith(
        "model.layers.0.self_attn.q_proj.weight + model.layers.0.self_attn.k_proj.weight + "
        "model.layers.0.self_attn.v_proj.weight (fp16, transposed)")


def test_int4_repacks_are_permutations():
    """Each layout moves every nibble exactly once (so a bit-exact match is a layout match)."""
    rng = np.random.default_rng(0)
    nib = rng.integers(0, 16, (128, 256), dtype=np.uint8)
    for repack in (edgellm.repack_cutedsl, edgellm.repack_awq):
        out = repack(nib).view(np.uint8)
        got = np.sort(np.concatenate([out & 0xF, out >> 4]).ravel())
        assert np.array_equal(got, np.sort(nib.ravel()))
    packed = rng.integers(0, 256, (4, 8), dtype=np.uint8)
    two = edgellm.unpack_nibbles(packed).astype(np.int8) - 8  # the plugin's (nibble - 8)
    from edgeport.runtimes.simulated import unpack_int4_rows
    assert np.array_equal(two, unpack_int4_rows(packed))


def test_a_tensor_stored_once_is_checked_for_every_module_that_reads_it(exported, tmp_path):
    """Edge-LLM stores equal initializers once: a random-init model's norms (all ones) become one
    tensor read by every norm. Each norm's own checkpoint weight must still equal what it reads."""
    path, m = exported("jetson-random-llama")
    assert m["parity"]["artifact_check"]["passed"]
    ckpt = Path(shutil.copytree(path / "checkpoint", tmp_path / "ck"))
    from safetensors.torch import load_file, save_file

    f = next(ckpt.glob("*.safetensors"))
    t = load_file(str(f))
    t["model.layers.2.input_layernorm.weight"] = t["model.layers.2.input_layernorm.weight"] * 2
    save_file(t, str(f), metadata={"format": "pt"})
    problems = edgellm.verify_graph(path / "llm", ckpt, "int8")
    assert len(problems) == 1 and problems[0].startswith("model.layers.2.input_layernorm.weight (graph `")
