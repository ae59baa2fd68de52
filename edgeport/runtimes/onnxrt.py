"""onnxruntime behind the common interface.

Two engines over one model directory:
- `logits` runs the graph once with an empty KV cache through a plain `InferenceSession`, so
  parity sees the full distribution at every position;
- generation goes through onnxruntime-genai when the directory has its `genai_config.json`
  (it owns the KV cache, as it does in deployment); other graphs (standard-op graphs for the
  TensorRT EP) are driven by a KV-cache loop over the same session.

Execution providers: `ep="cpu" | "cuda" | "tensorrt"`; an EP this onnxruntime build lacks falls
back to the next one with a warning naming the EP actually used.

Context: `n_ctx` (serve's --ctx; default and at most the model's context) caps a request's
prompt + max_new_tokens; more raises ContextLengthExceeded before any work. Each generation is
sized by its request: onnxruntime-genai gets max_length = prompt + max_new_tokens, not n_ctx nor
the model's context, because with past_present_share_buffer it allocates the whole KV cache for
max_length up front (`genai_kv_bytes`; gpt-oss-20b's 131,072 tokens would be 12.9 GB of fp32 KV
per request, a 4096-token request 0.4 GB). planning/kv.onnx_kv plans the same bytes at n_ctx.
"""

from __future__ import annotations

import json
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgeport.core.errors import EdgeportError, RuntimeUnavailable
from edgeport.core.progress import console

from .base import ModelInfo, Runtime, TokenizerFileMixin, load_tokenizer
from .reference import model_info_from_hf

# our EP names -> onnxruntime provider chains (first available wins) and genai provider names
PROVIDERS = {
    "cpu": ["CPUExecutionProvider"],
    "cuda": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
GENAI_PROVIDER = {"CUDAExecutionProvider": "cuda", "TensorrtExecutionProvider": "NvTensorRtRtx"}
ORT_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}  # KV-cache input types
DEFAULT_CTX = 4096  # a graph that states no context (standard-op graphs without max_position_embeddings)


class ContextLengthExceeded(EdgeportError, ValueError):
    """A request's prompt + max_new_tokens does not fit the runtime's context (n_ctx): the
    request is at fault, not the server (serving answers 400, context_length_exceeded)."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, n_ctx: int):
        self.prompt_tokens, self.max_new_tokens, self.n_ctx = prompt_tokens, max_new_tokens, n_ctx
        super().__init__(f"the prompt ({prompt_tokens} tokens) plus max_tokens ({max_new_tokens}) is "
                         f"{prompt_tokens + max_new_tokens} tokens; this runtime's context is {n_ctx} tokens")


def genai_kv_bytes(genai_config: dict, max_length: int, dtype_bytes: int, batch: int = 1) -> int:
    """The KV cache onnxruntime-genai allocates for one generator of `max_length` tokens when
    past and present share a buffer (`search.past_present_share_buffer`, the builder's default
    for GroupQueryAttention graphs): K and V of [batch, kv_heads, max_length, head_size] in every
    layer, in the graph's KV dtype (fp32 for CPU graphs, fp16 for CUDA). The plain cache edgeport
    builds (windowed_kv_cache=false) gives sliding-window layers the full length too."""
    d = genai_config["model"]["decoder"]
    return batch * d["num_key_value_heads"] * max_length * d["head_size"] * 2 * d["num_hidden_layers"] * dtype_bytes


def _require_ort():
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise RuntimeUnavailable("the onnxruntime runtime needs onnxruntime: pip install -e '.[onnx]' "
                                 "(or '.[onnx-gpu]' on a CUDA machine)") from e
    return ort


def pick_providers(ep: str, available: Sequence[str]) -> list[str]:
    if ep not in PROVIDERS:
        raise RuntimeUnavailable(f"unknown execution provider {ep!r}; known: {', '.join(PROVIDERS)}")
    chain = [p for p in PROVIDERS[ep] if p in available]
    if chain[0] != PROVIDERS[ep][0]:

        msg = (f"onnxruntime: {PROVIDERS[ep][0]} is not available in this onnxruntime build "
               f"(has: {', '.join(available)}); running on {chain[0]}")
        console.print(f"[yellow]warning:[/yellow] {msg}", highlight=False)
    return chain


# Tokens a kept generation allocates beyond its request (runtime.keep_prefix), for what the front
# writes between phases: `<|end|><|start|>assistant<|channel|>final<|message|>` is 5, a forced call's
# header with its name about 15.
HEADROOM = 32


@dataclass
class _Kept:
    """The state after a generation (keep_prefix): the ids it computed, what it was allocated for, and
    its KV cache (an onnxruntime-genai generator, or the plain session's past tensors)."""

    seq: list[int]
    capacity: int
    state: object


class OnnxRuntime(TokenizerFileMixin, Runtime):
    name = "onnxruntime"

    def __init__(self, model_dir: str | Path, info: ModelInfo | None = None, *, ep: str = "cpu",
                 threads: int = 0, n_ctx: int | None = None, **_ignored):
        ort = _require_ort()
        self.dir = Path(model_dir)
        self.model_file = self.dir / "model.onnx"
        if not self.model_file.is_file():
            raise RuntimeUnavailable(f"{self.dir}: no model.onnx")
        super().__init__(info or model_info_from_hf(self.dir))
        self.tok = load_tokenizer(self.dir)
        self.providers = pick_providers(ep, ort.get_available_providers())
        self.ep_used = self.providers[0]
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self._sess = ort.InferenceSession(str(self.model_file), opts, providers=self.providers)
        self._inputs = {i.name: i for i in self._sess.get_inputs()}
        self._past = sorted(n for n in self._inputs if n.startswith("past_key_values."))
        self._genai_config = self.dir / "genai_config.json"
        self._og_model = None
        self._head_dim = self._read_head_dim()
        self.model_ctx = self._read_model_ctx()
        if n_ctx is not None and n_ctx < 1:
            raise ValueError(f"n_ctx must be positive, not {n_ctx}")
        self.n_ctx = min(n_ctx or self.model_ctx, self.model_ctx)
        kv_types = {self._inputs[n].type for n in self._past}
        self.kv_dtype_bytes = np.dtype(ORT_TYPES.get(next(iter(kv_types), ""), np.float32)).itemsize
        self.last_max_length: int | None = None  # what the last genai generator was created with
        # Off by default (parity and bench measure every prompt from nothing); the server turns it on.
        self.keep_prefix = False
        self.prefix_hits = 0  # generations that continued a kept state (for tests and benchmarks)
        self._kept: _Kept | None = None

    def _read_head_dim(self) -> int:
        if self._genai_config.is_file():
            return json.loads(self._genai_config.read_text())["model"]["decoder"]["head_size"]
        cfg = json.loads((self.dir / "config.json").read_text())
        return cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]

    def _read_model_ctx(self) -> int:
        if self._genai_config.is_file():
            if ctx := json.loads(self._genai_config.read_text())["model"].get("context_length"):
                return int(ctx)
        cfg = self.dir / "config.json"
        return int((json.loads(cfg.read_text()) if cfg.is_file() else {}).get("max_position_embeddings")
                   or DEFAULT_CTX)

    # --- context ----------------------------------------------------------------------------
    def max_length_for(self, prompt_tokens: int, max_new_tokens: int) -> int:
        """The tokens a request needs (prompt + max_new_tokens), or ContextLengthExceeded."""
        if prompt_tokens + max_new_tokens > self.n_ctx:
            raise ContextLengthExceeded(prompt_tokens, max_new_tokens, self.n_ctx)
        return prompt_tokens + max(max_new_tokens, 1)  # the first logits are computed even for 0

    def kv_bytes(self, max_length: int) -> int | None:
        """KV bytes a genai generator of `max_length` tokens allocates (None: not a genai graph)."""
        if not self._genai_config.is_file():
            return None
        return genai_kv_bytes(json.loads(self._genai_config.read_text()), max_length, self.kv_dtype_bytes)

    def stream_ids(self, ids: list[int], max_new_tokens: int = 128, *args, **kwargs) -> Iterator[str]:
        """Runtime.stream_ids (under serving's llguidance mask where `constraint=` is given: structured
        output and forced tool calls), refused at the call, before a generator exists, past n_ctx."""
        self.max_length_for(len(ids), max_new_tokens)
        return super().stream_ids(ids, max_new_tokens, *args, **kwargs)

    # --- plain session --------------------------------------------------------------------
    def _feeds(self, ids: np.ndarray, past: dict[str, np.ndarray] | None, past_len: int) -> dict:
        feeds = {"input_ids": ids[None, :].astype(np.int64)}
        total = past_len + len(ids)
        if "attention_mask" in self._inputs:
            feeds["attention_mask"] = np.ones((1, total), np.int64)
        if "position_ids" in self._inputs:
            feeds["position_ids"] = np.arange(past_len, total, dtype=np.int64)[None, :]
        for name in self._past:
            if past is not None:
                feeds[name] = past[name]
            else:
                shape = [d if isinstance(d, int) else 0 for d in self._inputs[name].shape]
                shape[0], shape[-1] = 1, self._head_dim  # [batch, kv_heads, 0 past, head_dim]
                feeds[name] = np.zeros(shape, ORT_TYPES.get(self._inputs[name].type, np.float32))
        return feeds

    def _run(self, ids: np.ndarray, past: dict | None, past_len: int) -> tuple[np.ndarray, dict]:
        out_names = [o.name for o in self._sess.get_outputs()]
        outs = dict(zip(out_names, self._sess.run(None, self._feeds(ids, past, past_len)), strict=True))
        present = {n.replace("past_key_values.", "present."): n for n in self._past}
        return outs["logits"][0], {past_name: outs[p] for p, past_name in present.items()}

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        logits, _ = self._run(np.asarray(token_ids), None, 0)
        return logits.astype(np.float32)

    # --- generation -----------------------------------------------------------------------
    def _decode(self, prompt_ids: list[int], max_new_tokens: int | None = None) -> Generator[np.ndarray, int, None]:
        """Generation sized by the request: max_length = prompt + max_new_tokens (a caller that
        does not say gets n_ctx, all of it allocated up front)."""
        if max_new_tokens is None:
            max_new_tokens = max(self.n_ctx - len(prompt_ids), 1)
        length = self.max_length_for(len(prompt_ids), max_new_tokens)
        if self._genai_config.is_file():
            yield from self._decode_genai(prompt_ids, length)
        else:
            yield from self._decode_session(prompt_ids)

    def _resume(self, prompt_ids: list[int], max_length: int) -> _Kept | None:
        """The kept state of the last generation when `prompt_ids` continue it (its prompt and every
        token it computed, then at least one more) and it has room for `max_length`; else None. The
        kept state is released either way, before a new one is allocated."""
        kept, self._kept = self._kept, None
        if (kept is None or not self.keep_prefix or len(prompt_ids) <= len(kept.seq)
                or max_length > kept.capacity or prompt_ids[: len(kept.seq)] != kept.seq):
            return None
        self.prefix_hits += 1
        return kept

    def _capacity(self, max_length: int) -> int:
        """What a generation allocates: the request, plus HEADROOM where the state is kept (for the
        tokens a next phase adds: the front's header after the model's reasoning)."""
        return min(max_length + HEADROOM, self.n_ctx) if self.keep_prefix else max_length

    def _decode_session(self, prompt_ids: list[int]) -> Generator[np.ndarray, int, None]:
        kept = self._resume(prompt_ids, len(prompt_ids))
        if kept is None:
            logits, past = self._run(np.asarray(prompt_ids), None, 0)
        else:
            logits, past = self._run(np.asarray(prompt_ids[len(kept.seq):]), kept.state, len(kept.seq))
        seq = list(prompt_ids)
        while True:
            try:
                tok = yield logits[-1].astype(np.float32)
            except GeneratorExit:  # the caller is done: `past` holds exactly `seq`
                if self.keep_prefix:
                    self._kept = _Kept(seq, self.n_ctx, past)
                raise
            logits, past = self._run(np.asarray([tok]), past, len(seq))
            seq.append(tok)

    def _genai(self):
        if self._og_model is None:
            try:
                import onnxruntime_genai as og
            except ImportError as e:
                raise RuntimeUnavailable("generation needs onnxruntime-genai: pip install -e '.[onnx]'") from e
            cfg = og.Config(str(self.dir))
            cfg.clear_providers()
            if (p := GENAI_PROVIDER.get(self.ep_used)) is not None:
                cfg.append_provider(p)
            self._og_model = og.Model(cfg)
        return self._og_model

    def _decode_genai(self, prompt_ids: list[int], max_length: int) -> Generator[np.ndarray, int, None]:
        import onnxruntime_genai as og

        model = self._genai()
        kept = self._resume(prompt_ids, max_length)
        if kept is None:
            capacity = self._capacity(max_length)
            params = og.GeneratorParams(model)
            # the KV cache is allocated up front: the request's tokens, not the model's context
            params.set_search_options(max_length=capacity, do_sample=False)
            self.last_max_length = capacity
            gen, start = og.Generator(model, params), 0
        else:
            capacity, gen, start = kept.capacity, kept.state, len(kept.seq)
        seq = list(prompt_ids)
        try:
            gen.append_tokens(np.asarray(prompt_ids[start:], np.int32))
            while True:
                logits = np.asarray(gen.get_logits())  # [batch, 1, vocab]: the last position
                try:
                    tok = yield logits.reshape(-1, logits.shape[-1])[-1].astype(np.float32)
                except GeneratorExit:  # the caller is done: the generator holds exactly `seq`
                    if self.keep_prefix:
                        self._kept = _Kept(seq, capacity, gen)
                    raise
                gen.append_tokens(np.asarray([tok], np.int32))
                seq.append(tok)
        finally:
            del gen

    def close(self) -> None:
        self._kept = None
        self._sess = None
        self._og_model = None
