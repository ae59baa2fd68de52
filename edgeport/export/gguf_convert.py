"""HF checkpoint -> unquantized GGUF (F16, experts MXFP4 where the source has them).

Streaming: tensor infos are planned from safetensors headers alone, then each tensor is
produced in chunks (row blocks, or one expert at a time) and written straight to the
file, so peak memory is one chunk, not the model. gguf-py supplies the file format and
the tensor names; export.architectures supplies what differs per family.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from edgeport.core import mxfp4
from edgeport.core.architectures import Architecture, TensorRule, config_value, tensor_pattern
from edgeport.core.errors import ArchitectureError, SourceError
from edgeport.core.progress import Progress
from edgeport.core.source import Source, iter_rows

log = logging.getLogger(__name__)
Q = gguf.GGMLQuantizationType

FILE_TYPES = {"F16": (gguf.LlamaFileType.MOSTLY_F16, Q.F16), "F32": (gguf.LlamaFileType.ALL_F32, Q.F32),
              "BF16": (gguf.LlamaFileType.MOSTLY_BF16, Q.BF16)}


@dataclass
class OutTensor:
    """One GGUF tensor: its numpy shape (outermost first) and a chunk producer.

    `raw` producers yield ggml MXFP4 bytes; float producers yield float32 rows that are
    cast to the chosen type as they are written.
    """

    name: str
    shape: tuple[int, ...]
    chunks: Callable[[], Iterator[np.ndarray]]
    raw: bool = False
    qtype: Q | None = None

    @property
    def byte_shape(self) -> tuple[int, ...]:
        if self.qtype == Q.MXFP4:
            return (*self.shape[:-1], self.shape[-1] // 32 * 17)
        return self.shape

    @property
    def nbytes(self) -> int:
        n_el = int(np.prod(self.byte_shape))
        return n_el if self.qtype == Q.MXFP4 else n_el * np.dtype(_np_dtype(self.qtype)).itemsize


def _np_dtype(q: Q | None):
    return {Q.F32: np.float32, Q.F16: np.float16, Q.BF16: np.uint16, Q.MXFP4: np.uint8}[q]


# --- transforms: (source, hf name, rule, arch config) -> list[OutTensor] ---------------------

def _rows(src: Source, name: str) -> Callable[[], Iterator[np.ndarray]]:
    e = src.entry(name)
    if len(e.shape) < 2:
        return lambda: iter([src.read_f32(name)])
    row_bytes = int(np.prod(e.shape[1:])) * 4
    return lambda: (src.read_f32(name, r) for r in iter_rows(e.shape[0], row_bytes))


def _per_expert(src: Source, name: str, fn: Callable[[np.ndarray], np.ndarray]):
    n = src.entry(name).shape[0]
    return lambda: (fn(src.read_f32(name, slice(i, i + 1))[0])[None] for i in range(n))


def t_copy(src, name, outs, cfg):
    return [OutTensor(outs[0], src.entry(name).shape, _rows(src, name))]


def t_permute_heads(src, name, outs, cfg, heads_key):
    n_head = cfg[heads_key]

    def gen():
        w = src.read_f32(name)
        yield (w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
               .swapaxes(1, 2).reshape(w.shape))
    return [OutTensor(outs[0], src.entry(name).shape, gen)]


def t_experts_split_interleaved(src, name, outs, cfg):
    e, n_in, n_out2 = src.entry(name).shape
    shape = (e, n_out2 // 2, n_in)
    return [OutTensor(outs[0], shape, _per_expert(src, name, lambda w: w.T[0::2])),
            OutTensor(outs[1], shape, _per_expert(src, name, lambda w: w.T[1::2]))]


def t_experts_transpose(src, name, outs, cfg):
    e, a, b = src.entry(name).shape
    return [OutTensor(outs[0], (e, b, a), _per_expert(src, name, lambda w: w.T))]


def t_split_interleaved(src, name, outs, cfg):
    shape = (*src.entry(name).shape[:-1], src.entry(name).shape[-1] // 2)
    return [OutTensor(outs[0], shape, lambda: iter([src.read_f32(name)[..., 0::2]])),
            OutTensor(outs[1], shape, lambda: iter([src.read_f32(name)[..., 1::2]]))]


def _mxfp4_out(src: Source, name: str, out: str, rows: slice) -> OutTensor:
    scales = name.removesuffix("_blocks") + "_scales"
    if scales not in src:
        raise SourceError(f"MXFP4 tensor {name} has no matching {scales}")
    e, r, g, _ = src.entry(name).shape
    n_rows = len(range(r)[rows])

    def gen():
        for i in range(e):
            b = src.read_raw(name, slice(i, i + 1))[0][rows]
            s = src.read_raw(scales, slice(i, i + 1))[0][rows]
            yield mxfp4.hf_to_ggml(b, s)[None]
    return OutTensor(out, (e, n_rows, g * 32), gen, raw=True, qtype=Q.MXFP4)


def t_mxfp4_split_interleaved(src, name, outs, cfg):
    return [_mxfp4_out(src, name, outs[0], slice(0, None, 2)),
            _mxfp4_out(src, name, outs[1], slice(1, None, 2))]


def t_mxfp4(src, name, outs, cfg):
    return [_mxfp4_out(src, name, outs[0], slice(None))]


def t_consumed(src, name, outs, cfg):
    return []


TRANSFORMS: dict[str, Callable[..., list[OutTensor]]] = {
    "copy": t_copy, "permute_heads": t_permute_heads,
    "experts_split_interleaved": t_experts_split_interleaved,
    "experts_transpose": t_experts_transpose, "split_interleaved": t_split_interleaved,
    "mxfp4_split_interleaved": t_mxfp4_split_interleaved, "mxfp4": t_mxfp4, "consumed": t_consumed,
}


def _match_rule(arch: Architecture, name: str) -> tuple[TensorRule, str]:
    best = None
    for r in arch.rules:
        if name.endswith(r.suffix) and (best is None or len(r.suffix) > len(best.suffix)):
            best = r
    if best is None:
        return TensorRule("", "copy"), name
    return best, name[: len(name) - len(best.suffix)]


def plan(src: Source, arch: Architecture, file_type: str = "F16",
         experts_to_mxfp4: bool = False) -> list[OutTensor]:
    """All GGUF tensors in file order, with types, before any weight is read."""
    cfg = src.config
    n_layers = cfg["num_hidden_layers"]
    tmap = gguf.get_tensor_name_map(arch.gguf_arch, n_layers)
    _, float_q = FILE_TYPES[file_type]
    out: list[OutTensor] = []
    if arch.rope_freqs and (freqs := llama3_rope_freqs(cfg)) is not None:  # first, as llama.cpp writes it
        out.append(OutTensor(gguf.TENSOR_NAMES[gguf.MODEL_TENSOR.ROPE_FREQS] + ".weight", freqs.shape,
                             lambda: iter([freqs]), qtype=Q.F32))
    for name in sorted(src.tensors, key=_tensor_sort_key):
        rule, prefix = _match_rule(arch, name)
        op, *arg = rule.op.split(":")
        outs = [o.format(p=prefix, s=rule.suffix) for o in rule.outputs]
        for t in TRANSFORMS[op](src, name, outs, cfg, *arg):
            gname = tmap.get_name(t.name, try_suffixes=(".weight", ".bias"))
            if gname is None:
                raise ArchitectureError(f"{arch.name}: no GGUF name for tensor {t.name}")
            t.name = gname
            if t.qtype is None:
                t.qtype = _float_type(arch, t, float_q, experts_to_mxfp4)
            out.append(t)
    return out


def _tensor_sort_key(name: str):
    """Layers in numeric order (HF shards sort 'layers.10' before 'layers.2')."""
    parts = name.split(".")
    return [(0, int(p), "") if p.isdecimal() else (1, 0, p) for p in parts]


def _float_type(arch: Architecture, t: OutTensor, float_q: Q, experts_to_mxfp4: bool) -> Q:
    # mirrors llama.cpp's converter: 1-D, norms, biases and routers stay F32
    if len(t.shape) <= 1 or t.name.endswith("_norm.weight") or not t.name.endswith(".weight"):
        return Q.F32
    if arch.f32_tensors and re.match(tensor_pattern(arch.f32_tensors), t.name):
        return Q.F32
    if experts_to_mxfp4 and arch.expert_tensors and re.match(tensor_pattern(arch.expert_tensors), t.name):
        if t.shape[-1] % 32:
            raise ArchitectureError(f"{t.name}: rows of {t.shape[-1]} cannot take MXFP4 (needs multiples of 32)")
        return Q.MXFP4
    return float_q


def _encode(t: OutTensor, chunk: np.ndarray) -> np.ndarray:
    if t.raw:
        return chunk
    if t.qtype == Q.MXFP4:
        return mxfp4.hf_to_ggml(*mxfp4.quantize(chunk))
    return gguf.quants.quantize(np.ascontiguousarray(chunk, dtype=np.float32), t.qtype)


# --- metadata ------------------------------------------------------------------------------

def write_hparams(w: gguf.GGUFWriter, src: Source, arch: Architecture, ftype) -> None:
    """The hyper-parameter, RoPE-scaling and sampling keys; public because the planner's skeleton
    GGUFs (planning/measure.py) must carry exactly what the exporter writes."""
    cfg = src.config
    w.add_name(src.name)
    w.add_block_count(cfg["num_hidden_layers"])
    for method, key, required in arch.hparams:
        v = config_value(cfg, key)
        if v is None:
            if required:
                raise SourceError(f"config.json lacks {key}, which {arch.name} needs")
            continue
        getattr(w, method)(v)
    if arch.rope_scaling:
        _write_rope_scaling(w, cfg, arch)
    _write_sampling(w, src)
    w.add_file_type(ftype)
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)


def rope_parameters(cfg: dict) -> dict:
    """rope_parameters (transformers 5) or rope_scaling (4), with rope_type and
    original_max_position_embeddings filled in from the older spellings."""
    rp = dict(cfg.get("rope_parameters") or cfg.get("rope_scaling") or {})
    rp.setdefault("rope_type", rp.get("type"))
    if cfg.get("original_max_position_embeddings") is not None:
        rp.setdefault("original_max_position_embeddings", cfg["original_max_position_embeddings"])
    return rp


def _write_rope_scaling(w: gguf.GGUFWriter, cfg: dict, arch: Architecture) -> None:
    """RoPE scaling keys as llama.cpp's converter writes them. A kind llama.cpp would not
    apply is refused: left out, the model would silently run unscaled."""
    rp = rope_parameters(cfg)
    kind, factor = rp["rope_type"], rp.get("factor")
    if kind in (None, "default") or (str(kind).lower() == "llama3" and arch.rope_freqs):
        return  # llama3: the rope_freqs tensor (plan)
    if kind == "linear" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        w.add_rope_scaling_factor(factor)
    elif kind == "yarn" and factor is not None:
        w.add_rope_scaling_type(gguf.RopeScalingType.YARN)
        w.add_rope_scaling_factor(factor)
        w.add_rope_scaling_orig_ctx_len(rp["original_max_position_embeddings"])
        for keys, method in ((("extrapolation_factor",), "add_rope_scaling_yarn_ext_factor"),
                             (("attention_factor", "attn_factor"), "add_rope_scaling_yarn_attn_factor"),
                             (("beta_fast",), "add_rope_scaling_yarn_beta_fast"),
                             (("beta_slow",), "add_rope_scaling_yarn_beta_slow")):
            v = next((rp[k] for k in keys if rp.get(k) is not None), None)
            if v is not None:
                getattr(w, method)(v)
    else:
        raise ArchitectureError(f"{arch.name}: RoPE scaling {kind!r} (factor {factor}) is not supported")


def llama3_rope_freqs(cfg: dict) -> np.ndarray | None:
    """Llama 3.1+ RoPE scaling, which llama.cpp takes as per-frequency divisors in a
    rope_freqs tensor: computed exactly as llama.cpp's converter does (torch float32
    arithmetic, which numpy's does not reproduce bit for bit)."""
    import math

    import torch

    rp = rope_parameters(cfg)
    if str(rp["rope_type"]).lower() != "llama3":
        return None
    base = rp.get("rope_theta", 10000.0)
    dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    freqs = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
    factor, low, high = rp.get("factor", 8.0), rp.get("low_freq_factor", 1.0), rp.get("high_freq_factor", 4.0)
    old_ctx = rp.get("original_max_position_embeddings", 8192)
    out = []
    for freq in freqs:
        wavelen = 2 * math.pi / freq
        if wavelen < old_ctx / high:
            out.append(1)
        elif wavelen > old_ctx / low:
            out.append(factor)
        else:
            smooth = (old_ctx / wavelen - low) / (high - low)
            out.append(1 / ((1 - smooth) / factor + smooth))
    return torch.tensor(out, dtype=torch.float32).numpy()


# generation_config.json key(s) -> GGUFWriter.add_sampling_<name>, as llama.cpp's converter
# (gguf.Metadata) reads them: llama-cli / llama-server take general.sampling.* as the
# model's default sampling parameters.
SAMPLING = {"sequence": ("sequence",), "top_k": ("top_k",), "top_p": ("top_p",), "min_p": ("min_p",),
            "xtc_probability": ("xtc_probability",), "xtc_threshold": ("xtc_threshold",),
            "temp": ("temperature",), "penalty_last_n": ("penalty_last_n",),
            "penalty_repeat": ("penalty_repeat", "repetition_penalty"), "mirostat": ("mirostat",),
            "mirostat_tau": ("mirostat_tau",), "mirostat_eta": ("mirostat_eta",)}


def _write_sampling(w: gguf.GGUFWriter, src: Source) -> None:
    gen = src.json_file("generation_config.json")
    for name, keys in SAMPLING.items():
        v = next((gen[k] for k in keys if gen.get(k) is not None), None)
        if v is not None:
            getattr(w, f"add_sampling_{name}")(v)


def write_tokenizer(w: gguf.GGUFWriter, src: Source, arch: Architecture) -> None:
    """The BPE vocabulary padded to config vocab_size, merges, special tokens and chat template
    (also written into the planner's skeleton GGUFs)."""
    tok = json.loads((src.root / "tokenizer.json").read_text())
    model = tok.get("model", {})
    if model.get("type") != "BPE":
        raise SourceError(f"tokenizer.json: {model.get('type')} tokenizers are not supported yet (BPE only)")
    n_vocab = src.config.get("vocab_size") or len(model["vocab"]) + len(tok.get("added_tokens", []))
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [gguf.TokenType.UNUSED] * n_vocab
    for text, i in model["vocab"].items():
        if i < n_vocab:
            tokens[i], types[i] = text, gguf.TokenType.NORMAL
    for a in tok.get("added_tokens", []):
        if a["id"] < n_vocab:
            tokens[a["id"]] = a["content"]
            types[a["id"]] = gguf.TokenType.CONTROL if a.get("special") else gguf.TokenType.USER_DEFINED
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(arch.tokenizer_pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(src.root, load_merges=True, n_vocab=n_vocab)
    special.chat_template = src.chat_template
    special.add_special_token["bos"] = arch.add_bos
    special.add_to_gguf(w, quiet=True)


# --- the writer ------------------------------------------------------------------------------

def write_gguf(src: Source, arch: Architecture, path: Path, *, file_type: str = "F16",
               experts_to_mxfp4: bool = False, progress: Progress | None = None) -> list[OutTensor]:
    ftype, _ = FILE_TYPES[file_type]
    tensors = plan(src, arch, file_type, experts_to_mxfp4)
    if any(t.qtype == Q.MXFP4 for t in tensors):
        ftype = gguf.LlamaFileType.MOSTLY_MXFP4_MOE  # what the bulk of the weights is (as llama.cpp's converter says)
    logging.getLogger("gguf").setLevel(logging.WARNING)
    w = gguf.GGUFWriter(path, arch.gguf_arch_name)
    write_hparams(w, src, arch, ftype)
    write_tokenizer(w, src, arch)
    for t in tensors:
        w.add_tensor_info(t.name, t.byte_shape, np.dtype(_np_dtype(t.qtype)), t.nbytes,
                          raw_dtype=t.qtype if t.qtype in (Q.MXFP4, Q.BF16) else None)
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    fout = w.fout[0]
    total = sum(t.nbytes for t in tensors)
    task = progress.task(f"writing {path.name}", total) if progress else None
    for t in tensors:
        w.write_padding(fout, fout.tell())
        written = 0
        for chunk in t.chunks():
            data = _encode(t, chunk)
            data.tofile(fout)
            written += data.nbytes
            if task:
                task.advance(data.nbytes)
        if written != t.nbytes:
            raise SourceError(f"{t.name}: wrote {written} bytes, expected {t.nbytes}")
        w.write_padding(fout, t.nbytes)
    w.close()
    return tensors
