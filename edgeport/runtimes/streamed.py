"""Streamed reference runtime: transformers' own modules, one decoder layer in memory at a time.

The whole-model reference (`ReferenceRuntime`) holds every weight in float32: ~42 GB for
gpt-oss-20b. This runtime builds the same model skeleton on the meta device (same config, same
attention and experts implementations), then for each decoder layer in turn materializes it on
CPU, fills it from the safetensors, runs it on every pending sequence's hidden states and frees
it. The math is transformers' (its decoder layer, rotary module, causal / sliding-window masks,
KV cache and MXFP4 dequantization), so the result is transformers' by construction; only the
order of the loops changes (layers outside, sequences inside).

Memory: one layer's weights less its experts, one expert dequantized at a time (gpt-oss-20b:
~100 MB in float32, against 3.2 GB for a layer's 32), the hidden states of the sequences being
scored; of the lm_head only a float32 chunk of rows while logits are computed (read from the
checkpoint each time: the page cache keeps it). An experts module runs transformers' own experts forward on a one-expert
copy of itself, once per expert the router picked, in transformers' order (experts ascending,
tokens by top-k slot), so the arithmetic is the same.

`prepare(prompts, greedy=..., greedy_tokens=n)` scores many prompts in one pass over the layers
(and their greedy continuations in n passes); `logits` / `greedy` then answer from what it kept.
The gate never asks it for greedy tokens (`forced_greedy`): it scores each candidate's greedy
continuation teacher-forced in the same single pass, which gives the same match length.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeport.core.atomic import atomic_file
from edgeport.core.llama_tools import cache_root
from edgeport.core.source import Source

from .base import ModelInfo, Runtime, TokenizerFileMixin, load_tokenizer
from .reference import model_info_from_hf

LOGIT_ROWS = 16384  # vocabulary rows per float32 chunk of the lm_head


@dataclass
class _Seq:
    pending: list[int]  # token ids not yet run through the layers
    cache: object | None = None  # a transformers DynamicCache when the sequence will be continued
    hidden: object | None = None  # final-norm hidden states [T, H] (float32 torch) of the last pass
    out: list[int] = field(default_factory=list)  # greedy tokens so far


CACHE_ENV = "EDGEPORT_REFERENCE_CACHE"  # where kept final hidden states go (default: cache_root()/reference)
CACHE_VERSION = 1  # bump when what the pass computes changes


def reference_cache(source_digest: str) -> Path:
    """The directory of a checkpoint's kept reference results: keyed by its content digest and
    by what computes them (this code's CACHE_VERSION, torch and transformers), so another
    export of the same checkpoint (another quantization, a re-run) skips the pass over its
    layers for every sequence already scored. Safe to delete at any time."""
    import torch
    import transformers

    key = hashlib.sha256(json.dumps({"source": source_digest, "version": CACHE_VERSION, "torch": torch.__version__,
                                     "transformers": transformers.__version__}, sort_keys=True).encode()).hexdigest()
    return Path(os.environ.get(CACHE_ENV) or cache_root() / "reference") / key


def _is_experts(module) -> bool:
    """A stacked-experts module (gpt-oss's GptOssExperts): its weights load lazily, per routed expert."""
    return hasattr(module, "num_experts") and hasattr(module, "gate_up_proj")


class StreamedReferenceRuntime(TokenizerFileMixin, Runtime):
    name = "transformers-streamed"
    # the gate scores candidates' greedy continuations teacher-forced in the one pass of `prepare`
    # instead of asking for this runtime's own (one more pass over every layer per token)
    forced_greedy = True

    def __init__(self, root: str | Path, info: ModelInfo | None = None, dtype: str = "float32",
                 cache: Path | None = None):
        """`cache`: a reference_cache() directory: `prepare` answers each sequence kept there from it
        (its final hidden states, float32) and keeps there those it computes."""
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM

        if dtype != "float32":
            raise ValueError("the streamed reference computes in float32 only")
        self.src = Source.open(root)
        super().__init__(info or model_info_from_hf(self.src))
        self.torch = torch
        self.tok = load_tokenizer(self.src.root)
        cfg = AutoConfig.from_pretrained(self.src.root, trust_remote_code=False, local_files_only=True)
        cfg.__dict__.pop("quantization_config", None)  # experts are dequantized here, per layer
        with torch.device("meta"):
            self.model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float32)
        self.model.eval()
        self.config = self.model.config
        base = self.model.model
        self.layer_types = list(getattr(self.config, "layer_types", None) or
                                ["full_attention"] * self.config.num_hidden_layers)
        self.rotary = type(base.rotary_emb)(config=self.config)  # on CPU: its buffers are computed
        base.norm.to_empty(device="cpu")
        self._fill(base.norm, "model.norm.")
        self._embed_name = "model.embed_tokens.weight"
        self._head_name = ("lm_head.weight" if "lm_head.weight" in self.src or
                           not getattr(self.config, "tie_word_embeddings", False) else self._embed_name)
        self._one_expert = None  # a one-expert experts module, refilled for each routed expert
        for i, layer in enumerate(base.layers[: self.config.num_hidden_layers]):
            for mname, mod in layer.named_modules():
                if _is_experts(mod):
                    mod.forward = self._experts_forward(mod, f"model.layers.{i}.{mname}.")
        self.experts_run = 0  # experts dequantized and run, for tests and measurements
        self._record: list | None = None  # see _run: the experts' inputs of a layer's first pass
        self._replay: list | None = None  # and their outputs, for its second
        self._hidden: dict[tuple[int, ...], object] = {}
        self._greedy: dict[tuple[tuple[int, ...], int], list[int]] = {}
        self.layers_run = 0  # layer materializations, for tests and measurements
        self.cache = cache
        self.cache_hits = 0

    # --- weights ------------------------------------------------------------------------------
    def _tensor(self, name: str, rows: slice | None = None):
        return self.torch.from_numpy(np.ascontiguousarray(self.src.read_f32(name, rows)))

    def _fill(self, module, prefix: str, lazy: set[str] = frozenset()) -> None:
        for pname, p in module.named_parameters():
            if pname in lazy:
                continue
            t = self._tensor(prefix + pname)
            if tuple(t.shape) != tuple(p.shape):
                raise ValueError(f"{prefix + pname}: checkpoint shape {tuple(t.shape)} != model's {tuple(p.shape)}")
            with self.torch.no_grad():
                p.copy_(t)
        if any(True for _ in module.named_buffers()):
            raise NotImplementedError(f"{prefix}: a layer with buffers is not supported by the streamed reference")

    def _lazy_names(self, layer) -> set[str]:
        return {f"{m}.{p}" for m, mod in layer.named_modules() if _is_experts(mod)
                for p in ("gate_up_proj", "down_proj")}

    def _load_layer(self, i: int):
        torch = self.torch
        layer = self.model.model.layers[i]
        layer.to_empty(device="cpu")
        lazy = self._lazy_names(layer)
        for full in lazy:  # never held whole: one expert at a time (see _experts_forward)
            mname, pname = full.rsplit(".", 1)
            layer.get_submodule(mname)._parameters[pname] = torch.nn.Parameter(torch.empty(0), requires_grad=False)
        self._fill(layer, f"model.layers.{i}.", lazy)
        self.layers_run += 1
        return layer

    def _free_layer(self, i: int) -> None:
        self.model.model.layers[i].to_empty(device="meta")

    def _experts_forward(self, module, prefix: str):
        """The experts module's forward: run now (`_moe`), or, in `_run`'s two passes over a layer,
        recorded on the first and answered from the batch computed between them on the second."""
        torch = self.torch

        def forward(hidden_states, router_indices=None, routing_weights=None):
            if self._record is not None:
                self._record.append((module, prefix, hidden_states, router_indices, routing_weights))
                return torch.zeros_like(hidden_states)
            if self._replay is not None:
                out, idx = self._replay.pop(0)
                if not torch.equal(idx, router_indices):
                    raise RuntimeError(f"{prefix}: the router chose other experts on the second pass")
                return out
            return self._moe(module, prefix, [(hidden_states, router_indices, routing_weights)])[0]
        return forward

    def _moe(self, module, prefix: str, calls: list) -> list:
        """transformers' experts forward for each call (hidden states, router indices, routing
        weights), run on a one-expert copy of `module`: each expert the router picked in any call
        is dequantized once, then applied to each call's tokens routed to it, and the sums are
        accumulated per call as transformers does (experts ascending, tokens by top-k slot)."""
        torch = self.torch
        one = self._one(module)
        outs = [torch.zeros_like(h) for h, _, _ in calls]
        hit = sorted(set().union(*(torch.unique(idx).tolist() for _, idx, _ in calls)))
        for e in hit:  # ascending, as transformers' expert_hit
            if not 0 <= e < module.num_experts:
                continue
            with torch.no_grad():
                one.gate_up_proj[0].copy_(self._expert(prefix + "gate_up_proj", e))
                one.down_proj[0].copy_(self._expert(prefix + "down_proj", e))
                one.gate_up_proj_bias[0].copy_(module.gate_up_proj_bias[e])
                one.down_proj_bias[0].copy_(module.down_proj_bias[e])
            self.experts_run += 1
            for (h, idx, w), out in zip(calls, outs, strict=True):
                top_k_pos, token_idx = torch.where(idx.T == e)  # transformers' order
                if len(token_idx):
                    part = one(h[token_idx], torch.zeros_like(token_idx)[:, None], w[token_idx, top_k_pos][:, None])
                    out.index_add_(0, token_idx, part.to(h.dtype))
        return outs

    def _one(self, module):
        if self._one_expert is None:
            import copy

            cfg = copy.deepcopy(self.config)
            cfg.num_local_experts = 1
            with self.torch.device("cpu"):
                self._one_expert = type(module)(cfg).eval()
        return self._one_expert

    def _expert(self, name: str, e: int):
        """Expert e of a stacked expert tensor, float32, in the layout the model's parameter has:
        MXFP4 (`_blocks` / `_scales`) through transformers' own dequantization."""
        rows = slice(e, e + 1)
        if name in self.src:
            return self._tensor(name, rows)[0]
        from transformers.integrations.mxfp4 import convert_moe_packed_tensors

        blocks = self.torch.from_numpy(self.src.read_raw(name + "_blocks", rows))
        scales = self.torch.from_numpy(self.src.read_raw(name + "_scales", rows))
        return convert_moe_packed_tensors(blocks, scales, dtype=self.torch.float32)[0]

    def _embed(self, ids: Sequence[int]):
        uniq = sorted(set(ids))
        rows = {t: self._tensor(self._embed_name, slice(t, t + 1))[0] for t in uniq}
        return self.torch.stack([rows[t] for t in ids])[None]

    def _logits(self, hidden):
        """float32 logits [T, vocab] of final-norm hidden states [T, H]; the lm_head is read from
        the checkpoint a float32 chunk of rows at a time (the page cache keeps it warm), never held
        whole: gpt-oss-20b's is 1.2 GB in bf16."""
        torch = self.torch
        rows = self.src.entry(self._head_name).shape[0]
        out = torch.empty((hidden.shape[0], rows), dtype=torch.float32)
        for r0 in range(0, rows, LOGIT_ROWS):
            w = self._tensor(self._head_name, slice(r0, min(rows, r0 + LOGIT_ROWS)))
            out[:, r0:r0 + w.shape[0]] = torch.nn.functional.linear(hidden, w)
        return out

    # --- the pass over the layers ---------------------------------------------------------------
    def _run(self, seqs: list[_Seq]) -> None:
        """Run every sequence's pending tokens through all layers (each layer loaded once);
        leaves the final-norm hidden states of those tokens in seq.hidden."""
        from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

        torch = self.torch
        base = self.model.model
        states = []
        with torch.inference_mode():
            for s in seqs:
                h = self._embed(s.pending)
                past = s.cache.get_seq_length() if s.cache is not None else 0
                pos = (torch.arange(h.shape[1]) + past)[None]
                kw = {"config": self.config, "inputs_embeds": h, "attention_mask": None, "cache": s.cache,
                      "position_ids": pos}
                masks = {"full_attention": create_causal_mask(**kw)}
                if "sliding_attention" in self.layer_types:
                    masks["sliding_attention"] = create_sliding_window_causal_mask(**kw)
                states.append([h, pos, masks, self.rotary(h, pos)])
            for i in range(self.config.num_hidden_layers):
                layer = self._load_layer(i)

                def run_layer(s, st, i=i, layer=layer):
                    h, pos, masks, pe = st
                    return layer(h, attention_mask=masks[self.layer_types[i]], position_embeddings=pe,
                                 position_ids=pos, cache=s.cache, use_cache=s.cache is not None)
                try:
                    # many sequences through a MoE layer: a first pass records what reaches the
                    # experts, each expert is dequantized once for all of them, a second pass
                    # uses the results (attention runs twice; a cache would be filled twice)
                    if len(seqs) > 1 and self._lazy_names(layer) and all(s.cache is None for s in seqs):
                        self._record = []
                        for s, st in zip(seqs, states, strict=True):
                            run_layer(s, st)
                        rec, self._record = self._record, None
                        if len({id(r[0]) for r in rec}) != 1:
                            raise NotImplementedError("a layer with more than one experts module")
                        outs = self._moe(rec[0][0], rec[0][1], [r[2:] for r in rec])
                        self._replay = [(o, r[3]) for o, r in zip(outs, rec, strict=True)]
                    for s, st in zip(seqs, states, strict=True):
                        st[0] = run_layer(s, st)
                finally:
                    self._record = self._replay = None
                    self._free_layer(i)
            for s, st in zip(seqs, states, strict=True):
                s.hidden = base.norm(st[0])[0]
                s.pending = []

    def _continue(self, seqs: list[_Seq], n: int) -> None:
        """Greedy tokens for sequences whose prompt has just been run (with a cache), up to n each."""
        while True:
            live = [s for s in seqs if len(s.out) < n]
            for s in live:
                with self.torch.inference_mode():
                    tok = int(self.torch.argmax(self._logits(s.hidden[-1:])[0]))
                s.out.append(tok)
                s.pending = [tok]
            live = [s for s in live if len(s.out) < n]
            if not live:
                return
            self._run(live)

    def _new_cache(self):
        from transformers import DynamicCache

        return DynamicCache(config=self.config)

    # --- the gate's calls -----------------------------------------------------------------------
    def prepare(self, prompts: Sequence[Sequence[int]], greedy: Sequence[Sequence[int]] = (),
                greedy_tokens: int = 0) -> None:
        """Score every prompt in one pass over the layers (and continue those in `greedy` by
        `greedy_tokens` greedy tokens, one more pass per token); `logits` / `greedy` then answer
        from what is kept (final hidden states and token ids, never logits)."""
        want_greedy = {tuple(g) for g in greedy} if greedy_tokens > 0 else set()
        keys = list(dict.fromkeys([tuple(p) for p in prompts] + sorted(want_greedy)))
        for k in keys:
            if k not in want_greedy and (h := self._cached(k)) is not None:
                self._hidden[k] = h
        seqs = {k: _Seq(list(k), self._new_cache() if k in want_greedy else None) for k in keys
                if k not in self._hidden or k in want_greedy}
        if seqs:
            self._run(list(seqs.values()))
        for k, s in seqs.items():
            self._hidden[k] = s.hidden
            self._keep(k, s.hidden)
        if want_greedy:
            gs = [seqs[k] for k in want_greedy]
            self._continue(gs, greedy_tokens)
            for k in want_greedy:
                self._greedy[(k, greedy_tokens)] = seqs[k].out
                seqs[k].cache = None

    def _cache_file(self, key: tuple[int, ...]) -> Path | None:
        if self.cache is None:
            return None
        return self.cache / (hashlib.sha256(np.asarray(key, dtype=np.int64).tobytes()).hexdigest() + ".npy")

    def _cached(self, key: tuple[int, ...]):
        f = self._cache_file(key)
        try:
            h = np.load(f, allow_pickle=False) if f is not None and f.is_file() else None
        except (OSError, ValueError):
            return None  # unreadable: computed again (and rewritten)
        if h is None or h.shape[0] != len(key) or h.dtype != np.float32:
            return None
        self.cache_hits += 1
        return self.torch.from_numpy(h)

    def _keep(self, key: tuple[int, ...], hidden) -> None:
        if (f := self._cache_file(key)) is None:
            return
        try:
            f.parent.mkdir(parents=True, exist_ok=True)
            with atomic_file(f, "wb") as out:
                np.save(out, hidden.numpy(), allow_pickle=False)
        except OSError:
            pass  # a cache that cannot be written costs the next export time, nothing else

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        with self.torch.inference_mode():
            return self._logits(self._final_hidden(token_ids)).numpy()

    def logit_blocks(self, token_ids: Sequence[int], rows: int) -> Iterator[np.ndarray]:
        """`rows` positions' logits at a time from the kept final hidden states (the lm_head is
        read once per block)."""
        hidden = self._final_hidden(token_ids)
        for r0 in range(0, len(hidden), rows):
            with self.torch.inference_mode():
                yield self._logits(hidden[r0:r0 + rows]).numpy()

    def _final_hidden(self, token_ids: Sequence[int]):
        key = tuple(int(t) for t in token_ids)
        hidden = self._hidden.get(key)
        if hidden is None:
            s = _Seq(list(key))
            self._run([s])
            hidden = s.hidden
        return hidden

    def greedy(self, prompt_ids: list[int], n: int) -> list[int]:
        key = tuple(int(t) for t in prompt_ids)
        if (key, n) in self._greedy:
            return list(self._greedy[(key, n)])
        s = _Seq(list(key), self._new_cache())
        self._run([s])
        self._continue([s], n)
        return s.out

    def _decode(self, prompt_ids: list[int], max_new_tokens: int | None = None) -> Generator[np.ndarray, int, None]:
        s = _Seq(list(prompt_ids), self._new_cache())
        while True:
            self._run([s])
            with self.torch.inference_mode():
                tok = yield self._logits(s.hidden[-1:])[0].numpy()
            s.pending = [int(tok)]

    def close(self) -> None:
        self._hidden.clear()
        self._greedy.clear()
