"""Teach the bundled tiny gpt-oss to answer in harmony (run once; the weights are committed).

edgeport/models/build_tiny.py trains the tiny gpt-oss on Python standard library code only, so after
`<|start|>assistant` it never writes harmony channels. This continues its training, seeded, for
a fixed number of steps, on that same code (half of every step, so its
code modelling and thus its parity figures stay close) mixed with synthetic harmony
conversations rendered exactly as edgeport/core/harmony.py::render_harmony_own renders a prompt:

    system (Reasoning: low|medium|high, sometimes a "Current date:" line), optional developer
    message, 0-2 earlier user / assistant-final turns, the user message, `<|start|>assistant`

and as target (the only tokens with a loss):

    <|channel|>analysis<|message|>{analysis}<|end|><|start|>assistant<|channel|>final<|message|>{final}<|return|>

The analysis is a fixed sequence of short sentences, as many as the effort asks for (low 1,
medium 3, high 8: EFFORT_SENTENCES), the first naming the effort, so a 5M-parameter model
learns it exactly and the length survives 4-bit quantization. The user message is either a code
excerpt from the training files (plain, or after one of a few instructions) whose final answer
is the excerpt's next line, or a
request for a function named after a standard library one, answered with that function's `def`
line. Eval prompts for tests/test_harmony_model.py come from other phrasings and the held-out
files (build_tiny.HELDOUT, which parity/evalset.json is cut from: never trained on).

    python -m edgeport.models.build_harmony [--steps 200] [--lr 2e-3] [--short-steps N] [--init DIR] [--seed N]
    python -m edgeport.models.build_harmony --check-only     # the committed model's figures

The hard part is the effort: the analysis has to copy a word from ~100 tokens back (the system
message is long in this 1024-token vocabulary), beyond the 64-token sliding window, which only
the two full-attention layers can do. The committed weights were made in three runs, each
from the previous one's output (about 50 min on 2 cores in all):

    python -m edgeport.models.build_harmony --steps 400 --out /tmp/h1
    python -m edgeport.models.build_harmony --init /tmp/h1 --seed 1 --steps 400 --out /tmp/h2
    python -m edgeport.models.build_harmony --init /tmp/h2 --seed 2 --steps 300 --short-steps 300 \
        --code-batch 4 --chat-batch 16 --lr 3e-3

The first two (20x loss weight on the effort word, 10x on each stop decision) teach the harmony
shape exactly but leave the model effort-blind: its probabilities for the effort word were
about 0.37 / 0.23 / 0.40 (low / medium / high) whatever the system message said, so it wrote all
8 sentences at every effort. The third, on short conversations (one brief user message, no
history) with twice the chat batch, found the lookup within 100 steps (greedy effort word right
on 24/24 eval cases from step 100; `effort` in the log). Result on EVAL_PROMPTS, greedy: 5 / 22
/ 62 analysis words at low / medium / high on all 8 prompts; eval-set perplexity 50.5 (code-only
model) -> 45.1. Runs are seeded; bit-identical results across CPUs and thread counts are not
promised.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import shutil
import tempfile
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer
from transformers import GptOssForCausalLM

from edgeport.core.chat import Message
from edgeport.core.harmony import render_harmony, render_harmony_own
from edgeport.models.build_tiny import HELDOUT, SEQ, corpus_files

ROOT = Path(__file__).resolve().parent
REPO = ROOT.parent

MODEL = ROOT / "tiny-gpt-oss"

# The analysis sentences, in order; an effort writes the first n of them. The first names the
# effort with the same token the system message's "Reasoning: <effort>" line has: a tiny model
# learns to copy that word (one content-based lookup) far sooner than to count sentences from
# a line that may be hundreds of tokens back; every later stop decision then reads it nearby.
SENTENCES = [
    "The reasoning effort is {effort}.",
    "The user wants the next piece of Python code.",
    "I should read the code they gave me.",
    "Then I write the line that comes next.",
    "Let me check the names that are in scope.",
    "The indentation has to match the block.",
    "I will keep the style of the file.",
    "So the answer is one line of code.",
]
EFFORT_SENTENCES = {"low": 1, "medium": 3, "high": 8}

ANALYSIS = "<|channel|>analysis<|message|>"
FINAL = "<|end|><|start|>assistant<|channel|>final<|message|>"
RETURN = "<|return|>"

CODE_TEMPLATES = [
    "{code}",
    "Continue this code:\n{code}",
    "What is the next line?\n{code}",
    "Complete the next line of this Python code.\n{code}",
    "Next line please:\n{code}",
    "```python\n{code}\n```",
]
FUNCTION_TEMPLATES = [
    "Write a function called {name}.",
    "Define {name} for me.",
    "How would you start a function named {name}?",
]
DEVELOPER = [
    "Answer with Python code.",
    "Be brief.",
    "You help with the Python standard library.",
    "Reply in one line.",
]
DATES = ["2025-03-14", "2025-08-05", "2026-01-20", "2026-11-30"]

# Eval prompts (tests/test_harmony_model.py imports them): phrasings not used above, code from
# the held-out files or written here, function names that do not occur in the training files.
EVAL_PROMPTS = [
    [{"role": "user", "content": "Finish this snippet:\n    def fold(self, text):\n        lines = text.split()"}],
    [{"role": "user", "content": "Please write a function named merge_intervals."}],
    [{"role": "user", "content": "import os\nimport sys\n\ndef main(argv):\n    paths = argv[1:]"}],
    [{"role": "user", "content": "What should follow?\nfor key, value in sorted(table.items()):\n"
                                  "    if value is None:"}],
    [{"role": "developer", "content": "Keep answers short."},
     {"role": "user", "content": "Continue:\nclass Graph:\n    def __init__(self, nodes):"}],
    [{"role": "user", "content": "Write a function called tally_votes."},
     {"role": "assistant", "content": "def tally_votes(ballots):"},
     {"role": "user", "content": "Now write a function called rotate_grid."}],
    [{"role": "user", "content": "def rgb_to_gray(r, g, b):\n    \"\"\"Luma of an RGB colour.\"\"\""}],
    [{"role": "user", "content": "try:\n    value = int(text)\nexcept ValueError:"}],
]


def _lines(files: list[Path]) -> list[list[str]]:
    return [p.read_text(encoding="utf-8", errors="replace").splitlines() for p in files]


class Conversations:
    """Seeded synthetic harmony conversations over the training files."""

    def __init__(self, seed: int = 0):
        files = corpus_files()
        assert not {p.name for p in files} & HELDOUT
        self.files = _lines(files)
        self.defs = sorted({m.group(0).strip() for lines in self.files for line in lines
                            if (m := re.match(r"\s*def (\w+)\(.{0,50}\):\s*$", line))})
        self.rng = random.Random(seed)

    def code_turn(self, max_lines: int = 8) -> tuple[str, str]:
        rng = self.rng
        while True:
            lines = rng.choice(self.files)
            n = rng.randint(2, max_lines)
            at = rng.randrange(0, max(1, len(lines) - n - 1))
            code, nxt = lines[at : at + n], lines[at + n] if at + n < len(lines) else ""
            if (nxt.strip() and len(nxt.strip()) <= 72 and all(len(x) <= 100 for x in code)
                    and sum(bool(x.strip()) for x in code) >= 2 and "<|" not in "".join(code) + nxt):
                break
        return rng.choice(CODE_TEMPLATES).format(code="\n".join(code).strip("\n")), nxt.strip()

    def function_turn(self) -> tuple[str, str]:
        d = self.rng.choice(self.defs)
        name = re.match(r"def (\w+)", d).group(1)
        return self.rng.choice(FUNCTION_TEMPLATES).format(name=name), d

    def turn(self, short: bool = False) -> tuple[str, str]:
        if short:
            return self.function_turn() if self.rng.random() < 0.5 else self.code_turn(max_lines=2)
        return self.function_turn() if self.rng.random() < 0.2 else self.code_turn()

    def sample(self, short: bool = False) -> tuple[str, str]:
        """(prompt text, completion text). A short one (the curriculum's first stage) is the
        system message and one brief user message: `Reasoning: <effort>` is then within the
        sliding window of where the analysis starts."""
        rng = self.rng
        if short:
            u, final = self.turn(short=True)
            effort = rng.choice(list(EFFORT_SENTENCES))
            return render_harmony_own([Message("user", u)], effort, None), completion(effort, final)
        msgs = []
        if rng.random() < 0.35:
            msgs.append(Message("developer", rng.choice(DEVELOPER)))
        for _ in range(rng.choice([0, 0, 0, 1, 1, 2])):
            u, a = self.turn()
            msgs += [Message("user", u), Message("assistant", a)]
        u, final = self.turn()
        msgs.append(Message("user", u))
        effort = rng.choice(list(EFFORT_SENTENCES))
        prompt = render_harmony_own(msgs, effort, rng.choice(DATES) if rng.random() < 0.3 else None)
        return prompt, completion(effort, final)


def completion(effort: str, final: str) -> str:
    return ANALYSIS + analysis(effort) + FINAL + final + RETURN


def analysis(effort: str) -> str:
    return " ".join(SENTENCES[: EFFORT_SENTENCES[effort]]).format(effort=effort)


# Loss weights of the tokens that carry the effort: the effort word the first sentence copies
# from the system message, and each sentence end's choice between another sentence and the
# final message. Unweighted, they are a few tokens among ~80 per answer and the model settles
# for the marginal (one length at every effort).
EFFORT_WEIGHT, STOP_WEIGHT = 20.0, 10.0


def effort_weights(c: str, enc) -> list[float]:
    start = len(ANALYSIS)
    first = SENTENCES[0].split("{")[0]
    word = (start + len(first), c.index(".", start))  # the effort word's characters
    end = c.index(FINAL)
    stops = {i + 1 for i in range(start, end) if c[i] == "."}  # what follows each sentence
    w = []
    for a, b in enc.offsets:
        if a < word[1] and b > word[0]:
            w.append(EFFORT_WEIGHT)
        elif any(a <= i < max(b, a + 1) for i in stops):
            w.append(STOP_WEIGHT)
        else:
            w.append(1.0)
    return w


def chat_row(tok: Tokenizer, prompt: str, completion: str) -> tuple[list[int], list[int], list[float]]:
    """(ids, labels, weights) of a harmony conversation: no label on the prompt, `effort_weights` on the
    completion."""
    pi, enc = tok.encode(prompt).ids, tok.encode(completion)
    return pi + enc.ids, [-100] * len(pi) + enc.ids, [0.0] * len(pi) + effort_weights(completion, enc)


def padded(rows: list[tuple[list[int], list[int], list[float]]], tok: Tokenizer) -> tuple[torch.Tensor, ...]:
    """(ids, labels, weights) rows as tensors, padded on the right (no label, no weight there)."""
    pad = tok.token_to_id("<|endoftext|>")
    width = max(len(r[0]) for r in rows)
    return (torch.tensor([r[0] + [pad] * (width - len(r[0])) for r in rows]),
            torch.tensor([r[1] + [-100] * (width - len(r[1])) for r in rows]),
            torch.tensor([r[2] + [0.0] * (width - len(r[2])) for r in rows]))


def chat_batch(conv: Conversations, tok: Tokenizer, n: int,
               short: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids, labels (-100 on the prompt) and per-token loss weights."""
    return padded([chat_row(tok, *conv.sample(short)) for _ in range(n)], tok)


def weighted_loss(model, ids: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    return weighted_ce(model(input_ids=ids).logits[:, :-1].float(), labels, weights)


def weighted_ce(logits: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """The per-token-weighted cross-entropy of next-token `logits` (positions 0..n-2) against labels 1..n-1."""
    ce = torch.nn.functional.cross_entropy(logits.transpose(1, 2), labels[:, 1:], ignore_index=-100,
                                           reduction="none")
    w = weights[:, 1:]
    return (ce * w).sum() / w.sum()


def code_stream(tok: Tokenizer) -> torch.Tensor:
    eot = tok.token_to_id("<|endoftext|>")
    ids: list[int] = []
    for p in corpus_files():
        ids.extend(tok.encode(p.read_text(encoding="utf-8", errors="replace")).ids)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.long)


def evalset_ppl(model, tok: Tokenizer) -> float:
    prompts = json.loads((REPO / "parity" / "evalset.json").read_text())["prompts"]
    nll, n = 0.0, 0
    with torch.inference_mode():
        for p in prompts:
            ids = torch.tensor([tok.encode(p["text"]).ids[:512]])
            loss = model(input_ids=ids, labels=ids).loss
            nll += loss.item() * (ids.shape[1] - 1)
            n += ids.shape[1] - 1
    return math.exp(nll / n)


def harmony_generate(model, tok: Tokenizer, messages: list[dict], effort: str, max_new: int = 200) -> str:
    stops = {tok.token_to_id(t) for t in ("<|return|>", "<|endoftext|>", "<|call|>")}
    ids = tok.encode(render_harmony(messages, effort)).ids
    out: list[int] = []
    with torch.inference_mode():
        res = model(torch.tensor([ids]), use_cache=True)
        for _ in range(max_new):
            t = int(res.logits[0, -1].argmax())
            out.append(t)
            if t in stops:
                break
            res = model(torch.tensor([[t]]), cache=res.cache, use_cache=True)
    return tok.decode(out, skip_special_tokens=False)


def check(model, tok: Tokenizer) -> dict[str, float]:
    """Mean analysis length (words) per effort over EVAL_PROMPTS; prints failures."""
    pat = re.compile(re.escape(ANALYSIS) + r"(.*?)" + re.escape(FINAL) + r"(.*?)" + re.escape(RETURN) + r"$", re.S)
    means = {}
    for effort in EFFORT_SENTENCES:
        lens = []
        for msgs in EVAL_PROMPTS:
            text = harmony_generate(model, tok, msgs, effort)
            m = pat.match(text)
            if not m or "<|" in m.group(1) + m.group(2):
                print(f"  {effort}: NOT harmony: {text!r}")
                lens.append(0)
                continue
            lens.append(len(m.group(1).split()))
        means[effort] = sum(lens) / len(lens)
        print(f"  {effort}: mean analysis words {means[effort]:.1f}  {lens}  (last final: {m.group(2) if m else ''!r})")
    return means


def effort_accuracy(model, tok: Tokenizer) -> float:
    """How often the effort word's first token, greedy, is the system message's (over EVAL_PROMPTS
    and the three efforts): 1/3 is an effort-blind model. A cheap check of the hard part."""
    first = {e: tok.encode(" " + e).ids[0] for e in EFFORT_SENTENCES}
    lead = ANALYSIS + SENTENCES[0].split(" {")[0]
    hits = 0
    with torch.inference_mode():
        for msgs in EVAL_PROMPTS:
            for effort in EFFORT_SENTENCES:
                ids = torch.tensor([tok.encode(render_harmony(msgs, effort) + lead).ids])
                logits = model(input_ids=ids).logits[0, -1]
                hits += max(first, key=lambda e: logits[first[e]].item()) == effort
    return hits / (len(EVAL_PROMPTS) * len(EFFORT_SENTENCES))


def optimizer(model, lr: float) -> torch.optim.Optimizer:
    return torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, betas=(0.9, 0.95))


def schedule(opt: torch.optim.Optimizer, lr: float, step: int, steps: int) -> None:
    """Warmup over 20 steps, then cosine down to 10 % of `lr`."""
    for g in opt.param_groups:
        g["lr"] = lr * min(1.0, (step + 1) / 20) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / steps)))


def code_batch_loss(model, data: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """The next-token loss on `n` random SEQ-token windows of the code stream (as build_tiny trains)."""
    starts = torch.randint(0, len(data) - SEQ - 1, (n,), generator=gen)
    code = torch.stack([data[s : s + SEQ] for s in starts])
    return model(input_ids=code, labels=code).loss


def update(model, opt: torch.optim.Optimizer, loss: torch.Tensor, before_step=None) -> None:
    """One optimizer step on `loss`; `before_step` runs between the backward pass and the step
    (build_tools' ExpertQAT puts the fp32 masters back there)."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    if before_step:
        before_step()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()


def train(model, tok: Tokenizer, steps: int, lr: float, code_batch: int, chat_batch_n: int, seed: int = 0,
          short_steps: int = 0) -> None:
    """`short_steps` first steps on short conversations only (see Conversations.sample), then
    the full mixture; every step also trains on the code (so its code modelling stays close)."""
    gen = torch.Generator().manual_seed(seed)
    conv = Conversations(seed=seed)
    data = code_stream(tok)
    opt = optimizer(model, lr)
    model.train()
    start = time.time()
    for step in range(steps):
        schedule(opt, lr, step, steps)
        code_loss = code_batch_loss(model, data, code_batch, gen)
        chat_loss = weighted_loss(model, *chat_batch(conv, tok, chat_batch_n, short=step < short_steps))
        update(model, opt, code_loss + chat_loss)
        if step % 20 == 0 or step == steps - 1:
            model.eval()
            acc = effort_accuracy(model, tok)
            model.train()
            print(f"step {step:4d}  {time.time() - start:5.0f}s  code {code_loss.item():.3f}  "
                  f"chat {chat_loss.item():.3f}  effort {acc:.2f}", flush=True)
    model.eval()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--code-batch", type=int, default=8)
    ap.add_argument("--chat-batch", type=int, default=8)
    ap.add_argument("--short-steps", type=int, default=0,
                    help="first steps on short conversations only (a curriculum; default 0)")
    ap.add_argument("--seed", type=int, default=0, help="seed of the data order and sampling (default 0)")
    ap.add_argument("--init", type=Path, help="start from this model directory's weights (default: the bundled)")
    ap.add_argument("--check-only", action="store_true", help="only print the eval figures of the model as it is")
    ap.add_argument("--out", type=Path, default=MODEL, help="where to write the model (default: in place)")
    a = ap.parse_args()
    torch.set_num_threads(2)
    torch.manual_seed(a.seed)
    tok = Tokenizer.from_file(str(MODEL / "tokenizer.json"))
    model = GptOssForCausalLM.from_pretrained(a.init or MODEL, dtype=torch.float32).eval()
    print(f"eval-set perplexity before: {evalset_ppl(model, tok):.3f}", flush=True)
    if a.check_only:
        check(model, tok)
        return
    t0 = time.time()
    train(model, tok, a.steps, a.lr, a.code_batch, a.chat_batch, a.seed, a.short_steps)
    print(f"trained {a.steps} steps in {time.time() - t0:.0f} s", flush=True)
    model.to(torch.bfloat16)
    model.to(torch.float32)  # evaluate what is saved
    print(f"eval-set perplexity after: {evalset_ppl(model, tok):.3f}", flush=True)
    check(model, tok)
    with tempfile.TemporaryDirectory() as tmp:
        model.to(torch.bfloat16).save_pretrained(tmp, safe_serialization=True)
        a.out.mkdir(parents=True, exist_ok=True)
        if a.out.resolve() != MODEL.resolve():
            for f in MODEL.iterdir():
                shutil.copy2(f, a.out / f.name)
        shutil.copy2(Path(tmp) / "model.safetensors", a.out / "model.safetensors")
    print(f"wrote {a.out / 'model.safetensors'}")


if __name__ == "__main__":
    main()
