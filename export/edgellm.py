"""TensorRT Edge-LLM (PyPI `tensorrt-edgellm` 0.11), driven in its own tool environment:
quantize (ModelOpt on CPU, calibrated on local text) and export the ONNX its `llm_build`
turns into an engine on the Jetson. Every step is checked, because its exit code is not
enough: exporting an architecture it does not know exits 0 after skipping tensors.
"""

from __future__ import annotations

import re
from pathlib import Path

from . import onnx_graph, toolenv
from .errors import QuantizationError

CALIBRATION = Path(__file__).parent / "data" / "calibration.jsonl"
# our precision -> edgellm's --quantization, and its exporter's extra flags
QUANTIZATION = {"int8": "int8_sq", "int8-w8a16": "int8_sq", "int4": "int4_awq"}
EXPORT_FLAGS = {"int8-w8a16": ["--no-quantize-activations"]}
LOADED = re.compile(r"Loaded (\d+) tensors, skipped (\d+)")


def quantize(src_dir: Path, out: Path, precision: str, samples: int, log: Path) -> str:
    env = toolenv.get("tensorrt-edgellm")
    return env.run(
        ["-m", "tensorrt_edgellm.scripts.quantize", "llm", "--model_dir", str(src_dir), "--output_dir", str(out),
         "--quantization", QUANTIZATION[precision], "--device", "cpu", "--num_samples", str(samples)],
        log=log, what=f"Edge-LLM quantize: {QUANTIZATION[precision]} on CPU, {samples} local calibration texts",
        # the quantizer's calibration set otherwise comes from a hub: point it at our file
        env_extra={"EDGELLM_QUANT_DATASET_CNN_DAILYMAIL": str(CALIBRATION)},
    )


def export_onnx(ckpt: Path, out: Path, log: Path, extra: list[str] | None = None) -> Path:
    env = toolenv.get("tensorrt-edgellm")
    text = env.run(["-c", "from tensorrt_edgellm.scripts.export import main; main()", str(ckpt), str(out),
                    *(extra or [])], log=log, what="Edge-LLM export: ONNX for llm_build")
    check_loader_log(text, ckpt)
    return out / "llm"


def check_loader_log(text: str, ckpt: Path) -> int:
    """Edge-LLM's exporter maps checkpoint tensors onto its own model and logs
    'Loaded N tensors, skipped M'; it exits 0 even when M > 0 (an architecture it does not
    know falls back to a plain Llama: gpt-oss loses its router, experts and sinks). Any skip,
    or no such line at all, is an error here."""
    found = LOADED.findall(text)
    if not found:
        raise QuantizationError(f"Edge-LLM export of {ckpt.name}: its log has no 'Loaded N tensors, skipped M' "
                                "line, so nothing shows that every tensor was used; refusing the graph")
    skipped = sum(int(m) for _, m in found)
    if skipped:
        loaded = sum(int(n) for n, _ in found)
        raise QuantizationError(f"Edge-LLM export of {ckpt.name} skipped {skipped} of {loaded + skipped} checkpoint "
                                "tensors (it exits 0 regardless): the graph would compute a different model. "
                                "Edge-LLM does not support this architecture")
    return sum(int(n) for n, _ in found)


def check_graph(path: Path, precision: str, n_layers: int, weights: dict[str, str]) -> onnx_graph.GraphReport:
    """onnx.checker, then the ops the precision demands: one AttentionPlugin per layer; int8: a
    weight DequantizeLinear per int8 weight of the checkpoint plus a Q/DQ pair per quantized
    activation (int8-w8a16: no activation Q/DQ); int4: an Int4 GEMM plugin per int4 weight;
    fp16: no quantization ops."""
    n8 = sum(1 for v in weights.values() if v.startswith("int8"))
    n4 = sum(1 for v in weights.values() if v.startswith("int4"))
    rep = onnx_graph.checked(path)
    ops = rep.ops
    problems = []
    if ops.get("trt_edgellm::AttentionPlugin", 0) != n_layers:
        problems.append(f"{ops.get('trt_edgellm::AttentionPlugin', 0)} AttentionPlugin nodes for {n_layers} layers")
    q, dq = ops.get("QuantizeLinear", 0), ops.get("DequantizeLinear", 0)
    int4_ops = sum(v for k, v in ops.items() if k.startswith("trt_edgellm::Int4"))
    if precision == "int8" and not (q > 0 and dq == n8 + q and n8 > 0):
        problems.append(f"int8 needs {n8} weight DequantizeLinear + one Q/DQ pair per activation; "
                        f"the graph has {q} QuantizeLinear, {dq} DequantizeLinear")
    if precision == "int8-w8a16" and not (q == 0 and dq == n8 and n8 > 0):
        problems.append(f"int8-w8a16 needs {n8} weight DequantizeLinear and no activation quantization; "
                        f"the graph has {q} QuantizeLinear, {dq} DequantizeLinear")
    if precision == "int4" and not (int4_ops == n4 and n4 > 0):
        problems.append(f"int4 needs {n4} Int4 GEMM plugin nodes; the graph has {int4_ops}")
    if precision == "fp16" and (q or dq or int4_ops):
        problems.append(f"fp16 graph has quantization ops ({q} Q, {dq} DQ, {int4_ops} int4)")
    if problems:
        raise QuantizationError(f"{path.name}: not the {precision} graph Edge-LLM should have made: "
                                + "; ".join(problems))
    return rep


def checkpoint_weights(ckpt: Path) -> dict[str, str]:
    """What the quantizer did to each linear weight of its output checkpoint."""
    from safetensors import safe_open

    out = {}
    for f in sorted(ckpt.glob("*.safetensors")):
        with safe_open(str(f), "np") as st:
            for k in st.keys():
                if not k.endswith(".weight") or "norm" in k:
                    continue
                dt = st.get_slice(k).get_dtype()
                out[k] = {"I8": "int8 (per-channel scale, SmoothQuant)", "U8": "int4 (AWQ, packed)"}.get(dt, dt.lower())
    return out
