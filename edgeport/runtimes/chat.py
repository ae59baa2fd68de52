"""Chat formatting and stop handling shared by every runtime.

gpt-oss speaks harmony. We always render it ourselves (`render_harmony_own`): pure string
work, no file and no network. `openai-harmony` is the canonical renderer, but it loads its
o200k vocabulary on first use and downloads it when it is not there (behind a firewall that
stalls, and it ran inside the server's event loop); it is used only as a test oracle
(`render_harmony_official`; tests/test_harmony_offline.py pins the two against each other,
string for string and token for token, wherever the vocabulary loads).
Other families use the jinja chat template that ships with the checkpoint.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

REASONING_EFFORTS = {
    "low": "low", "medium": "medium", "high": "high",
    "fast": "low", "balanced": "medium", "deep": "high",
}

HARMONY_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
HARMONY_CUTOFF = "2024-06"
HARMONY_CHANNELS = "# Valid channels: analysis, commentary, final. Channel must be included for every message."
HARMONY_STOP = ("<|return|>", "<|call|>")


def normalize_effort(effort: str | None) -> str:
    """Map user words (fast/balanced/deep) onto harmony's low/medium/high."""
    if effort is None:
        return "medium"
    try:
        return REASONING_EFFORTS[effort.strip().lower()]
    except KeyError:
        raise ValueError(
            f"unknown reasoning effort {effort!r}; use one of {', '.join(REASONING_EFFORTS)}"
        ) from None


@dataclass(frozen=True)
class Message:
    role: str
    content: str


def as_messages(messages: Sequence[dict | Message]) -> list[Message]:
    out = []
    for m in messages:
        out.append(m if isinstance(m, Message) else Message(m["role"], m["content"]))
    return out


def render_harmony_own(messages: Sequence[Message], effort: str, date: str | None = None) -> str:
    """The harmony prompt text, as openai-harmony renders it for completion."""
    system = f"{HARMONY_IDENTITY}\nKnowledge cutoff: {HARMONY_CUTOFF}\n"
    if date:
        system += f"Current date: {date}\n"
    system += f"\nReasoning: {effort}\n\n{HARMONY_CHANNELS}"
    parts = [f"<|start|>system<|message|>{system}<|end|>"]
    for m in messages:
        if m.role in ("system", "developer"):
            parts.append(f"<|start|>developer<|message|># Instructions\n\n{m.content}<|end|>")
        elif m.role == "user":
            parts.append(f"<|start|>user<|message|>{m.content}<|end|>")
        elif m.role == "assistant":
            parts.append(f"<|start|>assistant<|channel|>final<|message|>{m.content}<|end|>")
        else:
            raise ValueError(f"harmony has no role {m.role!r}")
    parts.append("<|start|>assistant")
    return "".join(parts)


def render_harmony_official_ids(messages: Sequence[Message], effort: str, date: str | None = None,
                                *, encoding) -> list[int]:
    """openai-harmony's token ids for the same conversation: a test oracle, never on a serving path.
    `encoding`: a loaded `openai_harmony` encoding (loading one may download its vocabulary)."""
    import openai_harmony as oh

    sys_content = oh.SystemContent.new().with_reasoning_effort(
        {"low": oh.ReasoningEffort.LOW, "medium": oh.ReasoningEffort.MEDIUM,
         "high": oh.ReasoningEffort.HIGH}[effort])
    sys_content = sys_content.with_conversation_start_date(date) if date else sys_content
    msgs = [oh.Message.from_role_and_content(oh.Role.SYSTEM, sys_content)]
    for m in messages:
        if m.role in ("system", "developer"):
            msgs.append(oh.Message.from_role_and_content(
                oh.Role.DEVELOPER, oh.DeveloperContent.new().with_instructions(m.content)))
        elif m.role == "user":
            msgs.append(oh.Message.from_role_and_content(oh.Role.USER, m.content))
        elif m.role == "assistant":
            msgs.append(oh.Message.from_role_and_content(oh.Role.ASSISTANT, m.content).with_channel("final"))
        else:
            raise ValueError(f"harmony has no role {m.role!r}")
    return list(encoding.render_conversation_for_completion(oh.Conversation.from_messages(msgs), oh.Role.ASSISTANT))


def render_harmony_official(messages: Sequence[Message], effort: str, date: str | None = None,
                            *, encoding) -> str:
    """openai-harmony's text for the same conversation (test oracle; see render_harmony_official_ids)."""
    return encoding.decode(render_harmony_official_ids(messages, effort, date, encoding=encoding))


def render_harmony(messages: Sequence[dict | Message], effort: str | None = None,
                   date: str | None = None) -> str:
    """The harmony prompt: always our own renderer, so it is the same text with or without
    openai-harmony's vocabulary and never touches a file or the network."""
    return render_harmony_own(as_messages(messages), normalize_effort(effort), date)


def render_template(template: str, messages: Sequence[dict | Message], *, bos_token: str = "",
                    eos_token: str = "", effort: str | None = None) -> str:
    """Render a checkpoint's jinja chat template in a sandbox (templates are untrusted input)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    msgs = [{"role": m.role, "content": m.content} for m in as_messages(messages)]
    return env.from_string(template).render(
        messages=msgs, add_generation_prompt=True, bos_token=bos_token, eos_token=eos_token,
        reasoning_effort=normalize_effort(effort))


def parse_harmony_final(text: str) -> str:
    """The user-facing part of a harmony completion: the final channel if present."""
    marker = "<|channel|>final<|message|>"
    if marker in text:
        text = text.rsplit(marker, 1)[1]
    for tok in ("<|end|>", *HARMONY_STOP):
        text = text.split(tok, 1)[0]
    return text


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


# Our own harmony template for the tiny gpt-oss: renders exactly render_harmony_own().
HARMONY_CHAT_TEMPLATE = (
    "{%- set effort = reasoning_effort | default('medium') -%}"
    "<|start|>system<|message|>" + HARMONY_IDENTITY + "\nKnowledge cutoff: " + HARMONY_CUTOFF
    + "{{ '\\n' }}"
    "{%- if conversation_date is defined and conversation_date -%}"
    "Current date: {{ conversation_date }}{{ '\\n' }}{%- endif -%}"
    "{{ '\\n' }}Reasoning: {{ effort }}\n\n" + HARMONY_CHANNELS + "<|end|>"
    "{%- for m in messages -%}"
    "{%- if m.role in ['system', 'developer'] -%}"
    "<|start|>developer<|message|># Instructions\n\n{{ m.content }}<|end|>"
    "{%- elif m.role == 'user' -%}<|start|>user<|message|>{{ m.content }}<|end|>"
    "{%- elif m.role == 'assistant' -%}<|start|>assistant<|channel|>final<|message|>{{ m.content }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}"
)

LLAMA3_CHAT_TEMPLATE = (
    "{{- bos_token -}}"
    "{%- for m in messages -%}"
    "<|start_header_id|>{{ m.role }}<|end_header_id|>\n\n{{ m.content | trim }}<|eot_id|>"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start_header_id|>assistant<|end_header_id|>\n\n{%- endif -%}"
)
