"""Build the tiny test checkpoints the repo ships (run once; outputs are committed).

Why trained and not random: on random weights 4-bit quantization gives ~70 % top-1
agreement whatever the converter does, so parity numbers would say nothing. Both
models are trained for a few minutes on CPU on the Python standard library sources
that ship with the interpreter, so their next-token distributions are peaked.

Shapes are chosen so that the GGUF quantizer meets both cases: tensors whose rows
are a multiple of 256 (K-quants apply) and tensors that must fall back, as
gpt-oss-20b's hidden size 2880 does (here 288).

    python -m edgeport.models.build_tiny [--minutes-gpt-oss 4] [--minutes-llama 3]

Everything is seeded; the eval set (parity/evalset.json) is cut from held-out files.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sysconfig
import time
from pathlib import Path

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    GenerationConfig,
    GptOssConfig,
    GptOssForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from edgeport.core.chat import LLAMA3_CHAT_TEMPLATE
from edgeport.core.harmony import CHAT_TEMPLATE as HARMONY_CHAT_TEMPLATE

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent

VOCAB = 1024
SEQ = 256
BATCH = 16

# The o200k / gpt-4o split regex (llama.cpp pre-tokenizer "gpt-4o") and the Llama 3
# regex (llama.cpp "llama-bpe"): llama.cpp picks its regex from tokenizer.ggml.pre, so
# the HF tokenizer must split text exactly the same way.
GPT4O_REGEX = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)

HARMONY_SPECIALS = [
    "<|startoftext|>", "<|endoftext|>", "<|return|>", "<|constrain|>", "<|channel|>",
    "<|start|>", "<|end|>", "<|message|>", "<|call|>",
]
LLAMA_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
]

# Held out of training: the parity eval set is cut from these.
HELDOUT = {"textwrap.py", "fractions.py", "shlex.py", "bisect.py", "colorsys.py", "graphlib.py"}


def corpus_files() -> list[Path]:
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in stdlib.glob("*.py") if p.name not in HELDOUT)
    return [p for p in files if 2_000 < p.stat().st_size < 200_000]


def train_tokenizer(regex: str, specials: list[str], ignore_merges: bool) -> Tokenizer:
    tok = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=True, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - len(specials),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train([str(p) for p in corpus_files()], trainer)
    tok.add_special_tokens(specials)
    assert tok.get_vocab_size() == VOCAB, tok.get_vocab_size()
    return tok


def token_stream(tok: Tokenizer, eos_id: int) -> torch.Tensor:
    ids: list[int] = []
    for p in corpus_files():
        ids.extend(tok.encode(p.read_text(encoding="utf-8", errors="replace")).ids)
        ids.append(eos_id)
    return torch.tensor(ids, dtype=torch.long)


def train(model: torch.nn.Module, data: torch.Tensor, minutes: float, lr: float, label: str) -> None:
    gen = torch.Generator().manual_seed(0)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))
    model.train()
    start = time.time()
    step = 0
    budget = minutes * 60
    while (elapsed := time.time() - start) < budget:
        frac = elapsed / budget
        for g in opt.param_groups:  # warmup then cosine, driven by wall time
            g["lr"] = lr * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
        starts = torch.randint(0, len(data) - SEQ - 1, (BATCH,), generator=gen)
        batch = torch.stack([data[s : s + SEQ] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 20 == 0:
            print(f"[{label}] step {step:4d}  {elapsed:5.0f}s  loss {loss.item():.3f}", flush=True)
        step += 1
    print(f"[{label}] done: {step} steps, final loss {loss.item():.3f}", flush=True)
    model.eval()


def save(model, tok: Tokenizer, out: Path, *, bos: str, eos: str, pad: str, template: str,
         gen_eos: list[str]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    model.to(torch.bfloat16).save_pretrained(out, safe_serialization=True)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=eos, pad_token=pad)
    fast.chat_template = template
    fast.save_pretrained(out)
    ids = {t: tok.token_to_id(t) for t in {bos, eos, pad, *gen_eos}}
    GenerationConfig(
        bos_token_id=ids[bos], eos_token_id=[ids[t] for t in gen_eos], pad_token_id=ids[pad],
        do_sample=True, temperature=1.0, top_p=1.0,
    ).save_pretrained(out)


def build_gpt_oss(minutes: float) -> None:
    tok = train_tokenizer(GPT4O_REGEX, HARMONY_SPECIALS, ignore_merges=False)
    sid = {t: tok.token_to_id(t) for t in HARMONY_SPECIALS}
    cfg = GptOssConfig(
        vocab_size=VOCAB, hidden_size=288, intermediate_size=256, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, num_local_experts=4,
        num_experts_per_tok=2, sliding_window=64, max_position_embeddings=131072,
        rope_parameters={"rope_type": "yarn", "rope_theta": 150000.0, "factor": 32.0,
                         "original_max_position_embeddings": 4096, "beta_fast": 32.0,
                         "beta_slow": 1.0, "truncate": False},
        bos_token_id=sid["<|startoftext|>"], eos_token_id=sid["<|return|>"],
        pad_token_id=sid["<|endoftext|>"], tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = GptOssForCausalLM(cfg)
    train(model, token_stream(tok, sid["<|endoftext|>"]), minutes, 3e-3, "gpt-oss")
    save(model, tok, ROOT / "tiny-gpt-oss", bos="<|startoftext|>", eos="<|return|>",
         pad="<|endoftext|>", template=HARMONY_CHAT_TEMPLATE,
         gen_eos=["<|return|>", "<|endoftext|>", "<|call|>"])


def build_llama(minutes: float) -> None:
    tok = train_tokenizer(LLAMA3_REGEX, LLAMA_SPECIALS, ignore_merges=True)
    sid = {t: tok.token_to_id(t) for t in LLAMA_SPECIALS}
    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=256, intermediate_size=672, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, head_dim=64, max_position_embeddings=2048,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0}, rms_norm_eps=1e-5,
        bos_token_id=sid["<|begin_of_text|>"], eos_token_id=sid["<|end_of_text|>"],
        pad_token_id=sid["<|end_of_text|>"], tie_word_embeddings=False,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg)
    train(model, token_stream(tok, sid["<|end_of_text|>"]), minutes, 3e-3, "llama")
    save(model, tok, ROOT / "tiny-llama", bos="<|begin_of_text|>", eos="<|end_of_text|>",
         pad="<|end_of_text|>", template=LLAMA3_CHAT_TEMPLATE,
         gen_eos=["<|end_of_text|>", "<|eot_id|>"])


def build_evalset() -> None:
    """Short prompts and prompts longer than the sliding window, from held-out files."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    rng = random.Random(0)
    short, long = [], []
    for name in sorted(HELDOUT):
        text = (stdlib / name).read_text(encoding="utf-8")
        for kind, chars, bucket in (("short", 160, short), ("long", 1800, long)):
            at = rng.randrange(0, max(1, len(text) - chars))
            at = text.rfind("\n", 0, at) + 1
            bucket.append({"id": f"{name}:{kind}:{at}", "kind": kind, "text": text[at : at + chars]})
    (REPO / "parity" / "evalset.json").write_text(json.dumps({
        "about": "Held-out Python standard library excerpts (never in the tiny models' training data). "
                 "Long prompts exceed the tiny gpt-oss sliding window (64) several times over.",
        "prompts": short + long[:4],
    }, indent=1) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes-gpt-oss", type=float, default=4.0)
    ap.add_argument("--minutes-llama", type=float, default=3.0)
    ap.add_argument("--only", choices=["gpt-oss", "llama", "evalset"])
    a = ap.parse_args()
    torch.set_num_threads(2)
    if a.only in (None, "evalset"):
        build_evalset()
    if a.only in (None, "gpt-oss"):
        build_gpt_oss(a.minutes_gpt_oss)
    if a.only in (None, "llama"):
        build_llama(a.minutes_llama)
