"""Reference runtime: the original checkpoint in transformers, float32 on CPU.

MXFP4 checkpoints are loaded through transformers' own MXFP4 integration, dequantized
(`Mxfp4Config(dequantize=True)`): that loader, not ours, defines what the source means.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence
from pathlib import Path

import numpy as np

from edgeport.core.architectures import for_config
from edgeport.core.source import Source

from .base import ModelInfo, Runtime, TokenizerFileMixin, load_tokenizer


def model_info_from_hf(source) -> ModelInfo:
    """ModelInfo of a checkpoint (an export.source.Source, or its directory)."""
    src = source if isinstance(source, Source) else Source.open(source)
    arch = for_config(src.config)
    tcfg = src.json_file("tokenizer_config.json")
    gen = src.json_file("generation_config.json")
    tok = load_tokenizer(src.root)

    def tid(key: str) -> int | None:
        v = tcfg.get(key)
        v = v.get("content") if isinstance(v, dict) else v
        return tok.token_to_id(v) if v else None

    stops = gen.get("eos_token_id", src.config.get("eos_token_id"))
    stops = stops if isinstance(stops, list) else [stops] if stops is not None else []
    bos = tcfg.get("bos_token")
    eos = tcfg.get("eos_token")
    return ModelInfo(
        architecture=arch.name, chat_format=arch.chat_format, chat_template=src.chat_template,
        bos_token_id=tid("bos_token"), bos_token=bos if isinstance(bos, str) else "",
        eos_token=eos if isinstance(eos, str) else "", add_bos=arch.add_bos, stop_token_ids=stops,
    )


class TorchModelRuntime(TokenizerFileMixin, Runtime):
    """A transformers causal LM in torch (self.model) with the checkpoint's tokenizer (self.tok)."""

    torch = None
    model = None

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        with self.torch.inference_mode():
            out = self.model(self.torch.tensor([list(token_ids)]), use_cache=False)
        return out.logits[0].float().numpy()

    def _decode(self, prompt_ids: list[int], max_new_tokens: int | None = None) -> Generator[np.ndarray, int, None]:
        torch = self.torch
        with torch.inference_mode():
            out = self.model(torch.tensor([prompt_ids]), use_cache=True)
            while True:
                tok = yield out.logits[0, -1].float().numpy()
                out = self.model(torch.tensor([[tok]]), cache=out.cache, use_cache=True)


class ReferenceRuntime(TorchModelRuntime):
    name = "transformers"

    def __init__(self, root: str | Path, info: ModelInfo | None = None, dtype: str = "float32"):
        import torch
        from transformers import AutoModelForCausalLM


        src = Source.open(root)
        super().__init__(info or model_info_from_hf(src))
        kwargs = {}
        if src.is_mxfp4:
            from transformers import Mxfp4Config

            kwargs["quantization_config"] = Mxfp4Config(dequantize=True)
        self.torch = torch
        self.model = AutoModelForCausalLM.from_pretrained(
            root, dtype=getattr(torch, dtype), trust_remote_code=False, local_files_only=True,
            use_safetensors=True, **kwargs,
        ).eval()
        self.model.to(getattr(torch, dtype))  # dequantized MXFP4 experts come back in bf16
        self.tok = load_tokenizer(root)
