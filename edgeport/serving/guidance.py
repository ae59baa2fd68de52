"""Constrained decoding for engines that sample in our own Python loop (the in-process ONNX runtime):
llguidance turns a generation's JSON schema (or GBNF grammar) into a per-step token mask.

Which schemas are accepted, and when the constraint starts (gpt-oss: at the final channel, or at a
forced call's arguments), is decided once for every engine in constrained.py; this module only
enforces what that decided. JSON whitespace is bounded as llama.cpp's converter bounds it (one
space, or newlines and an indent of at most 20), so a weak model sampling at temperature 1 cannot
pad an answer with whitespace until max_tokens, which an unbounded pattern would allow.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np

from .protocol import APIError

WHITESPACE = {"whitespace_pattern": r"(?: |\n{1,2}[ \t]{0,20})?"}


def available() -> bool:
    try:
        import llguidance  # noqa: F401
    except ImportError:
        return False
    return True


# llama.cpp's converter writes an integer as at most 16 digits ("[0] | [1-9] [0-9]{0,15}"); llguidance
# bounds none, and a weak model at temperature 0 then writes one digit after another until max_tokens.
INTEGER_BOUND = 10**16 - 1


def digits_bounded(schema):
    """`schema` with every integer not bounded on a side bounded as llama.cpp's converter bounds it
    (16 digits), so both engines end a number alike; an answer valid here is valid under `schema`."""
    if isinstance(schema, list):
        return [digits_bounded(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: (v if k in ("enum", "const", "default", "examples") else digits_bounded(v)) for k, v in schema.items()}
    types = schema.get("type")
    if types == "integer" or (isinstance(types, list) and "integer" in types):
        if "minimum" not in out and "exclusiveMinimum" not in out:
            out["minimum"] = -INTEGER_BOUND
        if "maximum" not in out and "exclusiveMaximum" not in out:
            out["maximum"] = INTEGER_BOUND
    return out


def grammar_for(json_schema: dict | None, grammar: str | None) -> str:
    """llguidance's grammar for a generation's constraint (a JSON schema, or a GBNF grammar)."""
    import llguidance as llg

    if json_schema is not None:
        return llg.LLMatcher.grammar_from_json_schema(digits_bounded(json_schema), overrides=WHITESPACE)
    return llg.grammar_from("gbnf", grammar or "")


class Guide:
    """One model's llguidance tokenizer (built once: ~40 ms on the tiny vocabulary, seconds on o200k),
    its end tokens counting as the grammar's EOS, so a complete answer may end with any of them, and the
    last compiled grammars: a request's schema is compiled once (checked before the stream starts) and
    each generation under it starts from a copy, not a second compile."""

    CACHED = 64  # compiled grammars kept (clients repeat their schemas)

    def __init__(self, tokenizer_json: str, vocab_size: int, stop_token_ids: Sequence[int]):
        import llguidance as llg

        self.vocab_size = vocab_size
        self.tok = llg.LLTokenizer(tokenizer_json, n_vocab=vocab_size, eos_token=list(stop_token_ids))
        self._compiled: OrderedDict[str, object] = OrderedDict()
        self._lock = threading.Lock()  # the front checks on its loop, the runtime masks on a worker thread

    def _matcher(self, json_schema: dict | None, grammar: str | None, param: str):
        """A fresh matcher for the constraint, or a 400 when llguidance cannot compile it."""
        import llguidance as llg

        try:
            key = grammar_for(json_schema, grammar)
        except ValueError as e:
            raise _refused(str(e), param) from None
        with self._lock:
            pristine = self._compiled.pop(key, None)
            if pristine is None:
                pristine = llg.LLMatcher(self.tok, key, log_level=0)
                if pristine.is_error():
                    raise _refused(pristine.get_error(), param)
            self._compiled[key] = pristine  # most recently used last
            while len(self._compiled) > self.CACHED:
                self._compiled.popitem(last=False)
            return pristine.deep_copy()

    def check(self, json_schema: dict | None, grammar: str | None = None,
              param: str = "response_format.json_schema.schema") -> None:
        """A 400 (before anything is generated) for a constraint llguidance cannot compile."""
        self._matcher(json_schema, grammar, param)

    def mask(self, json_schema: dict | None, grammar: str | None) -> TokenMask:
        return TokenMask(self, self._matcher(json_schema, grammar, "response_format.json_schema.schema"))


def _refused(msg: str, param: str) -> APIError:
    return APIError(400, f"this engine cannot enforce this schema: {' '.join(msg.split())}", param=param,
                    code="unsupported_schema")


class TokenMask:
    """One generation's constraint: `allows` checks one token, `apply` masks the logits a step samples
    from (only when the unconstrained choice is not allowed: runtimes/base.constrained_sample),
    `advance` feeds the token taken. The runtime's own loop calls them (runtimes/base.py)."""

    def __init__(self, guide: Guide, matcher):
        self.guide, self.matcher = guide, matcher

    def allows(self, token: int) -> bool:
        return token < self.guide.vocab_size and self.matcher.validate_tokens([token]) == 1

    def apply(self, logits: np.ndarray) -> np.ndarray:
        """The logits with every token the grammar forbids at this step set to -inf (a copy)."""
        n = min(self.guide.vocab_size, len(logits))
        bits = np.frombuffer(self.matcher.compute_bitmask(), dtype=np.uint8)
        allowed = np.unpackbits(bits, count=n, bitorder="little").view(bool)  # 0/1 bytes: a view, no copy
        if n == len(logits):
            return np.where(allowed, logits, np.float32(-np.inf))
        out = np.full(logits.shape, -np.inf, dtype=logits.dtype)  # a padded vocabulary's tail: never allowed
        out[:n] = np.where(allowed, logits[:n], np.float32(-np.inf))
        return out

    def advance(self, token: int) -> None:
        if not self.matcher.consume_token(token):  # only a masked-out token can fail: a bug, not the model
            raise RuntimeError(f"constrained decoding: token {token} rejected: {self.matcher.get_error()}")
