"""Randomly initialised checkpoints, like the `tiny-random-*` models CI pipelines export as a
smoke test: the bundled tiny models' architecture and tokenizer, a real-sized vocabulary
(default 32768: embedding and output rows past the tokenizer's are never produced by it, as in
padded production vocabularies) and untrained, seeded weights saved in bf16.

Their next-token distributions are nearly flat, so any quantization flips many argmaxes while
costing almost nothing (KL ~1e-4): the parity gate must pass them (it judges top-1 by the
reference's own margin, parity/metrics.py::top1_regret) while still failing broken writers on
the trained models.

    python -m edgeport.models.build_random --family llama|gpt-oss --out DIR [--vocab 32768] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

from edgeport.core.architectures import ARCHITECTURES, by_name

HERE = Path(__file__).resolve().parent
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def build(family: str, out: Path, vocab: int = 32768, seed: int = 0) -> Path:
    """Write a random-init bf16 safetensors checkpoint of `family` with `vocab` rows to `out`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    template = HERE / by_name(family).demo_model  # the family's bundled checkpoint
    cfg = json.loads((template / "config.json").read_text())
    if vocab < cfg["vocab_size"]:
        raise ValueError(f"vocab {vocab} is smaller than the tokenizer's {cfg['vocab_size']}")
    cfg["vocab_size"] = vocab
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.bfloat16)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (template / name).is_file():
            shutil.copy2(template / name, out / name)
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--family", choices=sorted(a.name for a in ARCHITECTURES if a.demo_model), required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--vocab", type=int, default=32768)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    print(build(a.family, a.out, a.vocab, a.seed))
