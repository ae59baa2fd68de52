"""TensorRT Edge-LLM (PyPI `tensorrt-edgellm` 0.11), driven in its own tool environment:
quantize (ModelOpt on CPU, calibrated on local text) and export the ONNX its `llm_build`
turns into an engine on the Jetson. Every step is checked, because its exit code is not
enough: exporting an architecture it does not know exits 0 after skipping tensors.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from edgeport.core import toolenv
from edgeport.core.errors import QuantizationError
from edgeport.core.kit_weights import unpack_int4_rows
from edgeport.export import onnx_graph

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


# --- llm/ against the checkpoint, bit for bit ---------------------------------------------------
# Simulated parity scores the checkpoint; the device runs llm/. This proves they hold the same
# numbers, read from the graph's own initializers (its external data, one tensor at a time), and
# that each linear's weight, scales and smoothing are wired where that linear computes. What
# Edge-LLM 0.11 writes (tensorrt_edgellm/checkpoint/repacking.py, models/linear.py):
#   int8 / int8-w8a16  DequantizeLinear(int8 W [out, in], fp32 per-row scale, axis 0) -> Cast fp16
#                      -> Transpose -> MatMul B; A = [Cast fp16 <- DQ <- Q(int8, fp32 input_scale,
#                      zero point 0) <-] Mul(x, fp16 pre_quant_scale): every tensor as stored in
#                      checkpoint/, no conversion (w8a16: no Q/DQ, input_scale unused by design).
#                      Linears sharing an input (q/k/v, gate/up) share one Mul + Q/DQ; identical
#                      tensors are deduplicated under one name, so scales are matched by wiring.
#   int4               Int4GroupwiseGemmPluginV2(x * pre_quant_scale, W, S): W the checkpoint's
#                      packed nibbles (row 2i low, 2i+1 high, two's complement) biased by 8 and
#                      repacked to the cuteDSL fragment order (legacy Int4GroupwiseGemmPlugin: the
#                      AWQ swizzle); S = fp32 [out, in/g] transposed to [in/g, out], cast to fp16.
#   float weights      fp16 (the source's bf16/fp32 cast with torch, round to nearest even); named
#                      `_model.<checkpoint name>` or, constant-folded, `val_N` = W.T behind a MatMul
#                      whose exporter scope names the module (fp16 q/k/v: one `qkv_proj_fused` =
#                      concat(q, k, v).T); the embedding in embedding.safetensors.
PREFIX = "_model."  # Edge-LLM's export wrapper: graph tensor `_model.<checkpoint name>`
SMALL = 64  # unnamed initializers up to this size are the exporter's constants (shapes, eps)
INT4_OPS = ("Int4GroupwiseGemmPluginV2", "Int4GroupwiseGemmPlugin")
QUANT_KEYS = (".weight_scale", ".input_scale", ".pre_quant_scale")
FP16 = 10  # onnx.TensorProto.FLOAT16
INT8 = 3


class _Graph:
    """llm/model.onnx without its weights; `array` maps one initializer from its external data
    (or an Edge-LLM external weight file) when asked."""

    def __init__(self, llm: Path):
        import onnx

        self.dir = llm
        self.model = onnx.load(str(llm / "model.onnx"), load_external_data=False)
        self.inits = {t.name: t for t in self.model.graph.initializer}
        self.producer = {o: n for n in self.model.graph.node for o in n.output}
        self.consumers: dict[str, list] = {}
        for n in self.model.graph.node:
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        cfg = llm / "config.json"
        files = json.loads(cfg.read_text()).get("external_weight_files", []) if cfg.is_file() else []
        self.external = {t: llm / f["file"] for f in files for t in f["tensors"]}
        self._maps: dict[Path, np.ndarray] = {}

    def has(self, name: str) -> bool:
        return name in self.inits or name in self.external

    def array(self, name: str) -> np.ndarray:
        import onnx
        from onnx import helper, numpy_helper

        if name in self.external:
            from safetensors import safe_open

            with safe_open(str(self.external[name]), "np") as st:
                return st.get_tensor(name)
        t = self.inits[name]
        if t.data_location != onnx.TensorProto.EXTERNAL:
            return numpy_helper.to_array(t)
        info = {e.key: e.value for e in t.external_data}
        path = self.dir / info["location"]
        if path not in self._maps:
            self._maps[path] = np.memmap(path, np.uint8, "r")
        dtype = np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type))
        off, n = int(info.get("offset", 0)), int(np.prod(t.dims, dtype=np.int64)) * dtype.itemsize
        if int(info.get("length", n)) != n or off + n > self._maps[path].size:
            raise ValueError(f"its external data ({info['location']} at {off}, {info.get('length')} bytes) "
                             f"does not hold {list(t.dims)} {dtype}")
        return np.frombuffer(self._maps[path][off:off + n], dtype).reshape(tuple(t.dims))

    def numel(self, name: str) -> int:
        t = self.inits.get(name)
        return int(np.prod(t.dims, dtype=np.int64)) if t is not None else SMALL + 1

    def only_consumer(self, name: str, op: str, **want) -> object | None:
        """The single node reading `name`, if it is `op` with these attributes."""
        nodes = self.consumers.get(name, [])
        if len(nodes) != 1 or nodes[0].op_type != op:
            return None
        a = onnx_graph.attrs(nodes[0])
        return nodes[0] if all(a.get(k) == v for k, v in want.items()) else None

    def made_by(self, name: str, op: str, **want) -> object | None:
        n = self.producer.get(name)
        if n is None or n.op_type != op:
            return None
        a = onnx_graph.attrs(n)
        return n if all(a.get(k) == v for k, v in want.items()) else None


def _scope(node) -> str | None:
    """The checkpoint module a node was traced from (the exporter's name_scopes metadata)."""
    import ast

    for p in node.metadata_props:
        if p.key == "pkg.torch.onnx.name_scopes":
            mods = [s for s in ast.literal_eval(p.value) if s.startswith(PREFIX)]
            return mods[-1][len(PREFIX):] if mods else None
    return None


def unpack_nibbles(packed: np.ndarray) -> np.ndarray:
    """The same weights as the plugin's biased nibbles [out, in]: s stored as s + 8 (the kernel
    computes (nibble - 8) * scale)."""
    return (unpack_int4_rows(packed) + 8).astype(np.uint8)


def repack_cutedsl(nib: np.ndarray) -> np.ndarray:
    """Biased nibbles [N, K] -> Int4GroupwiseGemmPluginV2's fragment order, int8 [rows, 512]:
    per (128-row N block, 64-col K tile) 8 rows of 128 little-endian uint32 words; word t of row
    (kb, p) packs nibbles (n = t//4 + 64p (+32), k = 16kb + 2(t%4) (+1, +8, +9)). Edge-LLM's
    repack_to_cutedsl_fragment, vectorised; N and K multiples of 64, padding nibbles 8."""
    n, k = nib.shape
    nb, kt = -(-n // 128), -(-k // 64)
    b = np.full((nb * 128, kt * 64), 8, np.uint32)
    b[:n, :k] = nib
    b = b.reshape(nb, 128, kt, 64).transpose(0, 2, 1, 3)  # [nb, kt, n in block, k in tile]
    t = np.arange(128)
    kb, p = np.arange(4)[:, None, None], np.arange(2)[None, :, None]
    word = np.zeros((nb, kt, 4, 2, 128), np.uint32)
    for shift, hi, koff in ((0, 0, 0), (4, 0, 8), (8, 1, 0), (12, 1, 8), (16, 0, 1), (20, 0, 9), (24, 1, 1),
                            (28, 1, 9)):
        rows = np.broadcast_to(t // 4 + 64 * p + 32 * hi, (4, 2, 128))
        cols = np.broadcast_to(16 * kb + 2 * (t % 4) + koff, (4, 2, 128))
        word |= b[:, :, rows, cols] << np.uint32(shift)
    return np.ascontiguousarray(word.reshape(-1, 128)).view(np.int8).reshape(-1, 512)


def repack_awq(nib: np.ndarray) -> np.ndarray:
    """Biased nibbles [N, K] -> the legacy Int4GroupwiseGemmPlugin's AWQ swizzle, int8 [N/2, K]
    (Edge-LLM's _pack_intweights: K permuted in blocks of 32, even/odd split in eights, four N
    rows interleaved over 64-wide K stripes, four nibbles per little-endian int16)."""
    n, k = nib.shape
    pk = nib.astype(np.uint16).reshape(n, k // 32, 4, 4, 2).transpose(0, 1, 3, 2, 4).reshape(n, k // 32, 32)
    pk = pk.reshape(n, k // 32, 4, 4, 2).transpose(0, 1, 2, 4, 3).reshape(n, k)
    pk = pk.reshape(n // 4, 4, k // 64, 64).transpose(0, 2, 1, 3).reshape(n // 4, k // 64, 64, 4)
    pk = pk[..., 0] | (pk[..., 1] << 4) | (pk[..., 2] << 8) | (pk[..., 3] << 12)
    return np.ascontiguousarray(pk.reshape(n // 4, k)).view(np.int8).reshape(n // 2, k)


def _diff(got: np.ndarray, want: np.ndarray) -> str | None:
    if got.dtype != want.dtype or got.shape != want.shape:
        return f"{got.dtype} {list(got.shape)} in the graph, {want.dtype} {list(want.shape)} expected"
    u = f"u{got.dtype.itemsize}"
    neq = np.ascontiguousarray(got).view(u) != np.ascontiguousarray(want).view(u)
    bad = int(np.count_nonzero(neq))
    if not bad:
        return None
    i = np.unravel_index(int(np.argmax(neq)), got.shape) if got.ndim else ()
    return f"{bad} of {got.size} values differ (first at {list(map(int, i))}: {got[i]} vs {want[i]})"


class _Verifier:
    def __init__(self, llm: Path, ckpt: Path, precision: str):
        from safetensors import safe_open

        self.g = _Graph(llm)
        self.llm, self.precision = llm, precision
        self.where: dict[str, Path] = {}
        for f in sorted(Path(ckpt).glob("*.safetensors")):
            with safe_open(str(f), "np") as st:
                self.where.update({k: f for k in st.keys()})
        self.problems: list[str] = []
        self.seen_inits: set[str] = set()
        self.seen_keys: set[str] = set()
        self.seen_nodes: set[str] = set()
        self.done: set[tuple[str, str]] = set()
        self.compared = 0

    def want(self, key: str, *, fp16: bool = False):
        """A checkpoint tensor as numpy; `fp16`: the exporter's cast of a float tensor."""
        import torch
        from safetensors import safe_open

        self.seen_keys.add(key)
        with safe_open(str(self.where[key]), "pt") as st:
            t = st.get_tensor(key)
        if fp16 and t.is_floating_point():
            t = t.to(torch.float16)
        return (t.float() if t.dtype == torch.bfloat16 else t).numpy()

    def check(self, name: str, label: str, want) -> None:
        """Graph tensor `name` must equal `want` (an array, or a callable making it) bit for bit."""
        self.seen_inits.add(name)
        if (name, label) in self.done:
            return
        self.done.add((name, label))
        if not self.g.has(name):
            self.problems.append(f"{label}: the graph reads `{name}`, which is not an initializer")
            return
        try:
            got, exp = self.g.array(name), want() if callable(want) else want
        except (KeyError, ValueError) as e:
            self.problems.append(f"{label} (graph `{name}`): {e}")
            return
        self.compared += 1
        if d := _diff(got, exp):
            self.problems.append(f"{label} (graph `{name}`): {d}")

    def zero(self, node, i: int, label: str) -> None:
        if len(node.input) > i and node.input[i]:
            name = node.input[i]
            self.seen_inits.add(name)
            if not self.g.has(name) or np.any(self.g.array(name)):
                self.problems.append(f"{label}: zero point `{name}` is not 0")

    def smoothing(self, x: str, mod: str) -> None:
        """`x` must be Mul(activation, pre_quant_scale) with the checkpoint's smoothing factor."""
        m = self.g.made_by(x, "Mul")
        name = next((i for i in (m.input if m else []) if self.g.has(i)), None)
        if name is None:
            self.problems.append(f"{mod}: no smoothing Mul(x, pre_quant_scale) feeds it")
        elif f"{mod}.pre_quant_scale" not in self.where:
            self.problems.append(f"{mod}: the graph smooths its input with `{name}`; the checkpoint has none")
        else:
            self.check(name, f"{mod}.pre_quant_scale", lambda: self.want(f"{mod}.pre_quant_scale"))

    def int8_linear(self, mod: str, activations: bool) -> None:
        w = PREFIX + mod + ".weight"
        dq = self.g.only_consumer(w, "DequantizeLinear")
        if dq is None or dq.input[0] != w:
            self.problems.append(f"{mod}.weight: no DequantizeLinear reads `{w}`")
            return
        self.seen_nodes.add(dq.name)
        self.check(w, f"{mod}.weight", lambda: self.want(f"{mod}.weight"))
        self.check(dq.input[1], f"{mod}.weight_scale", lambda: self.want(f"{mod}.weight_scale"))
        self.zero(dq, 2, f"{mod}.weight")
        if (axis := onnx_graph.attrs(dq).get("axis", 1)) != 0:
            self.problems.append(f"{mod}.weight: DequantizeLinear axis {axis}, not 0 (per row)")
        cast = self.g.only_consumer(dq.output[0], "Cast", to=FP16)
        tr = cast and self.g.only_consumer(cast.output[0], "Transpose", perm=[1, 0])
        mm = tr and self.g.only_consumer(tr.output[0], "MatMul")
        if mm is None or mm.input[1] != tr.output[0]:
            self.problems.append(f"{mod}: its dequantized weight does not reach a MatMul as fp16 W.T")
            return
        x = mm.input[0]
        if activations:
            c = self.g.made_by(x, "Cast", to=FP16)
            dqa = c and self.g.made_by(c.input[0], "DequantizeLinear")
            q = dqa and self.g.made_by(dqa.input[0], "QuantizeLinear")
            if q is None:
                self.problems.append(f"{mod}: its input is not Q/DQ-quantized (Q -> DQ -> Cast fp16 -> MatMul)")
                return
            self.seen_nodes.update((q.name, dqa.name))
            for node, what in ((q, "QuantizeLinear"), (dqa, "DequantizeLinear")):
                self.check(node.input[1], f"{mod}.input_scale ({what})", lambda: self.want(f"{mod}.input_scale"))
                self.zero(node, 2, f"{mod} activation {what}")
            zp = q.input[2] if len(q.input) > 2 and q.input[2] else None
            qtype = self.g.inits[zp].data_type if zp in self.g.inits else onnx_graph.attrs(q).get("output_dtype", 2)
            if qtype != INT8:
                self.problems.append(f"{mod}: activations quantized to onnx type {qtype}, not int8")
            x = q.input[0]
        self.smoothing(x, mod)

    def int4_linear(self, mod: str) -> None:
        w = PREFIX + mod + ".weight"
        plug = next((n for n in self.g.consumers.get(w, []) if n.op_type in INT4_OPS and n.input[1] == w), None)
        if plug is None:
            self.problems.append(f"{mod}.weight: no int4 GEMM plugin reads `{w}`")
            return
        self.seen_nodes.add(plug.name)
        repack = repack_cutedsl if plug.op_type == "Int4GroupwiseGemmPluginV2" else repack_awq
        nib = unpack_nibbles(self.want(f"{mod}.weight"))
        self.check(w, f"{mod}.weight ({plug.op_type} layout)", lambda: repack(nib))
        scale = self.want(f"{mod}.weight_scale")
        self.check(plug.input[2], f"{mod}.weight_scale (transposed, fp16)",
                   np.ascontiguousarray(scale.T).astype(np.float16))
        a, (n, k) = onnx_graph.attrs(plug), nib.shape
        if (a.get("gemm_n"), a.get("gemm_k"), a.get("group_size")) != (n, k, k // scale.shape[1]):
            self.problems.append(f"{mod}: plugin n/k/group {a.get('gemm_n')}/{a.get('gemm_k')}/{a.get('group_size')}, "
                                 f"checkpoint {n}/{k}/{k // scale.shape[1]}")
        self.smoothing(plug.input[0], mod)

    def float_linears(self) -> None:
        """MatMul/Gemm weights not traced as quantized: fp16 W.T (Gemm transB: W), by name or,
        where the exporter folded the transpose into a fresh constant, by the node's module."""
        for node in self.g.model.graph.node:
            if node.op_type not in ("MatMul", "Gemm") or not self.g.has(node.input[1]):
                continue
            name = node.input[1]
            transposed = node.op_type == "MatMul" or not onnx_graph.attrs(node).get("transB", 0)
            if name.startswith(PREFIX):
                keys = [name[len(PREFIX):]]
            elif (mod := _scope(node)) and mod.endswith(".qkv_proj_fused"):
                keys = [f"{mod.rsplit('.', 1)[0]}.{p}_proj.weight" for p in "qkv"]
            elif mod:
                keys = [f"{mod}.weight"]
            else:
                continue  # left for the unmatched-initializer check
            if missing := [k for k in keys if k not in self.where]:
                self.problems.append(f"graph `{name}` ({node.op_type} in {mod or name}): the checkpoint has no "
                                     f"{', '.join(missing)}")
                self.seen_inits.add(name)
                continue

            def make(keys=keys, transposed=transposed):
                w = np.concatenate([self.want(k, fp16=True) for k in keys])
                return np.ascontiguousarray(w.T) if transposed else w
            self.check(name, " + ".join(keys) + (" (fp16, transposed)" if transposed else " (fp16)"), make)

    def rest(self) -> None:
        """Named graph tensors not reached above (norms), the embedding, then completeness."""
        tied = next((k for k in self.where if k.endswith("embed_tokens.weight")), None)
        for name in list(self.g.inits) + list(self.g.external):
            if name in self.seen_inits or not name.startswith(PREFIX):
                continue
            key = name[len(PREFIX):]
            if key not in self.where and key == "lm_head.weight" and tied:
                key = tied  # tied embeddings
            if key in self.where:
                self.check(name, key, lambda key=key: self.want(key, fp16=not key.endswith(QUANT_KEYS)))
                if not self.g.consumers.get(name):
                    self.problems.append(f"{key}: graph tensor `{name}` is read by no node")
                # the exporter stores equal tensors once (a random-init model's norms are all ones):
                # a tensor read in other modules must equal each of those modules' own weight too
                for node in self.g.consumers.get(name, []):
                    other = f"{mod}.weight" if (mod := _scope(node)) else None
                    if other and other != key and other in self.where and not other.endswith(QUANT_KEYS):
                        self.check(name, other, lambda k=other: self.want(k, fp16=True))
        emb = self.llm / "embedding.safetensors"
        if tied and emb.is_file():
            from safetensors import safe_open

            with safe_open(str(emb), "np") as st:
                got = st.get_tensor("embedding") if "embedding" in st.keys() else None
            self.compared += got is not None
            d = "no `embedding` tensor" if got is None else _diff(got, self.want(tied, fp16=True))
            if d:
                self.problems.append(f"{tied} (embedding.safetensors): {d}")
        elif tied:
            self.problems.append(f"{tied}: llm/embedding.safetensors is missing")
        for key in sorted(set(self.where) - self.seen_keys):
            if not (self.precision == "int8-w8a16" and key.endswith(".input_scale")):  # fp16 activations
                self.problems.append(f"checkpoint tensor {key} is not in the graph")
        for name in sorted((set(self.g.inits) | set(self.g.external)) - self.seen_inits):
            if name.startswith(PREFIX) or self.g.numel(name) > SMALL:
                self.problems.append(f"graph tensor `{name}` matches no checkpoint tensor")
        for n in self.g.model.graph.node:
            if n.op_type in ("QuantizeLinear", "DequantizeLinear", *INT4_OPS) and n.name not in self.seen_nodes:
                self.problems.append(f"{n.op_type} `{n.name}` belongs to no checkpoint linear")


def _verify(llm: Path, ckpt: Path, precision: str) -> _Verifier:
    v = _Verifier(llm, ckpt, precision)
    mods = sorted(k[:-len(".weight_scale")] for k in v.where if k.endswith(".weight_scale"))
    for mod in mods:
        if precision == "int4":
            v.int4_linear(mod)
        else:
            v.int8_linear(mod, activations=precision == "int8")
    v.float_linears()
    v.rest()
    return v


def verify_graph(llm_dir: Path, ckpt_dir: Path, precision: str) -> list[str]:
    """What in llm/ differs from the checkpoint parity scores (`checkpoint/`, or the source for
    fp16): every int8/int4 weight, weight scale, activation scale and smoothing factor, each
    where its linear computes, plus the float weights, norms and embedding; every checkpoint
    tensor must appear and every graph tensor must come from one. Empty: bit for bit the same,
    after exactly the conversions Edge-LLM makes (see above)."""
    return _verify(Path(llm_dir), Path(ckpt_dir), precision).problems


def artifact_check(llm_dir: Path, ckpt_dir: Path, precision: str) -> dict:
    """verify_graph as a judged entry of the parity report (a graph that cannot be read fails)."""
    try:
        v = _verify(Path(llm_dir), Path(ckpt_dir), precision)
        problems, n = v.problems, v.compared
    except Exception as e:  # an unreadable graph is a failed check, said in one line
        problems, n = [f"{Path(llm_dir).name}/ could not be read: {type(e).__name__}: {e}"], 0
    return {"compares": f"{Path(llm_dir).name}/ graph tensors -> {Path(ckpt_dir).name}/ (bit for bit)",
            "tensors": n, "passed": not problems, "failures": problems[:20] + (
                [f"... and {len(problems) - 20} more"] if len(problems) > 20 else [])}
