"""Function tools for dense models whose checkpoint chat template declares them (gpt-oss's are harmony's:
harmony.py). The template renders the tools and the earlier calls and results itself, as Hugging Face's
`apply_chat_template(..., tools=...)` passes them; what the model writes back depends on the family, so
each known call format is a row of FORMATS: how to recognise the template, how a call reads, and the
JSON schema that forces one (`tool_choice` required or named, enforced as any `response_format` is).

- `hermes` (Hermes 2 Pro / 3, Qwen 2.5 / 3 and the many templates that copied them): each call is a
  block `<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>`, any number of
  them in one message, after text or not; results come back inside `<tool_response>` blocks.
- `llama3_json` (Llama 3.1-3.3, Meta's template, "Environment: ipython"): the assistant's whole
  message is `{"name": "add", "parameters": {"a": 1, "b": 2}}` (sometimes after `<|python_tag|>`), a
  result comes back as an `ipython` turn; one call per message.
- `mistral` (Mistral 7B Instruct v0.3, Mixtral 8x22B and the templates with `[AVAILABLE_TOOLS]`): the
  whole message is `[TOOL_CALLS] [{"name": "add", "arguments": {"a": 1, "b": 2}}, ...]`, any number of
  calls in the array, each perhaps with an "id"; results come back in `[TOOL_RESULTS]` with the call's id,
  which these templates insist is 9 letters or digits (`template_messages` makes them so).
- `mistral_args` (Mistral Small 3.1+/3.2, Magistral, Devstral: templates that write `[ARGS]`): each call
  is `[TOOL_CALLS]add[ARGS]{"a": 1, "b": 2}`, the name outside the JSON, any number of them in one
  message, after text or not; results come back in `[TOOL_RESULTS]`.

A template that declares tools in any other way is refused (a 400 naming it), never rendered with tools
the front cannot read back.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from .harmony import CallDelta, Delta


@dataclass(frozen=True)
class CallFormat:
    name: str
    markers: tuple[str, ...]  # any of these in the template source identifies the format
    prefixes: tuple[str, ...]  # what a call message may start with, before its JSON object
    args_keys: tuple[str, ...]  # where the arguments are, in the order tried (the first is written)
    block: tuple[str, str] | None = None  # calls as blocks between these markers, any number; else the
    # whole message is one call, or with `array` a JSON array of calls
    array: bool = False
    extra_keys: tuple[str, ...] = ()  # what else a call object may hold (Mistral's "id")
    named: str | None = None  # each call is prefixes[0] + its name + this + its JSON arguments

    @property
    def forced_prefix(self) -> str:
        """What the prompt ends with when a call is forced, so the schema-bound JSON is the call's."""
        return f"{self.block[0]}\n" if self.block else self.prefixes[0] if self.array or self.named else ""

    @property
    def opener(self) -> str | None:
        """What opens a call after text (block and named formats); the text before it streams."""
        return self.block[0] if self.block else self.prefixes[0] if self.named else None


# In the order tried: the first whose marker the template holds is its format.
FORMATS = (
    CallFormat("mistral_args", ("[ARGS]",), ("[TOOL_CALLS]",), ("arguments",), named="[ARGS]"),
    CallFormat("mistral", ("[TOOL_CALLS]",), ("[TOOL_CALLS]",), ("arguments",), array=True, extra_keys=("id",)),
    CallFormat("hermes", ("<tool_call>",), (), ("arguments",), ("<tool_call>", "</tool_call>")),
    CallFormat("llama3_json", ("<|python_tag|>", "ipython", '"parameters"'), ("<|python_tag|>",),
               ("parameters", "arguments")),
)


FORMAT_NAMES = ", ".join(f.name for f in FORMATS)


def declares_tools(template: str | None) -> bool:
    """Whether the Jinja template reads a `tools` variable (the Hugging Face convention)."""
    if not template:
        return False
    from jinja2 import meta
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return "tools" in meta.find_undeclared_variables(ImmutableSandboxedEnvironment().parse(template))


def call_format(template: str | None) -> CallFormat | None:
    """The known call format of a template that declares tools; None if it declares none or an unknown one."""
    if not declares_tools(template):
        return None
    return next((f for f in FORMATS if any(m in template for m in f.markers)), None)


def why_no_tools(template: str | None) -> str:
    """What the server's 400 and `edgeport chat` say of a template `call_format` found no format in."""
    what = "declares them in a format edgeport does not read" if declares_tools(template) else "does not declare them"
    return (f"this model's chat template {what}; tools are served for gpt-oss (harmony) and templates with "
            f"{FORMAT_NAMES} calls")


def template_messages(messages: list[dict]) -> list[dict]:
    """The front's conversation (calls as {"name", "arguments": JSON text}, perhaps an "id") as chat
    templates take it: calls as {"id", "type": "function", "function": {"name", "arguments": object}}, a
    result as role `tool` with its call's `tool_call_id`. Ids are made 9 letters and digits (Mistral's
    templates refuse others), the same for a call and its result; where the conversation has none
    (`edgeport chat`), the calls are numbered and each result answers the next unanswered call."""
    out: list[dict] = []
    pending: list[str] = []
    for n, m in enumerate(messages):
        d = {"role": m["role"], "content": m["content"]}
        if m.get("tool_calls"):
            d["tool_calls"] = [{"id": short_id(c.get("id") or f"{n}.{k}"), "type": "function",
                                "function": {"name": c["name"], "arguments": _loads(c["arguments"])}}
                               for k, c in enumerate(m["tool_calls"])]
            pending = [c["id"] for c in d["tool_calls"]]
        if m["role"] == "tool":
            d["name"] = m.get("name")
            given = m.get("tool_call_id")
            d["tool_call_id"] = short_id(given) if given else pending[0] if pending else short_id(f"{n}")
            if d["tool_call_id"] in pending:
                pending.remove(d["tool_call_id"])
        out.append(d)
    return out


def short_id(call_id: str) -> str:
    """A call id as 9 letters and digits, the same for the same id."""
    digits = int.from_bytes(hashlib.sha256(call_id.encode()).digest()[:8], "big")
    alphabet = "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
    return "".join(alphabet[(digits // 62**i) % 62] for i in range(9))


def _loads(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # rendered as the client sent it


def template_tools(tools: list[dict]) -> list[dict]:
    """OpenAI tool specs ({"name", "description", "parameters"}) as templates take them."""
    return [{"type": "function", "function": {k: v for k, v in t.items() if v is not None}} for t in tools]


def forced_schema(fmt: CallFormat, tools: list[dict]) -> dict:
    """The JSON schema of a message that calls one of `tools` (their parameters enforced); for an array
    format, an array of exactly one such call (a forced call is one call, as in harmony)."""
    key = fmt.args_keys[0]
    one = [{"type": "object", "properties": {"name": {"const": t["name"]},
                                             key: t.get("parameters") or {"type": "object", "properties": {}}},
            "required": ["name", key], "additionalProperties": False} for t in tools]
    call = one[0] if len(one) == 1 else {"anyOf": one}
    return {"type": "array", "items": call, "minItems": 1, "maxItems": 1} if fmt.array else call


def parse_call(fmt: CallFormat, text: str, names: set[str]) -> tuple[str, str] | None:
    """(name, arguments as JSON text) when `text` (with any of the format's prefixes) is exactly a call
    to one of `names`; else None."""
    obj = _body(fmt, text)
    return _call(fmt, obj, names) if isinstance(obj, dict) else None


def _body(fmt: CallFormat, text: str):
    """The JSON value of a whole message after any of the format's prefixes; None if it is not JSON."""
    body = text.strip()
    for p in fmt.prefixes:
        body = body.removeprefix(p).lstrip()
    try:
        return json.loads(body)
    except json.JSONDecodeError:
        return None


def _call(fmt: CallFormat, obj, names: set[str]) -> tuple[str, str] | None:
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = next((obj[k] for k in fmt.args_keys if k in obj), {})
    if not isinstance(args, dict) or set(obj) - {"name", *fmt.args_keys, *fmt.extra_keys}:
        return None
    return obj["name"], json.dumps(args)


def _named_call(fmt: CallFormat, text: str, names: set[str]) -> tuple[str, str] | None:
    """`name[ARGS]{…}` (what follows a call's opener) as (name, arguments as JSON text), if it calls one of
    `names` with a JSON object."""
    name, sep, args = text.partition(fmt.named or "")
    try:
        obj = json.loads(args)
    except json.JSONDecodeError:
        return None
    return (name.strip(), json.dumps(obj)) if sep and name.strip() in names and isinstance(obj, dict) else None


def read_message(fmt: CallFormat, text: str, names: set[str]) -> tuple[str, list[tuple[str, str]]]:
    """A whole assistant message as (content, calls). Every call must parse and name an offered tool,
    or the message is all content: never half a message's calls. A block format's last block may
    lack its closing marker (the model stopped right after its JSON)."""
    if fmt.array:
        obj = _body(fmt, text)
        calls = [_call(fmt, c, names) for c in obj] if isinstance(obj, list) else []
        return ("", calls) if calls and None not in calls else (text, [])
    if fmt.named:
        i = text.find(fmt.prefixes[0])
        calls = [_named_call(fmt, c, names) for c in text[i:].split(fmt.prefixes[0])[1:]] if i >= 0 else []
        return (text[:i].strip(), calls) if calls and None not in calls else (text, [])
    if fmt.block is None:
        call = parse_call(fmt, text, names)
        return ("", [call]) if call else (text, [])
    start, end = map(re.escape, fmt.block)
    block = re.compile(f"{start}(.*?)(?:{end}|$)", re.DOTALL)
    calls = [parse_call(fmt, b, names) for b in block.findall(text)]
    if not calls or None in calls:
        return text, []
    return block.sub("", text).strip(), calls


class TemplateCallStream:
    """Feed a dense model's answer text; get content and function calls. What may be a call is held back
    until the message ends, then given as calls when `read_message` finds them, else as the content it
    is; the rest streams as it comes. Whole-message formats hold a message that starts with `{` or a
    prefix; block and named formats stream text until a call opens (and a tail that may be its opener's
    start).
    `forced`: the prompt ended with the format's forced_prefix, which the model's text continues.
    `parallel` False: one call at most (an array format's first; a block format's message is ended at
    its first block by a stop string instead)."""

    def __init__(self, fmt: CallFormat, names: set[str], forced: bool = False, parallel: bool = True):
        self.fmt, self.names, self.parallel = fmt, names, parallel
        self.held = fmt.forced_prefix if forced else ""  # what may still be (or hold) a call
        self.decided = False  # it is not a call: text streams on as content

    def feed(self, text: str) -> Delta:
        if self.decided:
            return Delta(content=text)
        self.held += text
        if opener := self.fmt.opener:
            i = self.held.find(opener)
            if i < 0:
                i = len(self.held) - _partial(self.held, opener)
            out, self.held = self.held[:i], self.held[i:]
            return Delta(content=out)
        lead = self.held.lstrip()
        if not lead:
            return Delta()
        if lead.startswith("{") or any(p.startswith(lead[: len(p)]) for p in self.fmt.prefixes):
            return Delta()  # may be a call: wait for the end
        self.decided, out, self.held = True, self.held, ""
        return Delta(content=out)

    def finish(self) -> Delta:
        text, self.held = self.held, ""
        if self.decided or not text:
            return Delta(content=text)
        content, calls = read_message(self.fmt, text, self.names)
        calls = calls if self.parallel else calls[:1]
        return Delta(content=content, calls=[CallDelta(i, n, a) for i, (n, a) in enumerate(calls)])


def _partial(text: str, marker: str) -> int:
    """The length of the longest end of `text` that begins `marker` (a marker perhaps cut by a piece)."""
    return next((k for k in range(min(len(marker) - 1, len(text)), 0, -1) if marker.startswith(text[-k:])), 0)
