"""The one runtime interface. A runtime implements five primitives; generation, streaming,
chat formatting, sampling and stop handling are shared here so every runtime behaves the same.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np

from edgeport.core.chat import StopMatcher, render_template
from edgeport.core.errors import RuntimeUnavailable
from edgeport.core.harmony import render_harmony


@dataclass
class ModelInfo:
    """What the shared code needs to know about a model, whatever file it came from."""

    architecture: str  # export.architectures name: "gpt-oss", "llama"
    chat_format: str  # "harmony" or "template"
    chat_template: str | None = None
    bos_token_id: int | None = None
    bos_token: str = ""
    eos_token: str = ""
    add_bos: bool = False
    stop_token_ids: list[int] = field(default_factory=list)


Prompt = str | Sequence[dict]


@dataclass
class GenerationResult:
    completion_tokens: int = 0
    finish_reason: str = "length"  # "stop": a stop token or string; "length": max_new_tokens


class Runtime(ABC):
    """load (the constructor), generate / stream, logits, tokenize / detokenize, close."""

    name: str = "?"

    def __init__(self, info: ModelInfo):
        self.info = info

    # --- what each runtime implements ---------------------------------------------------
    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Text to ids, special tokens recognised, no BOS added."""

    @abstractmethod
    def detokenize(self, ids: Sequence[int]) -> str: ...

    @abstractmethod
    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        """float32 [len(token_ids), vocab]: row i predicts token i+1."""

    def logit_blocks(self, token_ids: Sequence[int], rows: int) -> Iterator[np.ndarray]:
        """`logits` a block of at most `rows` positions at a time, in order, for a caller that
        never needs them all at once (the parity gate). This default computes them all; a
        runtime that can produce them a block at a time overrides it."""
        full = self.logits(token_ids)
        for r0 in range(0, len(full), rows):
            yield full[r0:r0 + rows]

    @abstractmethod
    def _decode(self, prompt_ids: list[int], max_new_tokens: int | None = None) -> Generator[np.ndarray, int, None]:
        """Yield next-token logits; receive the chosen token with send(). `max_new_tokens`: how
        many the caller may generate (None: not known), for a runtime that allocates its KV
        cache up front (onnxruntime-genai); the others grow theirs and ignore it."""

    def close(self) -> None:  # noqa: B027 - optional
        pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # --- shared behaviour ------------------------------------------------------------------
    def encode(self, text: str, add_bos: bool | None = None) -> list[int]:
        ids = self.tokenize(text)
        if (self.info.add_bos if add_bos is None else add_bos) and self.info.bos_token_id is not None:
            if not ids or ids[0] != self.info.bos_token_id:
                ids = [self.info.bos_token_id, *ids]
        return ids

    def format_prompt(self, prompt: Prompt, reasoning_effort: str | None = None) -> str:
        if isinstance(prompt, str):
            return prompt
        if self.info.chat_format == "harmony":
            return render_harmony(prompt, reasoning_effort)
        if not self.info.chat_template:
            raise ValueError("this model has no chat template; pass a plain prompt string")
        return render_template(self.info.chat_template, prompt, bos_token=self.info.bos_token,
                               eos_token=self.info.eos_token, effort=reasoning_effort)

    def stream(self, prompt: Prompt, max_new_tokens: int = 128, temperature: float = 0.0,
               top_p: float = 1.0, seed: int = 0, stop: Sequence[str] = (),
               reasoning_effort: str | None = None) -> Iterator[str]:
        text = self.format_prompt(prompt, reasoning_effort)
        # chat templates carry their own BOS; plain prompts get the model's default
        ids = self.encode(text, add_bos=None if isinstance(prompt, str) else False)
        return self.stream_ids(ids, max_new_tokens, temperature, top_p, seed, stop)

    def stream_ids(self, ids: list[int], max_new_tokens: int = 128, temperature: float = 0.0,
                   top_p: float = 1.0, seed: int = 0, stop: Sequence[str] = (),
                   result: GenerationResult | None = None,
                   logit_bias: dict[int, float] | None = None,
                   constraint: TokenConstraint | None = None, allocate: int = 0) -> Iterator[str]:
        """Text pieces generated after prompt `ids` (special tokens rendered, stop tokens not);
        `result`, when given, receives the token count and why generation ended; `constraint`, where
        a runtime samples here, decides which tokens each step may take (constrained_sample);
        `allocate`, new tokens to size a runtime's state for where a continuation will follow (the
        serving front's constrained phase after a free one; more than max_new_tokens)."""
        result = result if result is not None else GenerationResult()
        rng = np.random.default_rng(seed)
        matcher = StopMatcher(stop)
        out_ids: list[int] = []
        emitted = ""
        dec = self._decode(ids, max(max_new_tokens, allocate))
        logits = next(dec)
        result.finish_reason = "length"
        try:
            for _ in range(max_new_tokens):
                if logit_bias:  # OpenAI's logit_bias: added to the logits; -100 bans a token
                    logits = logits.copy()
                    for t, b in logit_bias.items():
                        logits[t] = -np.inf if b <= -100 else logits[t] + b
                if constraint is None:
                    tok = sample(logits, temperature, top_p, rng)
                else:
                    tok = constrained_sample(constraint, logits, temperature, top_p, rng)
                if tok in self.info.stop_token_ids:
                    result.finish_reason = "stop"
                    break
                if constraint is not None:
                    constraint.advance(tok)
                out_ids.append(tok)
                result.completion_tokens = len(out_ids)
                full = self.detokenize(out_ids)
                if not full.endswith("\ufffd"):  # wait for the rest of a multi-byte character
                    piece, emitted = full[len(emitted):], full
                    if piece := matcher.feed(piece):
                        yield piece
                    if matcher.stopped:
                        result.finish_reason = "stop"
                        return
                logits = dec.send(tok)
            if rest := matcher.flush():
                yield rest
        finally:
            dec.close()

    def generate(self, prompt: Prompt, max_new_tokens: int = 128, temperature: float = 0.0,
                 top_p: float = 1.0, seed: int = 0, stop: Sequence[str] = (),
                 reasoning_effort: str | None = None) -> str:
        return "".join(self.stream(prompt, max_new_tokens, temperature, top_p, seed, stop, reasoning_effort))

    def greedy(self, prompt_ids: list[int], n: int) -> list[int]:
        """n greedy token ids after prompt_ids (stop tokens included): for parity checks."""
        out: list[int] = []
        dec = self._decode(list(prompt_ids), n)
        logits = next(dec)
        for _ in range(n):
            tok = int(np.argmax(logits))
            out.append(tok)
            if len(out) < n:
                logits = dec.send(tok)
        dec.close()
        return out


def load_tokenizer(*dirs: Path):
    """The first tokenizer.json among `dirs`, as a `tokenizers.Tokenizer`."""
    from tokenizers import Tokenizer


    for d in dirs:
        if (Path(d) / "tokenizer.json").is_file():
            return Tokenizer.from_file(str(Path(d) / "tokenizer.json"))
    raise RuntimeUnavailable(f"no tokenizer.json in {', '.join(map(str, dirs))}")


class TokenizerFileMixin:
    """tokenize / detokenize for runtimes that read the artifact's tokenizer.json (self.tok)."""

    tok = None

    def tokenize(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=False)


class TokenConstraint(Protocol):
    """A per-step token constraint (edgeport/serving/guidance.TokenMask)."""

    def allows(self, token: int) -> bool: ...

    def apply(self, logits: np.ndarray) -> np.ndarray: ...

    def advance(self, token: int) -> None: ...


def constrained_sample(c: TokenConstraint, logits: np.ndarray, temperature: float, top_p: float,
                       rng: np.random.Generator) -> int:
    """A token from `logits` restricted to what `c` allows, the whole mask computed only when the
    unrestricted choice is not allowed. Exact, not an approximation: greedy's argmax, if allowed, is
    the masked argmax; a draw from p kept when allowed, else a draw from p masked and renormalised,
    takes t with p(t) + (1 − A)·p(t)/A = p(t)/A (A: the allowed mass). A nucleus (top_p < 1) is cut
    before the mask in the first draw, so there the mask always comes first."""
    if temperature <= 0 or top_p >= 1.0:
        tok = sample(logits, temperature, top_p, rng)
        if c.allows(tok):
            return tok
    return sample(c.apply(logits), temperature, top_p, rng)


def sample(logits: np.ndarray, temperature: float, top_p: float, rng: np.random.Generator) -> int:
    if temperature <= 0:
        return int(np.argmax(logits))
    z = logits.astype(np.float64) / temperature
    p = np.exp(z - z.max())
    p /= p.sum()
    if top_p < 1.0:
        order = np.argsort(-p)
        keep = order[: int(np.searchsorted(np.cumsum(p[order]), top_p) + 1)]
        mask = np.zeros_like(p)
        mask[keep] = p[keep]
        p = mask / mask.sum()
    return int(rng.choice(len(p), p=p))
