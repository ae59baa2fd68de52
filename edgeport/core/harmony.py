"""gpt-oss's harmony format, all of it in one place: the prompt we render, the stream we parse,
and the chat templates (Jinja for the bundled checkpoint, Go for Ollama) that say the same thing.

We always render harmony ourselves (`render_harmony_own`): pure string work, no file and no
network. `openai-harmony` is the canonical renderer, but it loads its o200k vocabulary on first
use and downloads it when it is not there (behind a firewall that stalls, and it ran inside the
server's event loop); it is used only as a test oracle (`render_harmony_official`;
tests/test_harmony_offline.py pins the two together, string for string and token for token).

After `<|start|>assistant` a harmony model writes messages such as
`<|channel|>analysis<|message|>…<|end|><|start|>assistant<|channel|>final<|message|>…<|return|>`.
`HarmonyStream` sends the analysis (and commentary) channel to reasoning, the final channel to
content, and no marker reaches either. Output that is not well-formed harmony is never an
error: text outside any message goes to content and `malformed` says so (llama-server's own
chat endpoint answers such output with HTTP 500; this parser is why we drive its completion
endpoint instead).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

# what users say (fast/balanced/deep) and what harmony says (low/medium/high)
REASONING_EFFORTS = {
    "low": "low", "medium": "medium", "high": "high",
    "fast": "low", "balanced": "medium", "deep": "high",
}

IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."
CUTOFF = "2024-06"
CHANNELS = "# Valid channels: analysis, commentary, final. Channel must be included for every message."
STOP = ("<|return|>", "<|call|>")


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


def _turns(messages: Sequence) -> list:
    """Messages as objects with .role and .content (dicts or edgeport.core.chat.Message)."""
    return [m if hasattr(m, "role") else SimpleNamespace(role=m["role"], content=m["content"]) for m in messages]


def render_harmony_own(messages: Sequence, effort: str, date: str | None = None) -> str:
    """The harmony prompt text, as openai-harmony renders it for completion."""
    system = f"{IDENTITY}\nKnowledge cutoff: {CUTOFF}\n"
    if date:
        system += f"Current date: {date}\n"
    system += f"\nReasoning: {effort}\n\n{CHANNELS}"
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


def render_harmony_official_ids(messages: Sequence, effort: str, date: str | None = None,
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


def render_harmony_official(messages: Sequence, effort: str, date: str | None = None,
                            *, encoding) -> str:
    """openai-harmony's text for the same conversation (test oracle; see render_harmony_official_ids)."""
    return encoding.decode(render_harmony_official_ids(messages, effort, date, encoding=encoding))


def render_harmony(messages: Sequence, effort: str | None = None,
                   date: str | None = None) -> str:
    """The harmony prompt: always our own renderer, so it is the same text with or without
    openai-harmony's vocabulary and never touches a file or the network."""
    return render_harmony_own(_turns(messages), normalize_effort(effort), date)


def parse_harmony_final(text: str) -> str:
    """The user-facing part of a harmony completion: the final channel if present."""
    marker = "<|channel|>final<|message|>"
    if marker in text:
        text = text.rsplit(marker, 1)[1]
    for tok in ("<|end|>", *STOP):
        text = text.split(tok, 1)[0]
    return text


# Our own harmony template for the tiny gpt-oss: renders exactly render_harmony_own().
CHAT_TEMPLATE = (
    "{%- set effort = reasoning_effort | default('medium') -%}"
    "<|start|>system<|message|>" + IDENTITY + "\nKnowledge cutoff: " + CUTOFF
    + "{{ '\\n' }}"
    "{%- if conversation_date is defined and conversation_date -%}"
    "Current date: {{ conversation_date }}{{ '\\n' }}{%- endif -%}"
    "{{ '\\n' }}Reasoning: {{ effort }}\n\n" + CHANNELS + "<|end|>"
    "{%- for m in messages -%}"
    "{%- if m.role in ['system', 'developer'] -%}"
    "<|start|>developer<|message|># Instructions\n\n{{ m.content }}<|end|>"
    "{%- elif m.role == 'user' -%}<|start|>user<|message|>{{ m.content }}<|end|>"
    "{%- elif m.role == 'assistant' -%}<|start|>assistant<|channel|>final<|message|>{{ m.content }}<|end|>"
    "{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|start|>assistant{%- endif -%}"
)

# Ollama's Go template for harmony, from the same constants as render_harmony_own (tests/ollama_template
# renders it with Go's text/template and compares): the shape of Ollama's own gpt-oss template
# (x/create/client/create.go, `gptossDefaultTemplate`), without the tool sections.
OLLAMA_TEMPLATE = (
    f"<|start|>system<|message|>{IDENTITY}\nKnowledge cutoff: {CUTOFF}\n"
    "Current date: {{ currentDate }}\n\n"
    'Reasoning: {{ if and .IsThinkSet .Think (ne .ThinkLevel "") }}{{ .ThinkLevel }}{{ else }}medium{{ end }}\n\n'
    f"{CHANNELS}<|end|>\n"
    "{{- if .System }}<|start|>developer<|message|># Instructions\n\n{{ .System }}<|end|>\n"
    "{{- end }}\n"
    "{{- range $i, $msg := .Messages }}\n"
    '{{- if eq $msg.Role "user" }}<|start|>user<|message|>{{ $msg.Content }}<|end|>\n'
    '{{- else if eq $msg.Role "assistant" }}\n'
    "{{- if $msg.Thinking }}<|start|>assistant<|channel|>analysis<|message|>{{ $msg.Thinking }}<|end|>{{ end }}\n"
    "{{- if $msg.Content }}<|start|>assistant<|channel|>final<|message|>{{ $msg.Content }}<|end|>{{ end }}\n"
    "{{- end }}\n"
    "{{- end }}<|start|>assistant"
)


# --- parsing a completion as it streams --------------------------------------------------------
START, CHANNEL, MESSAGE, END = "<|start|>", "<|channel|>", "<|message|>", "<|end|>"
CONSTRAIN, RETURN, CALL = "<|constrain|>", "<|return|>", "<|call|>"
MARKERS = (START, CHANNEL, MESSAGE, END, CONSTRAIN, RETURN, CALL)
REASONING_CHANNELS = ("analysis", "commentary")


@dataclass
class Delta:
    reasoning: str = ""
    content: str = ""

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content)


@dataclass
class HarmonyStream:
    """Feed raw completion text (special tokens rendered); get reasoning/content deltas."""

    buf: str = ""
    state: str = "header"  # header: reading up to <|message|>; body: inside a message; done
    channel: str | None = None
    header: str = ""
    malformed: bool = False
    _seen: list[str] = field(default_factory=list)

    def feed(self, text: str) -> Delta:
        self.buf += text
        out = Delta()
        while self.buf and self.state != "done":
            if self.state == "header":
                if not self._header_step(out):
                    break
            elif not self._body_step(out):
                break
        return out

    def finish(self) -> Delta:
        """End of stream: flush what is held back (an unfinished marker is just text)."""
        out = Delta()
        if self.state == "body":
            self._emit(out, self.buf)
        elif self.state == "header":
            rest = self.header + self.buf
            for m in MARKERS:
                rest = rest.replace(m, "")
            if rest.strip():
                self.malformed = True
                out.content += rest
        self.buf, self.header, self.state = "", "", "done"
        return out

    # --- states -------------------------------------------------------------------------------
    def _header_step(self, out: Delta) -> bool:
        i = self.buf.find(MESSAGE)
        if i < 0:
            # a header is short: a long run of text with no <|message|> is not harmony
            if len(self.buf) > 256 or (self.buf and not self._could_be_header(self.buf)):
                self.malformed, self.state, self.channel = True, "body", None
                self.buf = self.header + self.buf
                self.header = ""
            return self.state == "body"
        head, self.buf = self.header + self.buf[:i], self.buf[i + len(MESSAGE):]
        self.header = ""
        self.channel = _channel(head)
        if self.channel is None and head.replace(START, "").strip() not in ("", "assistant"):
            self.malformed = True
        self.state = "body"
        return True

    def _body_step(self, out: Delta) -> bool:
        cut = min(((self.buf.find(m), m) for m in (END, RETURN, CALL, START) if m in self.buf),
                  default=None)
        if cut is None:
            hold = _partial_marker_tail(self.buf)
            self._emit(out, self.buf[: len(self.buf) - hold])
            self.buf = self.buf[len(self.buf) - hold:]
            return False
        i, marker = cut
        self._emit(out, self.buf[:i])
        self.buf = self.buf[i + len(marker):]
        if marker in (RETURN, CALL):
            self.state = "done"
        else:
            self.state, self.channel = "header", None
            if marker == START:
                self.header = START
        return True

    def _emit(self, out: Delta, text: str) -> None:
        if not text:
            return
        for m in MARKERS:  # a stray marker inside a message is dropped, never shown
            if m in text:
                self.malformed = True
                text = text.replace(m, "")
        if self.channel in REASONING_CHANNELS:
            out.reasoning += text
        else:
            out.content += text

    def _could_be_header(self, text: str) -> bool:
        t = (self.header + text).lstrip()
        return t.startswith(("<", "assistant")) or any(t.startswith(m[:len(t)]) for m in MARKERS)


def _channel(head: str) -> str | None:
    if CHANNEL not in head:
        return None
    name = head.split(CHANNEL, 1)[1]
    for sep in (CONSTRAIN, " ", "<|"):
        name = name.split(sep, 1)[0]
    return name.strip() or None


def _partial_marker_tail(text: str) -> int:
    """How many trailing characters could be the start of a marker (held back)."""
    return max((k for m in MARKERS for k in range(1, len(m)) if text.endswith(m[:k])), default=0)


def parse(text: str) -> tuple[str, str, bool]:
    """A whole completion: (reasoning, content, malformed)."""
    s = HarmonyStream()
    a, b = s.feed(text), s.finish()
    return a.reasoning + b.reasoning, a.content + b.content, s.malformed
