"""jetson target: Edge-LLM INT8 ONNX + kit, TensorRT-LLM v0.12 W8A16 kit, simulated parity,
gpt-oss refusal / fallback, the exporter's silent tensor dropping caught, device runtimes'
clear errors and device-output parity."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from edgeport import runtimes
from edgeport.core import manifest as mf
from edgeport.core.errors import QuantizationError, RuntimeUnavailable, TargetError
from edgeport.export import edgellm, jetson_kit
from edgeport.export.pipeline import export
from edgeport.runtimes.simulated import SimulatedRuntime, trtllm_w8a16

pytestmark = pytest.mark.toolenv
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def edge_int8(exported):
    return exported("jetson-llama-int8")


@pytest.fixture(scope="module")
def trt_kit(exported):
    return exported("jetson6-llama")


def test_edgellm_int8_onnx_kit_and_simulated_parity(edge_int8):
    import onnx

    path, m = edge_int8
    llm = path / "llm"
    assert {"model.onnx", "model.onnx.data", "embedding.safetensors", "tokenizer.json", "config.json"} <= {
        p.name for p in llm.iterdir()}
    onnx.checker.check_model(str(llm / "model.onnx"))
    g = onnx.load(str(llm / "model.onnx"), load_external_data=False)
    ops = [(n.domain, n.op_type) for n in g.graph.node]
    q = ops.count(("", "QuantizeLinear"))
    assert q == 4 * 4  # per layer: shared qkv input, o, shared gate/up input, down
    assert ops.count(("", "DequantizeLinear")) == 4 * 7 + q  # one per int8 weight + one per activation
    assert ops.count(("trt_edgellm", "AttentionPlugin")) == 4
    assert {n.op_type for n in g.graph.node if n.op_type.startswith("Quant")} == {"QuantizeLinear"}
    for name in ("build_engine.sh", "run.sh"):
        assert os.access(path / name, os.X_OK)
    build = (path / "build_engine.sh").read_text()
    lim = m["runtime"]["options"]["limits"]
    assert '"$LLM_BUILD" --onnxDir ./llm --engineDir ./engine' in build
    assert f"MAX_KV_CACHE_CAPACITY:-{lim['max_kv_cache_capacity']}" in build
    req = json.loads((path / "input.json").read_text())
    assert len(req["requests"]) == 6 and req["top_k"] == 1
    assert m["runtime"]["name"] == "edgellm" and m["parity"]["mode"] == "simulated"
    assert m["parity"]["notes"][0].startswith("SIMULATED")
    assert m["quantization"]["variant"] == "edgellm-int8"
    assert sum(v.startswith("int8") for v in m["quantization"]["per_tensor"].values()) == 28
    assert m["tools"]["tensorrt-edgellm"] == "0.11.0"
    e2e = m["parity"]["stages"]["end_to_end"]
    assert e2e["passed"] and 0 < e2e["summary"]["mean_kl"] < 0.01
    assert max(m["parity"]["long_prompt_tokens"]) == 512


def test_int8_w8a16_keeps_the_int8_weights_without_activation_qdq(llama_dir, tmp_path):
    import onnx

    path, m = export(str(llama_dir), "jetson", tmp_path / "w8a16", quantization="int8-w8a16")
    g = onnx.load(str(path / "llm" / "model.onnx"), load_external_data=False)
    ops = [n.op_type for n in g.graph.node]
    assert ops.count("QuantizeLinear") == 0 and ops.count("DequantizeLinear") == 28
    assert m["runtime"]["parity_options"] == {"quantize_activations": False}
    e2e = m["parity"]["stages"]["end_to_end"]
    assert "fp16 activations" in e2e["compares"] and e2e["passed"] and e2e["summary"]["top1"] > 0.99


def test_simulation_uses_the_artifacts_own_int8_weights_and_scales(edge_int8):
    path, _ = edge_int8
    rt = SimulatedRuntime(path / "checkpoint")
    assert rt.scheme == "W8A8_SQ_PER_CHANNEL" and len(rt.quantized) == 28
    lin = rt.model.model.layers[1].mlp.down_proj
    with safe_open(str(path / "checkpoint" / "model.safetensors"), "pt") as f:
        w = f.get_tensor("model.layers.1.mlp.down_proj.weight")
        ws = f.get_tensor("model.layers.1.mlp.down_proj.weight_scale")
        s_in = f.get_tensor("model.layers.1.mlp.down_proj.input_scale")
    assert w.dtype == torch.int8
    assert torch.equal(lin.w, (w.float() * ws[:, None]).half().float())
    assert lin.in_scale == pytest.approx(float(s_in))
    x = torch.randn(3, lin.w.shape[1]) * 4  # activation quantization: at most 255 levels per row
    xs = (x * lin.smooth).half().float()
    qx = torch.clamp(torch.round(xs / lin.in_scale), -128, 127)
    assert torch.allclose(lin(x), torch.nn.functional.linear((qx * lin.in_scale).half().float(), lin.w), atol=1e-4)


def test_trtllm_w8a16_kit_matches_what_v012_loads(trt_kit, llama_dir):
    path, m = trt_kit
    cfg = json.loads((path / "trtllm_checkpoint" / "config.json").read_text())
    assert cfg["architecture"] == "LlamaForCausalLM" and cfg["dtype"] == "float16"
    assert cfg["quantization"] == {"quant_algo": "W8A16", "kv_cache_quant_algo": None}
    # v0.12's QuantConfig / Mapping raise TypeError on keys they do not have
    assert set(cfg["mapping"]) <= {"world_size", "rank", "gpus_per_node", "cp_size", "tp_size", "pp_size",
                                   "moe_tp_size", "moe_ep_size"}
    assert cfg["mapping"]["world_size"] == cfg["mapping"]["tp_size"] * cfg["mapping"]["pp_size"]
    hf = json.loads((llama_dir / "config.json").read_text())
    H, heads, kv = hf["hidden_size"], hf["num_attention_heads"], hf["num_key_value_heads"]
    inter = hf["intermediate_size"]
    hs = H // heads
    want = {"transformer.vocab_embedding.weight": [hf["vocab_size"], H], "transformer.ln_f.weight": [H],
            "lm_head.weight": [hf["vocab_size"], H]}
    for i in range(hf["num_hidden_layers"]):
        p = f"transformer.layers.{i}."
        want |= {p + "input_layernorm.weight": [H], p + "post_layernorm.weight": [H],
                 p + "attention.qkv.weight": [(heads + 2 * kv) * hs, H],
                 p + "attention.dense.weight": [H, heads * hs],
                 p + "mlp.fc.weight": [inter, H], p + "mlp.gate.weight": [inter, H], p + "mlp.proj.weight": [H, inter]}
    with safe_open(str(path / "trtllm_checkpoint" / "rank0.safetensors"), "pt") as f:
        assert {k: list(f.get_slice(k).get_shape()) for k in f.keys()} == want
        assert {f.get_slice(k).get_dtype() for k in f.keys()} == {"F16"}
        with safe_open(str(llama_dir / "model.safetensors"), "pt") as src:
            # fc is HF gate_proj (under the activation), gate is up_proj
            assert torch.equal(f.get_tensor("transformer.layers.2.mlp.fc.weight"),
                               src.get_tensor("model.layers.2.mlp.gate_proj.weight").half())
            assert torch.equal(f.get_tensor("transformer.layers.2.mlp.gate.weight"),
                               src.get_tensor("model.layers.2.mlp.up_proj.weight").half())
            qkv = f.get_tensor("transformer.layers.0.attention.qkv.weight")
            k = src.get_tensor("model.layers.0.self_attn.k_proj.weight").half()
            assert torch.equal(qkv[heads * hs:(heads + kv) * hs], k)
    build = (path / "build_engine.sh").read_text()
    assert "trtllm-build --checkpoint_dir ./trtllm_checkpoint" in build and "--max_seq_len" in build
    assert m["quantization"]["variant"] == "trtllm-w8a16" and m["parity"]["mode"] == "simulated"
    assert m["parity"]["stages"]["end_to_end"]["summary"]["top1"] > 0.99
    inputs = json.loads((path / "eval_inputs.json").read_text())
    eos = hf["eos_token_id"]
    assert len(inputs["prompts"]) == 10 and inputs["end_id"] == (eos[0] if isinstance(eos, list) else eos)


def test_trtllm_symmetric_quantize_formula():
    """TensorRT-LLM's symmetric_quantize: scale = amax/128 (fp16), round half away from zero,
    clamp [-128, 127]: the column max lands on 128 and clips to 127."""
    w = torch.tensor([[1.0, -0.5, 0.25, 3 / 256], [0.0, 0.0, 0.0, 0.0]])
    q, s = trtllm_w8a16(w, torch)
    assert s.dtype == torch.float16 and float(s[0]) == pytest.approx(1 / 128) and float(s[1]) == 0
    assert q[0].tolist() == [127, -64, 32, 2]  # 1.5 -> 2 (half away from zero; torch.round gives 2 too)
    q2, _ = trtllm_w8a16(torch.tensor([[1.0, 2.5 / 128]]), torch)
    assert q2[0, 1] == 3  # 2.5 -> 3 away from zero, where round-half-even gives 2
    assert q[1].tolist() == [0, 0, 0, 0]


def test_gpt_oss_refused_with_the_alternative_or_built_with_fallback(mxfp4_dir, tmp_path):
    with pytest.raises(TargetError, match="--fallback") as e:
        export(str(mxfp4_dir), "jetson", tmp_path / "j")
    assert "--target vllm" in str(e.value) and "drops the router" in str(e.value)
    assert not (tmp_path / "j").exists()
    path, m = export(str(mxfp4_dir), "jetson", tmp_path / "j", fallback=True, parity=False)
    assert m["target"] == "vllm" and m["fallback"]["requested_target"] == "jetson"
    assert (path / "config.json").is_file() and mf.load(path)["fallback"]["produced_target"] == "vllm"
    r = subprocess.run([sys.executable, "-m", "invoke", "export", "--target", "jetson", "--model", str(mxfp4_dir),
                        "--out", str(tmp_path / "k")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "--fallback" in r.stderr and not (tmp_path / "k").exists()


def test_edgellm_silent_tensor_dropping_is_caught(gpt_oss_dir, tmp_path):
    """Edge-LLM's exporter exits 0 on gpt-oss after skipping the router, experts and sinks;
    the loader-log check turns that into an error, for any architecture it does not know."""
    with pytest.raises(QuantizationError, match=r"skipped 28 of 71"):
        edgellm.export_onnx(gpt_oss_dir, tmp_path / "onnx", tmp_path / "export.log")
    assert "Loaded 43 tensors, skipped 28" in (tmp_path / "export.log").read_text()


def test_loader_log_check():
    assert edgellm.check_loader_log("x\nINFO loader: Loaded 39 tensors, skipped 0 from /m\n", ROOT) == 39
    with pytest.raises(QuantizationError, match="skipped 2 of 41"):
        edgellm.check_loader_log("Loaded 39 tensors, skipped 2 from /m", ROOT)
    with pytest.raises(QuantizationError, match="nothing shows"):
        edgellm.check_loader_log("exported fine", ROOT)


def test_precision_and_device_guards(llama_dir, tmp_path):
    with pytest.raises(TargetError, match="FP8"):
        export(str(llama_dir), "jetson", tmp_path / "a", quantization="fp8")
    with pytest.raises(TargetError, match="int8"):
        export(str(llama_dir), "jetson", tmp_path / "b", quantization="int4", policy={"jetpack": "6"})
    with pytest.raises(TargetError, match="unknown device"):
        export(str(llama_dir), "jetson", tmp_path / "c", policy={"device": "orin-pico"})


def test_limits_follow_device_memory_and_model():
    cfg = {"num_attention_heads": 32, "num_key_value_heads": 8, "hidden_size": 4096, "num_hidden_layers": 32,
           "max_position_embeddings": 131072}
    assert jetson_kit.kv_bytes_per_token(cfg) == 2 * 32 * 8 * 128 * 2  # K and V, fp16
    agx = {"memory_gib": 64, "usable_fraction": 0.7, "max_batch_size": 4, "max_input_len": 4096,
           "max_kv_tokens": 32768}
    big = jetson_kit.size_limits("orin-agx-64gb", agx, cfg, 8 * 2**30)
    assert big["max_kv_cache_capacity"] == 32768
    small = {"memory_gib": 8, "usable_fraction": 0.5, "max_batch_size": 1, "max_input_len": 1024,
             "max_kv_tokens": 4096}
    lim = jetson_kit.size_limits("orin-nano-8gb", small, cfg, int(3.5 * 2**30))
    assert lim["max_kv_cache_capacity"] == int((4 * 2**30 - 3.5 * 2**30) // (2 * 32 * 8 * 128 * 2))
    with pytest.raises(TargetError, match="bigger device"):
        jetson_kit.size_limits("orin-nano-8gb", small, cfg, 8 * 2**30)


def test_device_runtimes_fail_with_one_clear_line(edge_int8, trt_kit):
    with pytest.raises(RuntimeUnavailable, match="CUDA GPU") as e:
        runtimes.load(edge_int8[0])
    assert "\n" not in str(e.value)
    with pytest.raises(RuntimeUnavailable, match=r"tensorrt_llm|CUDA GPU"):
        runtimes.load(trt_kit[0])


def test_int4_awq_unpacking_reconstructs_the_source(llama_dir, tmp_path):
    """The int4 layout the simulation assumes (row pairs in low/high nibbles, two's complement)
    is the one that gives back the source weights; the others are far off."""
    from edgeport.runtimes.simulated import unpack_int4_rows

    ckpt = tmp_path / "q4"
    edgellm.quantize(llama_dir, ckpt, "int4", 16, tmp_path / "q.log")
    name = "model.layers.0.self_attn.q_proj"
    with safe_open(str(ckpt / "model.safetensors"), "np") as f:
        packed, s = f.get_tensor(f"{name}.weight"), f.get_tensor(f"{name}.weight_scale")
        pqs = f.get_tensor(f"{name}.pre_quant_scale").astype(np.float32)
    with safe_open(str(llama_dir / "model.safetensors"), "pt") as f:
        w = f.get_tensor(f"{name}.weight").float().numpy()
    group = packed.shape[1] // s.shape[1]
    deq = unpack_int4_rows(packed).astype(np.float32) * np.repeat(s, group, axis=1)
    err = np.linalg.norm(deq * pqs[None, :] - w) / np.linalg.norm(w)
    swapped = unpack_int4_rows(packed)[[i ^ 1 for i in range(2 * packed.shape[0])]].astype(np.float32)
    err_swapped = np.linalg.norm(swapped * np.repeat(s, group, axis=1) * pqs[None, :] - w) / np.linalg.norm(w)
    assert err < 0.15 and err_swapped > 1.0  # 4-bit groups of 128: ~11 % relative error is int4 itself
    shutil.rmtree(ckpt)


def test_trtllm_kit_serve_script(trt_kit, tmp_path):
    """serve.sh: shellcheck-clean; without an engine, one line and exit 2; with one, it execs
    edgeport's front (`python3 -m edgeport.serving`) on this kit with HOST/PORT/QUEUE/API_KEY_ENV."""
    path, _ = trt_kit
    script = path / "serve.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["shellcheck", str(script)], check=True)
    kit = tmp_path / "kit"
    shutil.copytree(path, kit)
    r = subprocess.run(["bash", str(kit / "serve.sh")], capture_output=True, text=True)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "build_engine.sh" in r.stderr
    # with an engine: the python3 it runs is a recorder of its arguments
    (kit / "engine").mkdir()
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    (bin_ / "python3").write_text("#!/bin/sh\n[ \"$1\" = -c ] && exit 0\necho \"$PWD $*\"\n")
    (bin_ / "python3").chmod(0o755)
    env = {**os.environ, "PATH": f"{bin_}:{os.environ['PATH']}", "PORT": "9001", "API_KEY_ENV": "MY_KEY"}
    r = subprocess.run(["bash", str(kit / "serve.sh"), "--ctx", "512"], capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(kit), "-m", "edgeport.serving", "--artifact", ".", "--host", "127.0.0.1", "--port",
                                "9001", "--queue", "16", "--api-key-env", "MY_KEY", "--ctx", "512"]
