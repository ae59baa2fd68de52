"""llama.cpp runtime (llama-cpp-python) for GGUF artifacts.

Loads go through core/llama_log.py's AMX guard (`extra_bufts_enabled`, `model_params`):
extra buffer types are off on CPUs with Intel AMX, where repacked Q4_K matmuls segfault.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from pathlib import Path

import gguf
import numpy as np

from edgeport.core.architectures import ARCHITECTURES
from edgeport.core.errors import RuntimeUnavailable
from edgeport.core.llama_log import LlamaLog, extra_bufts_enabled, model_params, require_llama_cpp

from .base import ModelInfo, Runtime


def train_context(path: Path) -> int | None:
    """The context length a GGUF was trained for (its `<arch>.context_length`), if it says."""
    r = gguf.GGUFReader(path)
    arch = r.fields["general.architecture"].contents()
    f = r.fields.get(f"{arch}.context_length")
    return int(f.contents()) if f else None


class LlamaCppRuntime(Runtime):
    name = "llama.cpp"

    def __init__(self, gguf_path: str | Path, info: ModelInfo | None = None, *, n_ctx: int = 4096,
                 n_threads: int | None = None, n_gpu_layers: int = 0):
        self.lc = require_llama_cpp()
        self.path = Path(gguf_path)
        if not self.path.is_file():
            raise RuntimeUnavailable(f"GGUF file not found: {self.path}")
        self.n_ctx = min(n_ctx, train_context(self.path) or n_ctx)
        self.n_threads, self.n_gpu_layers = n_threads, n_gpu_layers
        self.extra_bufts = extra_bufts_enabled(self.path)
        self._gen = self._load(n_ctx)
        self._scorer = None
        super().__init__(info or self._info_from_gguf())

    def _load(self, n_ctx: int):
        with model_params(self.lc, self.extra_bufts), LlamaLog():
            return self.lc.Llama(
                model_path=str(self.path), n_ctx=n_ctx, n_batch=512, n_ubatch=512,
                verbose=False, n_threads=self.n_threads,
                n_gpu_layers=self.n_gpu_layers,
                # the sliding-window layers' small KV cache (window + batch), as llama-cli and
                # llama-server keep it; llama.cpp's context default is full-size (what
                # planning/kv.py plans for this runtime)
                swa_full=False,
            )

    def _info_from_gguf(self) -> ModelInfo:
        md = self._gen.metadata
        arch = next((a for a in ARCHITECTURES if a.gguf_arch_name == md.get("general.architecture")), None)
        eos = [self._gen.token_eos()]
        return ModelInfo(
            architecture=arch.name if arch else md.get("general.architecture", "?"),
            chat_format=arch.chat_format if arch else "template",
            chat_template=md.get("tokenizer.chat_template"),
            bos_token_id=self._gen.token_bos(), add_bos=md.get("tokenizer.ggml.add_bos_token") == "true",
            stop_token_ids=eos,
        )

    def tokenize(self, text: str) -> list[int]:
        return self._gen.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self._gen.detokenize(list(ids), special=True).decode("utf-8", errors="replace")

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        out = np.empty((len(token_ids), self._gen.n_vocab()), dtype=np.float32)
        r0 = 0
        for block in self._scored(token_ids, copy=False):
            out[r0:r0 + len(block)] = block
            r0 += len(block)
        return out

    def logit_blocks(self, token_ids: Sequence[int], rows: int) -> Iterator[np.ndarray]:
        """Each scoring batch's rows as llama.cpp decodes them, whatever `rows` asks (a batch holds
        at most ~128 MiB of logits, `_scoring_rows`); the gate cuts them to its own blocks."""
        yield from self._scored(token_ids, copy=True)

    def _scored(self, token_ids: Sequence[int], copy: bool) -> Iterator[np.ndarray]:
        """Every position's logits, one scoring batch at a time, read from llama.cpp's output
        buffer (a view, overwritten by the next batch, unless `copy`); never Llama.eval's
        n_ctx x vocab `scores` copy."""
        n = len(token_ids)
        if n > self.n_ctx:
            raise ValueError(f"{n} tokens do not fit n_ctx={self.n_ctx}")
        ctx, batch, rows = self._scoring_context(n)
        ctx.kv_cache_clear()
        vocab = self._gen.n_vocab()
        for i in range(0, n, rows):
            part = list(token_ids[i:i + rows])
            batch.set_batch(batch=part, n_past=i, logits_all=True)
            ctx.decode(batch)
            view = np.ctypeslib.as_array(ctx.get_logits(), shape=(len(part), vocab))
            yield view.copy() if copy else view

    def _scoring_context(self, n: int):
        """A second context on the same loaded model (never a second load: no second copy of
        repacked weights) for scoring every position. llama.cpp keeps an output buffer of one
        batch's logits (rows x vocab float32) and a compute buffer sized by the batch for the
        context's life, so at a large vocabulary the batch is cut to keep the output buffer near
        128 MiB (128 rows at gpt-oss's 201k; small vocabularies keep 512). Its sliding-window
        layers keep the full cache: a prompt scored in several batches then gets exactly the
        logits of one batch, which is how llama-server (512-token micro-batches) processes the
        eval prompts (at most 512 tokens); with the small cache they would depend on the batch."""
        if self._scorer is None or self._scorer[0].params.n_ctx < n:
            from llama_cpp import _internals

            if self._scorer is not None:
                self._scorer[0].close()
                self._scorer[1].close()
            rows = self._scoring_rows()
            gen = self._gen.context_params  # the generating context's settings (its YaRN ones included)
            params = type(gen).from_buffer_copy(gen)
            params.n_ctx = min(self.n_ctx, max(512, 1 << (n - 1).bit_length()))
            params.n_batch = params.n_ubatch = rows
            params.swa_full = True
            with LlamaLog():
                ctx = _internals.LlamaContext(model=self._gen._model, params=params, verbose=False)
            batch = _internals.LlamaBatch(n_tokens=rows, embd=0, n_seq_max=1, verbose=False)
            self._scorer = (ctx, batch, rows)
        return self._scorer

    def _scoring_rows(self) -> int:
        """Tokens per scoring batch: ~128 MiB of float32 logits, 64 to 512 rows."""
        rows = (128 << 20) // (4 * self._gen.n_vocab())
        return max(64, min(512, 1 << max(0, rows.bit_length() - 1)))

    def _last_logits(self) -> np.ndarray:
        return np.ctypeslib.as_array(self._gen._ctx.get_logits(), shape=(self._gen.n_vocab(),)).copy()

    def _decode(self, prompt_ids: list[int], max_new_tokens: int | None = None) -> Generator[np.ndarray, int, None]:
        g = self._gen
        if len(prompt_ids) >= self.n_ctx:
            raise ValueError(f"prompt of {len(prompt_ids)} tokens does not fit n_ctx={self.n_ctx}")
        g.reset()
        g.eval(prompt_ids)
        while True:
            tok = yield self._last_logits()
            if g.n_tokens >= self.n_ctx:
                return
            g.eval([tok])

    def close(self) -> None:
        for m in (*(self._scorer or ())[:2], self._gen):
            if m is not None:
                m.close()
        self._gen = self._scorer = None
