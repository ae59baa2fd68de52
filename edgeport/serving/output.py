"""What the front makes of an engine's text, for every API it answers (chat completions, responses):
harmony parsed into reasoning, content and function calls, stop-token texts cut, call ids given."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator

from edgeport.core.chat import StopMatcher
from edgeport.core.harmony import Delta, HarmonyStream
from edgeport.core.template_tools import TemplateCallStream

from .engines import Engine, Piece

CallReader = TemplateCallStream | HarmonyStream  # what reads a request's calls from the model's text

MALFORMED_NOTE = "the model's output was not well-formed harmony; the text that did not parse is in content"


class Output:
    """Engine text -> deltas (reasoning, content, function calls): harmony parsed, stop-token texts cut;
    each call gets its OpenAI id here."""

    def __init__(self, engine: Engine, harmony: bool, calls: CallReader | None = None):
        # `calls`: the reader of the model's calls chat_generation made for the request's tools (a harmony
        # stream that knows the names offered; a dense model's template format: template_tools.py)
        self.harmony = (calls if isinstance(calls, HarmonyStream) else HarmonyStream()) if harmony else None
        self.calls = calls if isinstance(calls, TemplateCallStream) else None
        self.cuts = [t for t in engine.stop_texts if t]
        self.call_ids: list[str] = []

    def feed(self, text: str) -> Delta:
        if self.harmony:
            return self.harmony.feed(text)
        return self.calls.feed(text) if self.calls else Delta(content=text)

    def finish(self, tail: str = "") -> Delta:
        parser = self.harmony or self.calls
        if parser:
            d1, d2 = parser.feed(tail), parser.finish()
            return Delta(d1.reasoning + d2.reasoning, d1.content + d2.content, d1.calls + d2.calls)
        return Delta(content=tail)

    def tool_calls(self, d: Delta) -> list[dict]:
        """`d`'s calls as OpenAI's streamed tool_calls entries (id, type and name on a call's first)."""
        out = []
        for c in d.calls:
            if c.name is None:
                out.append({"index": c.index, "function": {"arguments": c.arguments}})
            else:
                self.call_ids.append(f"call_{uuid.uuid4().hex[:24]}")
                out.append({"index": c.index, "id": self.call_ids[-1], "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments}})
        return out

    def finish_reason(self, reason: str) -> str:
        return "tool_calls" if reason == "stop" and self.call_ids else reason

    @property
    def malformed(self) -> bool:
        return bool(self.harmony and self.harmony.malformed)


async def pieces(source: AsyncIterator[Piece], out: Output) -> AsyncIterator[tuple[Delta, str | None, int]]:
    """(delta, finish_reason on the last, completion tokens)."""
    harmony = out.harmony is not None
    # llama-server renders EOG tokens as text: cut there (harmony's parser ends at <|return|> itself)
    cut = StopMatcher(out.cuts if not harmony else [])
    async with contextlib.aclosing(source) as pieces:
        async for p in pieces:
            text = cut.feed(p.text)
            if p.finish_reason is not None:
                yield out.finish(text + cut.flush()), p.finish_reason, p.completion_tokens
                return
            if d := out.feed(text):
                yield d, None, 0
    yield out.finish(cut.flush()), "stop", 0
