"""ONNX target exporter: graphs for onnxruntime on CPU, CUDA or TensorRT.

Two graph kinds, picked by the execution provider:
- `genai` (cpu, cuda): onnxruntime-genai's model builder - fused GroupQueryAttention (sinks,
  sliding windows), 8/4-bit `MatMulNBits`, sparse top-k `QMoE` experts for gpt-oss (the only
  route that keeps the MoE sparse). Driven by onnxruntime-genai at run time.
- `qdq` (tensorrt): optimum-onnx's standard-op graph with KV cache, weights rewritten here to
  symmetric per-output-channel INT8 behind DequantizeLinear. Llama family only: optimum
  computes every gpt-oss expert densely, which is not a deployment.

Both exporters run in their own pinned tool environments (export/toolenv.py). Every graph is
checked (onnx.checker, op counts the precision demands) before it is written.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from edgeport.core import toolenv
from edgeport.core.architectures import config_value
from edgeport.core.errors import QuantizationError, TargetError
from edgeport.core.progress import step
from edgeport.core.quant import GRAPH_FOR_EP, PRECISIONS
from edgeport.export import onnx_graph

from .formats import ExporterBase
from .hf_mxfp4 import write_mxfp4_checkpoint
from .jobs import Built, Job

# builder flags per precision; `-p int8` alone still makes 4-bit QMoE experts
BUILDER_ARGS = {
    "fp32": (["-p", "fp32"], {}),
    "int8": (["-p", "int8"], {"moe_quant_type": "int8"}),
    "int4": (["-p", "int4"], {}),
}
# a plain growing KV cache: the default windowed cache is driven only by onnxruntime-genai,
# and parity runs the same graph through a plain InferenceSession
BUILDER_OPTIONS = {"windowed_kv_cache": "false"}
SIDE_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def graph_kind(ep: str) -> str:
    if ep not in GRAPH_FOR_EP:
        raise TargetError(f"unknown execution provider {ep!r}; choose one of {', '.join(GRAPH_FOR_EP)}")
    return GRAPH_FOR_EP[ep]


def check_precision(kind: str, precision: str) -> str:
    p = precision.lower()
    if p not in PRECISIONS[kind]:
        raise QuantizationError(f"{kind} graphs take precision {' | '.join(PRECISIONS[kind])}, not {precision!r}")
    return p


class OnnxExporter(ExporterBase):
    runtime = "onnxruntime"

    # --- entry points ---------------------------------------------------------------------
    def export(self, job: Job, out: Path, work: Path) -> Built:
        ep = job.policy.get("ep") or job.profile.runtime_options.get("ep", "cpu")
        kind = graph_kind(ep)
        if (why := job.policy.get("refuse_ep", {}).get(ep)) is not None:
            raise TargetError(f"--ep {ep} does not take {job.arch.name}: {why}")
        precision = check_precision(kind, job.quantization)
        build = self._genai if kind == "genai" else self._qdq
        messages: list[str] = []
        graph, record = build(job, precision, ep, work / "graph", messages)
        _copy_graph(graph, out)
        inputs = {"quantized" if precision != "fp32" else "unquantized": out}
        if precision != "fp32":
            inputs["unquantized"] = self._fp32_for_parity(job, ep, work)
        variant = f"{kind}-{precision}" + ("-mxfp4-experts" if record.get("via_mxfp4") else "")
        return Built(
            runtime={"name": self.runtime, "model_file": ".", "options": {"ep": ep}, "graph": kind},
            quantization={"requested": precision, "variant": variant, "applied": record["applied"],
                          "per_tensor": record["per_tensor"]},
            parity_inputs=inputs, variant=variant, tools=record["tools"], messages=messages,
        )

    def unquantized(self, job: Job, work: Path) -> Path | None:
        if job.quantization == "fp32":
            return None
        return self._fp32_for_parity(job, job.policy.get("ep") or job.profile.runtime_options.get("ep", "cpu"), work)

    def _fp32_for_parity(self, job: Job, ep: str, work: Path) -> Path:
        """The fp32 graph of the same kind, for the fidelity stage. genai graphs are built for
        the CPU EP: the parity runs on CPU, and the builder's CUDA fp32 graph (MultiHeadAttention
        instead of GQA) declares KV outputs no node produces (onnx.checker rejects it)."""
        kind = graph_kind(ep)
        with step("building the fp32 graph for the fidelity stage"):
            if kind == "genai":
                return self._genai(job, "fp32", "cpu", work / "fp32", [])[0]
            return self._qdq(job, "fp32", ep, work / "fp32", [])[0]

    # --- onnxruntime-genai builder --------------------------------------------------------
    def _genai(self, job: Job, precision: str, ep: str, work: Path, messages: list[str]):
        work.mkdir(parents=True, exist_ok=True)
        src_dir = job.src.root
        if job.arch.moe and precision != "fp32" and not job.src.is_mxfp4:
            if job.policy.get("bf16_experts", "mxfp4") != "mxfp4":
                raise QuantizationError(
                    "onnxruntime-genai builds quantized experts (QMoE) only from MXFP4 blocks/scales; "
                    "this checkpoint has BF16 experts. Use bf16_experts = \"mxfp4\" (the default) or --precision fp32")
            src_dir = work / "mxfp4-source"
            with step("BF16 experts -> MXFP4 first (the builder makes QMoE only from MXFP4)"):
                write_mxfp4_checkpoint(job.src, src_dir)
            messages.append("BF16 experts were quantized to MXFP4 (OCP rule) before the builder "
                            f"re-quantized them to {precision} QMoE")
        check_builder_input(src_dir, job.arch.moe, precision)
        env = toolenv.get("onnxruntime-genai")
        flags, extra = BUILDER_ARGS[precision]
        options = {**BUILDER_OPTIONS, **extra}
        out = work / "out"
        env.run(["-m", "onnxruntime_genai.models.builder", "-i", str(src_dir), "-o", str(out), *flags,
                 "-e", ep, "-c", str(work / "cache"), "--extra_options",
                 *(f"{k}={v}" for k, v in options.items())],
                log=work / "builder.log", what=f"onnxruntime-genai builder: {precision} graph for {ep}")
        model = out / "model.onnx"
        changed = []
        if layer_types := config_value(job.src.config, "layer_types"):
            changed = onnx_graph.fix_sliding_windows(model, layer_types, job.src.config["sliding_window"])
            if changed:
                messages.append(f"the builder assumes even layers slide; set the attention windows of "
                                f"layers {changed} from the checkpoint's layer_types")
        rep = onnx_graph.check(model, _expected_genai(job, precision), bits=_bits(precision),
                               no_float_matmul_weights=precision != "fp32")
        gcfg = json.loads((out / "genai_config.json").read_text())
        if "sliding_window" in gcfg["model"]["decoder"]:
            raise QuantizationError("genai_config.json asks for a windowed KV cache; edgeport builds "
                                    "graphs with a plain cache (windowed_kv_cache=false)")
        for f in SIDE_FILES:  # our tokenizer files, not the builder's re-saved ones
            if (job.src.root / f).is_file():
                shutil.copy2(job.src.root / f, out / f)
        shutil.copy2(job.src.root / "config.json", out / "config.json")
        via_mxfp4 = src_dir != job.src.root
        return out, {
            "via_mxfp4": via_mxfp4,
            "applied": {"graph": "onnxruntime-genai", "ep": ep, "precision": precision, "ops": rep.ops,
                        "builder_options": options, "sliding_windows_fixed": changed,
                        "experts": ("BF16 -> MXFP4 (edgeport) -> QMoE" if via_mxfp4 else
                                    "MXFP4 (source) -> QMoE" if job.arch.moe and precision != "fp32" else None)},
            "per_tensor": rep.quantized,
            "tools": {p: env.version(p) for p in ("onnxruntime-genai", "onnxruntime", "onnx", "transformers", "torch")},
        }

    # --- optimum-onnx + INT8 Q/DQ ---------------------------------------------------------
    def _qdq(self, job: Job, precision: str, ep: str, work: Path, messages: list[str]):
        work.mkdir(parents=True, exist_ok=True)
        fp32 = work.parent / "optimum-fp32"
        env = toolenv.get("optimum-onnx")
        if not (fp32 / "model.onnx").is_file():  # one optimum export serves fp32 and int8
            compat = work.parent / "optimum-input"
            transformers4_input(job.src.root, job.src.config, compat)
            env.run(["-m", "optimum.exporters.onnx", "--model", str(compat), "--task",
                     "text-generation-with-past", str(fp32)],
                    log=work.parent / "optimum.log", what="optimum-onnx: standard-op graph with KV cache")
        out = work / "out"
        out.mkdir(exist_ok=True)
        n_linear = len(onnx_graph.inspect(onnx_graph.load(fp32 / "model.onnx")).float_matmul_weights)
        with step(f"weights -> {'symmetric per-channel INT8 Q/DQ' if precision == 'int8' else 'fp32'}"):
            records = onnx_graph.rewrite_weights(fp32 / "model.onnx", out / "model.onnx",
                                                 int8=precision == "int8")
        expect = {"DequantizeLinear": n_linear if precision == "int8" else 0, "QuantizeLinear": 0}
        rep = onnx_graph.check(out / "model.onnx", expect, bits=8 if precision == "int8" else None,
                               no_float_matmul_weights=precision == "int8", standard_ops_only=True)
        for f in SIDE_FILES:
            if (job.src.root / f).is_file():
                shutil.copy2(job.src.root / f, out / f)
        shutil.copy2(job.src.root / "config.json", out / "config.json")
        return out, {
            "applied": {"graph": "optimum-onnx standard ops", "ep": ep, "precision": precision, "ops": rep.ops,
                        "weights": "symmetric per-output-channel int8, DequantizeLinear axis=1, zero point 0"
                        if precision == "int8" else "fp32"},
            "per_tensor": {k: f"int8 Q/DQ axis {v['axis']} {v['shape']}" for k, v in records.items()},
            "tools": {p: env.version(p) for p in ("optimum-onnx", "optimum", "transformers", "torch", "onnx")},
        }


def _bits(precision: str) -> int | None:
    return {"int8": 8, "int4": 4}.get(precision)


def _expected_genai(job: Job, precision: str) -> dict[str, int]:
    n = job.src.config["num_hidden_layers"]
    expect = {"com.microsoft::GroupQueryAttention": n}
    if job.arch.moe:  # sparse experts, one MoE op per layer: never a dense expert graph
        expect["com.microsoft::QMoE" if precision != "fp32" else "com.microsoft::MoE"] = n
    if precision == "fp32":
        expect["com.microsoft::MatMulNBits"] = 0
    return expect


def check_builder_input(src_dir: Path, moe: bool, precision: str) -> None:
    """The builder makes QMoE from `*_blocks`/`*_scales` only and fails obscurely on BF16
    experts; say so before calling it."""
    if not moe or precision == "fp32":
        return
    idx = src_dir / "model.safetensors.index.json"
    names: list[str] = []
    if idx.is_file():
        names = list(json.loads(idx.read_text())["weight_map"])
    else:
        from safetensors import safe_open

        for f in src_dir.glob("*.safetensors"):
            with safe_open(str(f), "np") as st:
                names += list(st.keys())
    if not any(n.endswith("_blocks") for n in names):
        raise QuantizationError(f"{src_dir}: onnxruntime-genai builds {precision} QMoE experts only from "
                                "MXFP4 *_blocks/*_scales tensors, and this checkpoint has none (BF16 experts). "
                                "edgeport quantizes them to MXFP4 first; --precision fp32 needs no MXFP4")


def transformers4_input(root: Path, config: dict, dst: Path) -> None:
    """optimum-onnx pins transformers<4.58, which reads `rope_theta`/`rope_scaling` where 5.x
    writes `rope_parameters`: a config left as is silently gets the default RoPE base. Give it
    a copy that says both (weights and tokenizer linked, not copied)."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in root.iterdir():
        if f.name != "config.json" and f.is_file():
            os.symlink(f.resolve(), dst / f.name)
    cfg = dict(config)
    rp = cfg.get("rope_parameters") or {}
    if "rope_theta" in rp:
        cfg.setdefault("rope_theta", rp["rope_theta"])
    if rp.get("rope_type", "default") != "default":
        cfg.setdefault("rope_scaling", {k: v for k, v in rp.items() if k != "rope_theta"})
    (dst / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def _copy_graph(graph: Path, out: Path) -> None:
    for f in sorted(graph.iterdir()):
        if f.is_file():
            shutil.copy2(f, out / f.name)
