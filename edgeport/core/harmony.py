"""gpt-oss's harmony format, all of it in one place: the prompt we render, the stream we parse,
and the chat templates (Jinja for the bundled checkpoint, Go for Ollama) that say the same thing.

We always render harmony ourselves (`render_harmony_own`): pure string work, no file and no
network. `openai-harmony` is the canonical renderer, but it loads its o200k vocabulary on first
use and downloads it when it is not there (behind a firewall that stalls, and it ran inside the
server's event loop); it is used only as a test oracle (`render_harmony_official`;
tests/test_harmony_offline.py pins the two together, string for string and token for token).

Function tools are declared in the developer message as openai-harmony writes them (`render_tools`:
`namespace functions { type NAME = (_: {…}) => any; }`, TypeScript-ish from each JSON schema); an
assistant's call is rendered `<|start|>assistant to=functions.NAME<|channel|>commentary <|constrain|>json
<|message|>ARGS<|call|>` and its result `<|start|>functions.NAME to=assistant<|channel|>commentary
<|message|>RESULT<|end|>` (tests/test_tools.py pins all of it to openai-harmony's rendering).

After `<|start|>assistant` a harmony model writes messages such as
`<|channel|>analysis<|message|>…<|end|><|start|>assistant<|channel|>final<|message|>…<|return|>`.
`HarmonyStream` sends the analysis channel to reasoning, the final channel and commentary preambles
to content, a commentary message addressed `to=functions.NAME` to a function call (`CallDelta`),
and no marker reaches any of them. Output that is not well-formed harmony is never an
error: text outside any message goes to content and `malformed` says so (llama-server's own
chat endpoint answers such output with HTTP 500; this parser is why we drive its completion
endpoint instead).
"""

from __future__ import annotations

import json
import re
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
    """Messages as objects with .role and .content (dicts or edgeport.core.chat.Message), plus, for
    tool use, .tool_calls (an assistant's [{"name", "arguments"}]) and .name (a tool result's tool)."""
    return [SimpleNamespace(role=m.role, content=m.content, tool_calls=getattr(m, "tool_calls", None) or [],
                            name=getattr(m, "name", None)) if hasattr(m, "role")
            else SimpleNamespace(role=m["role"], content=m["content"], tool_calls=m.get("tool_calls") or [],
                                 name=m.get("name")) for m in messages]


TOOLS_CHANNEL_NOTE = "Calls to these tools must go to the commentary channel: 'functions'."


def render_harmony_own(messages: Sequence, effort: str, date: str | None = None,
                       tools: Sequence[dict] | None = None) -> str:
    """The harmony prompt text, as openai-harmony renders it for completion. `tools`: function tools
    as [{"name", "description", "parameters"}], declared in the developer message."""
    messages = _turns(messages)
    system = f"{IDENTITY}\nKnowledge cutoff: {CUTOFF}\n"
    if date:
        system += f"Current date: {date}\n"
    system += f"\nReasoning: {effort}\n\n{CHANNELS}"
    if tools:
        system += f"\n{TOOLS_CHANNEL_NOTE}"
    parts = [f"<|start|>system<|message|>{system}<|end|>"]
    declared = render_tools(tools) if tools else None
    if declared and not any(m.role in ("system", "developer") for m in messages):
        parts.append(f"<|start|>developer<|message|>{declared}<|end|>")
    for m in messages:
        if m.role in ("system", "developer"):
            body = f"# Instructions\n\n{m.content}" + (f"\n\n{declared}" if declared else "")
            parts.append(f"<|start|>developer<|message|>{body}<|end|>")
            declared = None  # the first developer message carries them
        elif m.role == "user":
            parts.append(f"<|start|>user<|message|>{m.content}<|end|>")
        elif m.role == "assistant":
            if m.content or not m.tool_calls:
                channel = "commentary" if m.tool_calls else "final"  # beside a call: its preamble
                parts.append(f"<|start|>assistant<|channel|>{channel}<|message|>{m.content}<|end|>")
            for call in m.tool_calls:
                parts.append(f"<|start|>assistant to=functions.{call['name']}<|channel|>commentary "
                             f"{CONSTRAIN}json<|message|>{call['arguments']}<|call|>")
        elif m.role == "tool":
            parts.append(f"<|start|>functions.{m.name} to=assistant<|channel|>commentary<|message|>{m.content}<|end|>")
        else:
            raise ValueError(f"harmony has no role {m.role!r}")
    parts.append("<|start|>assistant")
    return "".join(parts)


def render_tools(tools: Sequence[dict]) -> str:
    """The developer message's `# Tools` section: each function a TypeScript-ish signature from its
    JSON schema, as openai-harmony writes it (the model was trained on that form)."""
    lines = ["## functions\n", "namespace functions {\n"]
    for t in tools:
        lines += [f"// {line}" for line in (t.get("description") or "").splitlines()]
        params = t.get("parameters")
        sig = f"(_: {ts_type(params, '')})" if params is not None else "()"
        lines.append(f"type {t['name']} = {sig} => any;\n")
    lines.append("} // namespace functions")
    return "# Tools\n\n" + "\n".join(lines)


def _default_note(schema: dict) -> str:
    d = schema["default"]
    if isinstance(d, str):
        return f"default: {d}" if schema.get("enum") else f'default: "{d}"'
    return f"default: {json.dumps(d, separators=(',', ':'), ensure_ascii=False)}"


def ts_type(schema: dict, indent: str) -> str:
    """openai-harmony's JSON-schema-to-TypeScript rendering (its encoding.rs), for the schemas tools use."""
    if isinstance(schema.get("oneOf"), list):
        out = []
        for v in schema["oneOf"]:
            notes = [v["description"]] if isinstance(v.get("description"), str) else []
            notes += [_default_note(v)] if "default" in v else []
            out.append(f"\n{indent} | {_nullable(v, ts_type(v, indent + '   '))}"
                       + (f" // {' '.join(notes)}" if notes else ""))
        return "".join(out)
    t = schema.get("type")
    if isinstance(t, list):
        names = ["number" if x == "integer" else x for x in t if isinstance(x, str)]
        if names:
            return " | ".join(names)
        t = None
    if t == "object":
        return _ts_object(schema, indent)
    if t == "string":
        enums = [f'"{v}"' for v in schema.get("enum") or [] if isinstance(v, str)]
        return " | ".join(enums) if enums else "string"
    if t in ("number", "integer"):
        return "number"
    if t == "boolean":
        return "boolean"
    if t == "array":
        return f"{ts_type(schema['items'], indent)}[]" if "items" in schema else "Array<any>"
    return "any"


def _nullable(schema: dict, text: str) -> str:
    return f"{text} | null" if schema.get("nullable") is True and "null" not in text else text


def _ts_object(schema: dict, indent: str) -> str:
    out = f"{indent}// {schema['description']}\n" if isinstance(schema.get("description"), str) else ""
    out += "{\n"
    required = set(schema.get("required") or [])
    for key, val in (schema.get("properties") or {}).items():
        if isinstance(val.get("title"), str):
            out += f"{indent}// {val['title']}\n{indent}//\n"
        one_of = val.get("oneOf")
        if one_of is None and isinstance(val.get("description"), str):
            out += f"{indent}// {val['description']}\n"
        examples = [e for e in val.get("examples") or [] if isinstance(e, str)]
        if val.get("examples"):
            out += f"{indent}// Examples:\n" + "".join(f'{indent}// - "{e}"\n' for e in examples)
        opt = "" if key in required else "?"
        if isinstance(one_of, list):
            out += _ts_one_of_property(key, opt, val, one_of, indent)
            continue
        out += f"{indent}{key}{opt}: {_nullable(val, ts_type(val, indent + '    '))},"
        if "default" in val:
            out += f" // {_default_note(val)}"
        out += "\n"
    return out + f"{indent}}}"


def _ts_one_of_property(key: str, opt: str, val: dict, variants: list, indent: str) -> str:
    desc = val.get("description") if isinstance(val.get("description"), str) else None
    first = variants[0].get("description") if variants else None
    above = desc is not None and desc != first
    out = f"{indent}// {desc}\n" if above else ""
    if "default" in val:
        out += f"{indent}// {_default_note(val)}\n"
    out += f"{indent}{key}{opt}:\n"
    for i, v in enumerate(variants):
        notes = []
        vd = v.get("description")
        if not (i == 0 and above) and isinstance(vd, str) and vd != desc:
            notes.append(vd)
        if "default" in v:
            notes.append(_default_note(v))
        out += f"{indent} | {_nullable(v, ts_type(v, indent + '   '))}" + (f" // {' '.join(notes)}" if notes else "")
        out += "\n"
    return out + f"{indent},\n"


def render_harmony_official_ids(messages: Sequence, effort: str, date: str | None = None,
                                *, encoding, tools: Sequence[dict] | None = None) -> list[int]:
    """openai-harmony's token ids for the same conversation: a test oracle, never on a serving path.
    `encoding`: a loaded `openai_harmony` encoding (loading one may download its vocabulary)."""
    import openai_harmony as oh

    sys_content = oh.SystemContent.new().with_reasoning_effort(
        {"low": oh.ReasoningEffort.LOW, "medium": oh.ReasoningEffort.MEDIUM,
         "high": oh.ReasoningEffort.HIGH}[effort])
    sys_content = sys_content.with_conversation_start_date(date) if date else sys_content
    msgs = [oh.Message.from_role_and_content(oh.Role.SYSTEM, sys_content)]
    declared = [oh.ToolDescription.new(t["name"], t.get("description") or "", parameters=t.get("parameters"))
                for t in tools or []]
    turns = _turns(messages)
    if declared and not any(m.role in ("system", "developer") for m in turns):
        msgs.append(oh.Message.from_role_and_content(
            oh.Role.DEVELOPER, oh.DeveloperContent.new().with_function_tools(declared)))
    for m in turns:
        if m.role in ("system", "developer"):
            dev = oh.DeveloperContent.new().with_instructions(m.content)
            msgs.append(oh.Message.from_role_and_content(
                oh.Role.DEVELOPER, dev.with_function_tools(declared) if declared else dev))
            declared = []
        elif m.role == "user":
            msgs.append(oh.Message.from_role_and_content(oh.Role.USER, m.content))
        elif m.role == "assistant":
            if m.content or not m.tool_calls:
                msgs.append(oh.Message.from_role_and_content(oh.Role.ASSISTANT, m.content).with_channel(
                    "commentary" if m.tool_calls else "final"))
            msgs += [oh.Message.from_role_and_content(oh.Role.ASSISTANT, c["arguments"]).with_channel("commentary")
                     .with_recipient(f"functions.{c['name']}").with_content_type("<|constrain|>json")
                     for c in m.tool_calls]
        elif m.role == "tool":
            msgs.append(oh.Message.from_author_and_content(oh.Author.new(oh.Role.TOOL, f"functions.{m.name}"),
                                                           m.content).with_channel("commentary")
                        .with_recipient("assistant"))
        else:
            raise ValueError(f"harmony has no role {m.role!r}")
    return list(encoding.render_conversation_for_completion(oh.Conversation.from_messages(msgs), oh.Role.ASSISTANT))


def render_harmony_official(messages: Sequence, effort: str, date: str | None = None,
                            *, encoding, tools: Sequence[dict] | None = None) -> str:
    """openai-harmony's text for the same conversation (test oracle; see render_harmony_official_ids)."""
    return encoding.decode(render_harmony_official_ids(messages, effort, date, encoding=encoding, tools=tools))


def render_harmony(messages: Sequence, effort: str | None = None,
                   date: str | None = None, tools: Sequence[dict] | None = None) -> str:
    """The harmony prompt: always our own renderer, so it is the same text with or without
    openai-harmony's vocabulary and never touches a file or the network."""
    return render_harmony_own(messages, normalize_effort(effort), date, tools)


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
# where the user-facing answer starts
FINAL_HEADER = f"{CHANNEL}final{MESSAGE}"
# what ends the free part of a completion whose answer is constrained (edgeport/serving/constrained.py)
ANSWER_ENDS = (FINAL_HEADER, END, RETURN, CALL)
MARKERS = (START, CHANNEL, MESSAGE, END, CONSTRAIN, RETURN, CALL)
REASONING_CHANNELS = ("analysis", "commentary")  # commentary to no one (a preamble) is content
FUNCTIONS = "functions."
_RECIPIENT = re.compile(r"\bto=([^\s<]+)")


@dataclass
class CallDelta:
    """Part of a function call: `name` on its first part (a new call), then argument text."""

    index: int
    name: str | None = None
    arguments: str = ""


@dataclass
class Delta:
    reasoning: str = ""
    content: str = ""
    calls: list[CallDelta] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.reasoning or self.content or self.calls)


@dataclass
class HarmonyStream:
    """Feed raw completion text (special tokens rendered); get reasoning/content deltas."""

    buf: str = ""
    state: str = "header"  # header: reading up to <|message|>; body: inside a message; done
    channel: str | None = None
    recipient: str | None = None  # "functions.NAME" on a call; the message body is its arguments
    header: str = ""
    malformed: bool = False
    calls: int = 0  # function calls seen so far
    # the functions the request offered (None: any): a message addressed to another is content, as OpenAI
    # never returns a call to a function it was not given
    functions: frozenset[str] | None = None
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
                # the held `<|start|>` is dropped, not handed back: the body would cut at it and
                # return here for ever (and _emit drops a stray marker anyway)
                self.malformed, self.state, self.channel = True, "body", None
                self.header = ""
            return self.state == "body"
        head, self.buf = self.header + self.buf[:i], self.buf[i + len(MESSAGE):]
        self.header = ""
        self.channel = _channel(head)
        m = _RECIPIENT.search(head)
        self.recipient = m.group(1) if m else None
        if self.channel is None and head.replace(START, "").strip() not in ("", "assistant"):
            self.malformed = True
        if self._calling:
            out.calls.append(CallDelta(self.calls, self.recipient.removeprefix(FUNCTIONS)))
            self.calls += 1
        self.state = "body"
        return True

    @property
    def _calling(self) -> bool:
        name = (self.recipient or "").removeprefix(FUNCTIONS)
        return bool(self.recipient and self.recipient.startswith(FUNCTIONS) and name
                    and (self.functions is None or name in self.functions))

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
            self.state, self.channel, self.recipient = "header", None, None
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
        if self._calling:
            out.calls.append(CallDelta(self.calls - 1, None, text))
        elif self.channel == "analysis" or (self.channel in REASONING_CHANNELS and self.recipient
                                            and not self.recipient.startswith(FUNCTIONS)):
            out.reasoning += text  # a built-in tool's call (browser, python) is reasoning too
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


def parse_calls(text: str) -> list[tuple[str, str]]:
    """A whole completion's function calls as (name, arguments text)."""
    s = HarmonyStream()
    calls: dict[int, list[str]] = {}
    names: dict[int, str] = {}
    for c in s.feed(text).calls + s.finish().calls:
        if c.name is not None:
            names[c.index] = c.name
        calls.setdefault(c.index, []).append(c.arguments)
    return [(names[i], "".join(calls[i])) for i in sorted(calls)]
