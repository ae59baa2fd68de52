"""The model as the planner sees it: dimensions from config.json, every weight tensor with its
shape (no weights read), and the tokenizer's size where a directory is given.

Tensors are listed in Hugging Face terms (out, in), experts first: each target's sizing
(weights.py) lays them out the way its exporter does.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edgeport.core.architectures import Architecture, config_value, for_config

from . import PlanError

# Per-layer weights are each architecture's `layer_tensors` (edgeport/core/architectures.py).
GLOBAL_TENSORS = (
    ("embed", "model.embed_tokens.weight", ("vocab", "hidden")),
    ("final_norm", "model.norm.weight", ("hidden",)),
    ("lm_head", "lm_head.weight", ("vocab", "hidden")),  # absent when tie_word_embeddings
)
EXPERT_KINDS = ("gate_up_exps", "down_exps")
DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4}


@dataclass(frozen=True)
class Tensor:
    kind: str
    name: str  # Hugging Face name
    shape: tuple[int, ...]  # (out, in), experts first
    layer: int | None = None

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n

    @property
    def is_matrix(self) -> bool:
        return len(self.shape) >= 2 and self.kind not in ("gate_up_exps_bias", "down_exps_bias")


@dataclass(frozen=True)
class Tokenizer:
    """What the GGUF's tokenizer metadata costs: token strings, merges, chat template."""

    n_vocab: int
    token_bytes: int  # UTF-8 bytes of all token strings (padding tokens included)
    merges: int
    merge_bytes: int
    template_bytes: int
    source: str  # "tokenizer.json" or the formula used


@dataclass
class ModelSpec:
    name: str
    config: dict
    arch: Architecture
    tokenizer: Tokenizer
    source_note: str = ""
    dims: dict[str, int] = field(default_factory=dict)

    @property
    def n_layers(self) -> int:
        return self.config["num_hidden_layers"]

    @property
    def moe(self) -> bool:
        return self.arch.moe

    @property
    def is_mxfp4(self) -> bool:
        return (self.config.get("quantization_config") or {}).get("quant_method") == "mxfp4"

    @property
    def tied(self) -> bool:
        return bool(self.config.get("tie_word_embeddings", False))

    @property
    def dtype_bytes(self) -> int:
        """Bytes per element of the source's float tensors (config dtype / torch_dtype)."""
        return DTYPE_BYTES.get(self.config.get("dtype") or self.config.get("torch_dtype") or "bfloat16", 2)

    def layer_is_swa(self, i: int) -> bool:
        """The config's layer_types where the family slides at all in llama.cpp (its pattern when
        the config has none); a family without a pattern (llama) has no sliding window at all."""
        if not self.arch.swa_pattern:
            return False
        types = self.config.get("layer_types")
        return types[i] == "sliding_attention" if types else self.arch.llama_cpp_swa(i)

    @property
    def sliding_window(self) -> int:
        return int(self.config.get("sliding_window") or 0) if self.arch.swa_pattern else 0

    def tensors(self) -> list[Tensor]:
        out = []
        for kind, name, dims in GLOBAL_TENSORS:
            if kind == "lm_head" and self.tied:
                continue
            out.append(Tensor(kind, name, tuple(self.dims[d] for d in dims)))
        for i in range(self.n_layers):
            for kind, name, dims, flag in self.arch.layer_tensors:
                if flag and not self.config.get(flag):
                    continue
                out.append(Tensor(kind, f"model.layers.{i}.{name}", tuple(self.dims[d] for d in dims), i))
        return out

    def params(self) -> int:
        return sum(t.numel for t in self.tensors())


def _dims(cfg: dict) -> dict[str, int]:
    heads = cfg["num_attention_heads"]
    hd = cfg.get("head_dim") or cfg["hidden_size"] // heads
    kv = cfg.get("num_key_value_heads") or heads
    inter = cfg["intermediate_size"]
    return {"hidden": cfg["hidden_size"], "heads": heads, "kv_heads": kv, "head_dim": hd, "q_dim": heads * hd,
            "kv_dim": kv * hd, "inter": inter, "inter2": 2 * inter, "vocab": cfg["vocab_size"],
            "experts": cfg.get("num_local_experts") or 0, "experts_used": cfg.get("num_experts_per_tok") or 0}


def load(model: str | Path) -> ModelSpec:
    """A model directory (config.json, tokenizer.json if there) or a config.json file."""
    p = Path(model)
    cfg_path = p / "config.json" if p.is_dir() else p
    if not cfg_path.is_file():
        raise PlanError(f"{model}: no config.json there (give a model directory or a config.json file)")
    try:
        cfg = json.loads(cfg_path.read_text())
    except json.JSONDecodeError as e:
        raise PlanError(f"{cfg_path}: not JSON ({e.msg})") from None
    name = cfg.get("_name") or (p.name if p.is_dir() else cfg_path.stem)
    cfg = {k: v for k, v in cfg.items() if not k.startswith("_")}  # "_name"/"_source" notes in our fixtures
    arch = for_config(cfg)
    for key in ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size", "vocab_size"):
        if config_value(cfg, key) is None:
            raise PlanError(f"{cfg_path}: config lacks {key}")
    tok = tokenizer_stats(p if p.is_dir() else None, cfg)
    return ModelSpec(name=name, config=cfg, arch=arch, tokenizer=tok, dims=_dims(cfg))


# Without a tokenizer: o200k/Llama-3-style BPE vocabularies average ~7 bytes per token string
# and carry about one merge per token of ~12 bytes ("a b"); an estimate, stated as such.
FORMULA_TOKEN_BYTES, FORMULA_MERGE_BYTES, FORMULA_TEMPLATE_BYTES = 7, 12, 4096


def tokenizer_stats(root: Path | None, cfg: dict) -> Tokenizer:
    """Sizes of what the GGUF converter writes (export/gguf_convert.py::_write_tokenizer): the
    vocabulary padded to config vocab_size with "[PAD<i>]" tokens, the merges, the template."""
    n_vocab = cfg["vocab_size"]
    tj = root / "tokenizer.json" if root else None
    if not tj or not tj.is_file():
        return Tokenizer(n_vocab, n_vocab * FORMULA_TOKEN_BYTES, n_vocab, n_vocab * FORMULA_MERGE_BYTES,
                         FORMULA_TEMPLATE_BYTES,
                         f"formula: {FORMULA_TOKEN_BYTES} B/token string + one {FORMULA_MERGE_BYTES} B merge "
                         f"per token, {FORMULA_TEMPLATE_BYTES} B template (no tokenizer.json given)")
    tok = json.loads(tj.read_text())
    model = tok.get("model", {})
    texts: dict[int, str] = {i: t for t, i in model.get("vocab", {}).items() if i < n_vocab}
    for a in tok.get("added_tokens", []):
        if a["id"] < n_vocab:
            texts[a["id"]] = a["content"]
    token_bytes = sum(len(texts[i].encode()) if i in texts else len(f"[PAD{i}]") for i in range(n_vocab))
    merges = model.get("merges", [])
    merge_bytes = sum(len((m if isinstance(m, str) else " ".join(m)).encode()) for m in merges)
    template = 0
    if (root / "chat_template.jinja").is_file():
        template = len((root / "chat_template.jinja").read_bytes())
    elif (tc := root / "tokenizer_config.json").is_file():
        t = json.loads(tc.read_text()).get("chat_template")
        template = len(t.encode()) if isinstance(t, str) else 0
    return Tokenizer(n_vocab, token_bytes, len(merges), merge_bytes, template, "tokenizer.json")
