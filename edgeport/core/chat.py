"""Chat messages, checkpoint chat templates and stop strings, shared by every runtime and the
server. gpt-oss speaks harmony (edgeport.core.harmony); other families use the Jinja chat template
that ships with the checkpoint, rendered here in a sandbox."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import TemplateRefused
from .harmony import normalize_effort


@dataclass(frozen=True)
class Message:
    role: str
    content: str


def as_messages(messages: Sequence[dict | Message]) -> list[Message]:
    out = []
    for m in messages:
        out.append(m if isinstance(m, Message) else Message(m["role"], m["content"]))
    return out


def render_template(template: str, messages: Sequence[dict | Message], *, bos_token: str = "",
                    eos_token: str = "", effort: str | None = None, tools: list[dict] | None = None) -> str:
    """Render a checkpoint's jinja chat template in a sandbox (templates are untrusted input). Messages
    given as dicts keep their other keys (`tool_calls`, a result's `name`: template_tools.py), and
    `tools` is passed as Hugging Face passes it (None when the request offers none)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise  # as transformers' apply_chat_template defines it
    msgs = [dict(m) if isinstance(m, dict) else {"role": m.role, "content": m.content} for m in messages]
    return env.from_string(template).render(
        messages=msgs, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token,
        reasoning_effort=normalize_effort(effort), tools=tools or None)


def _raise(message: str):
    raise TemplateRefused(f"this model's chat template refused the messages: {message}")


def _tojson(x, ensure_ascii: bool = False, indent: int | None = None, separators=None, sort_keys: bool = False) -> str:
    """Hugging Face's `tojson` for chat templates (Jinja's own escapes <, >, & and ' for HTML, which
    would change the tool definitions a model was trained to read)."""
    return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


class StopMatcher:
    """Streams text while holding back any tail that could still become a stop string."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.buf = ""
        self.stopped = False

    def feed(self, piece: str) -> str:
        if self.stopped:
            return ""
        self.buf += piece
        for s in self.stops:
            if (i := self.buf.find(s)) >= 0:
                out, self.buf, self.stopped = self.buf[:i], "", True
                return out
        hold = max((k for s in self.stops for k in range(1, len(s)) if self.buf.endswith(s[:k])), default=0)
        out, self.buf = self.buf[: len(self.buf) - hold], self.buf[len(self.buf) - hold:]
        return out

    def flush(self) -> str:
        out, self.buf = ("" if self.stopped else self.buf), ""
        return out


LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for m in messages -%}"
    "<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif -%}"
)
