"""Checks and rewrites on exported ONNX graphs. Graphs are read without their external data
(the weights are touched one initializer at a time), so nothing here grows with model size
beyond the largest tensor.

- `checked` / `check`: onnx.checker, plus op-type counts, so a quantization that silently did
  not happen (or a dense-expert graph) fails the export instead of shipping.
- `fix_sliding_windows`: onnxruntime-genai's gpt-oss builder assumes even layers slide; we set
  each attention's window from the checkpoint's `layer_types` instead.
- `rewrite_weights(int8=True)`: symmetric per-output-channel INT8 weights behind
  `DequantizeLinear` (zero point 0, axis set explicitly) - the weight-only pattern TensorRT's
  ONNX parser takes; onnxruntime runs it on any EP.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeport.core.errors import QuantizationError

CONTRIB = "com.microsoft"


def _schemas_registered() -> None:
    """onnxruntime-genai's graphs use onnxruntime's SimplifiedLayerNormalization, registered by
    onnxruntime in the ONNX domain but unknown to onnx itself; register the same signature
    so onnx.checker can validate everything else (contrib-domain ops it skips by design)."""
    import onnx
    from onnx.defs import OpSchema

    if onnx.defs.has("SimplifiedLayerNormalization"):
        return
    fp = ["tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)"]
    opt = OpSchema.FormalParameterOption.Optional
    onnx.defs.register_schema(OpSchema(
        "SimplifiedLayerNormalization", "", 1,
        inputs=[OpSchema.FormalParameter("X", "T"), OpSchema.FormalParameter("scale", "V")],
        outputs=[OpSchema.FormalParameter("Y", "V"),
                 OpSchema.FormalParameter("mean", "U", param_option=opt),
                 OpSchema.FormalParameter("inv_std_var", "U", param_option=opt)],
        type_constraints=[("T", fp, ""), ("U", ["tensor(float)", "tensor(double)"], ""), ("V", fp, "")],
        attributes=[OpSchema.Attribute("axis", OpSchema.AttrType.INT, ""),
                    OpSchema.Attribute("epsilon", OpSchema.AttrType.FLOAT, ""),
                    OpSchema.Attribute("stash_type", OpSchema.AttrType.INT, "")],
    ))


def load(path: Path):
    import onnx

    return onnx.load(str(path), load_external_data=False)


def attrs(node) -> dict:
    import onnx

    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


@dataclass
class GraphReport:
    ops: dict[str, int]
    quantized: dict[str, str] = field(default_factory=dict)  # weight initializer -> how it is stored
    float_matmul_weights: list[str] = field(default_factory=list)
    asymmetric: list[str] = field(default_factory=list)  # DequantizeLinear nodes with zero point != 0


def op_key(node) -> str:
    return f"{node.domain}::{node.op_type}" if node.domain not in ("", "ai.onnx") else node.op_type


def inspect(model) -> GraphReport:
    from onnx import numpy_helper

    init_protos = {t.name: t for t in model.graph.initializer}
    inits = set(init_protos)
    rep = GraphReport(dict(Counter(op_key(n) for n in model.graph.node)))
    for n in model.graph.node:
        a = attrs(n)
        if n.op_type == "MatMulNBits":
            rep.quantized[n.input[1]] = (f"MatMulNBits int{a['bits']} block {a['block_size']} "
                                         f"(accuracy_level {a.get('accuracy_level', 0)})")
        elif n.op_type == "QMoE":
            for w in (n.input[2], n.input[5]):
                rep.quantized[w] = f"QMoE int{a['expert_weight_bits']} block {a.get('block_size', 0) or 'per-row'}"
        elif n.op_type == "DequantizeLinear" and n.input[0] in inits:
            t = init_protos[n.input[0]]
            dtype = {3: "int8", 2: "uint8"}.get(t.data_type, f"onnx type {t.data_type}")
            rep.quantized[n.input[0]] = f"{dtype} Q/DQ axis {a['axis'] if 'axis' in a else 'unset'}"
            zp = init_protos.get(n.input[2]) if len(n.input) > 2 and n.input[2] else None
            if zp is None or zp.data_location == 1 or numpy_helper.to_array(zp).any():
                rep.asymmetric.append(n.name)
        elif n.op_type in ("MatMul", "Gemm") and len(n.input) > 1 and n.input[1] in inits:
            rep.float_matmul_weights.append(n.input[1])
    return rep


def checked(path: Path) -> GraphReport:
    """onnx.checker on the file (external data stays on disk), then what the graph holds."""
    import onnx

    _schemas_registered()
    try:
        # full_check (strict shape inference) is off: the genai builder's graphs carry value_info
        # that onnx's inference disagrees with on rank-0 constants, which onnxruntime accepts
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as e:
        raise QuantizationError(f"{path.name}: onnx.checker rejected the graph: {e}") from e
    return inspect(load(path))


def check(path: Path, expect: dict[str, int], *, no_float_matmul_weights: bool,
          bits: int | None = None, standard_ops_only: bool = False) -> GraphReport:
    """onnx.checker, then the op counts `expect` demands ({op: count}); raise on any miss."""
    rep = checked(path)
    problems = [f"{op}: {rep.ops.get(op, 0)} nodes, expected {n}" for op, n in expect.items()
                if rep.ops.get(op, 0) != n]
    if no_float_matmul_weights and rep.float_matmul_weights:
        problems.append(f"{len(rep.float_matmul_weights)} MatMul weights left unquantized "
                        f"(e.g. {rep.float_matmul_weights[0]})")
    if standard_ops_only and (custom := sorted(op for op in rep.ops if "::" in op)):
        problems.append(f"non-standard ops {custom}")
    if rep.asymmetric:
        problems.append(f"{len(rep.asymmetric)} DequantizeLinear with a non-zero zero point "
                        f"(e.g. {rep.asymmetric[0]})")
    if bits is not None:
        wrong = {w: how for w, how in rep.quantized.items() if f"int{bits} " not in how}
        if wrong:
            w, how = next(iter(wrong.items()))
            problems.append(f"{len(wrong)} weights not stored as int{bits} (e.g. {w}: {how})")
    if problems:
        raise QuantizationError(f"{path.name}: the graph is not what the requested precision makes: "
                                + "; ".join(problems))
    return rep


LAYER = re.compile(r"/layers\.(\d+)/")


def attention_windows(model, op: str = "GroupQueryAttention") -> dict[int, int]:
    out = {}
    for n in model.graph.node:
        if n.op_type == op and (m := LAYER.search(n.name)):
            out[int(m.group(1))] = int(attrs(n).get("local_window_size", -1))
    return out


def fix_sliding_windows(path: Path, layer_types: list[str], window: int) -> list[int]:
    """Make every layer's attention window follow `layer_types`; returns the layers changed."""
    import onnx

    model = load(path)
    want = {i: window if t == "sliding_attention" else -1 for i, t in enumerate(layer_types)}
    have = attention_windows(model)
    if set(have) != set(want):
        raise QuantizationError(f"{path.name}: attention nodes for layers {sorted(have)}, but the "
                                f"checkpoint has {len(layer_types)} layers")
    changed = [i for i in want if have[i] != want[i]]
    if changed:
        for n in model.graph.node:
            if n.op_type == "GroupQueryAttention" and (m := LAYER.search(n.name)):
                for a in n.attribute:
                    if a.name == "local_window_size":
                        a.i = want[int(m.group(1))]
        onnx.save(model, str(path))  # initializers keep pointing at the same external data
        if attention_windows(load(path)) != want:
            raise QuantizationError(f"{path.name}: could not set the sliding windows from layer_types")
    return changed


class _DataWriter:
    """Appends initializer bytes to one external-data file, one tensor at a time."""

    def __init__(self, path: Path):
        self.path, self.f, self.offset = path, open(path, "wb"), 0

    def put(self, tensor, array: np.ndarray) -> None:
        from onnx import TensorProto, helper

        new = TensorProto(name=tensor.name, data_type=helper.np_dtype_to_tensor_dtype(array.dtype),
                          dims=list(array.shape))
        raw = np.ascontiguousarray(array).tobytes()
        pad = -self.offset % 4096
        self.f.write(b"\0" * pad)
        self.offset += pad
        self.f.write(raw)
        tensor.CopyFrom(new)
        tensor.data_location = TensorProto.EXTERNAL
        for k, v in (("location", self.path.name), ("offset", str(self.offset)), ("length", str(len(raw)))):
            e = tensor.external_data.add()
            e.key, e.value = k, v
        self.offset += len(raw)

    def close(self) -> None:
        self.f.close()


def int8_per_channel(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """MatMul(x, W) with W [in, out]: symmetric INT8 with one scale per output channel (axis 1),
    amax / 127, round half to even (what DequantizeLinear inverts exactly)."""
    amax = np.abs(w).max(axis=0)
    scale = np.where(amax > 0, amax / 127.0, 1.0).astype(np.float32)
    return np.clip(np.rint(w / scale), -127, 127).astype(np.int8), scale


def rewrite_weights(src: Path, dst: Path, int8: bool) -> dict[str, dict]:
    """Copy the graph at `src` to `dst` (+ `dst.data`, one tensor in memory at a time); with
    `int8`, every 2-D MatMul weight is stored as symmetric per-output-channel INT8 behind
    DequantizeLinear. Returns per-weight records (shape, axis, max scale) for the manifest."""
    import onnx
    from onnx import helper, numpy_helper

    model = load(src)
    inits = {t.name: t for t in model.graph.initializer}
    targets = {n.input[1] for n in model.graph.node
               if int8 and n.op_type == "MatMul" and n.input[1] in inits and len(inits[n.input[1]].dims) == 2}
    writer = _DataWriter(dst.with_name(dst.name + ".data"))
    records: dict[str, dict] = {}
    new_nodes = []
    try:
        for t in list(model.graph.initializer):
            w = numpy_helper.to_array(t, base_dir=str(src.parent))  # this tensor only
            if t.name not in targets:
                writer.put(t, w)
                continue
            w = w.astype(np.float32)
            q, scale = int8_per_channel(w)
            qname, sname, zname = f"{t.name}_int8", f"{t.name}_scale", f"{t.name}_zero_point"
            writer.put(t, q)
            t.name = qname
            model.graph.initializer.append(numpy_helper.from_array(scale, sname))
            model.graph.initializer.append(numpy_helper.from_array(np.zeros_like(q[0]), zname))
            new_nodes.append(helper.make_node("DequantizeLinear", [qname, sname, zname], [f"{t.name}_dq"],
                                              name=f"{t.name}/DequantizeLinear", axis=1))
            records[t.name.removesuffix("_int8")] = {"shape": list(w.shape), "axis": 1, "dtype": "int8",
                                                     "symmetric": True, "max_scale": float(scale.max())}
            del w, q
    finally:
        writer.close()
    for n in model.graph.node:
        if n.op_type == "MatMul" and n.input[1] in targets:
            n.input[1] = f"{n.input[1]}_int8_dq"
    # DequantizeLinear nodes go first: each feeds only from initializers
    nodes = new_nodes + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if targets and not any(o.domain in ("", "ai.onnx") and o.version >= 13 for o in model.opset_import):
        raise QuantizationError(f"{src.name}: per-axis DequantizeLinear needs opset >= 13")
    onnx.save(model, str(dst))
    return records
