"""Function tools for dense models whose checkpoint chat template declares them (gpt-oss's are harmony's:
harmony.py). The template renders the tools and the earlier calls and results itself, as Hugging Face's
`apply_chat_template(..., tools=...)` passes them; what the model writes back depends on the family, so
each known call format is a row of FORMATS: how to recognise the template, how a call reads, and the
JSON schema that forces one (`tool_choice` required or named, enforced as any `response_format` is).

Llama 3.1-3.3's JSON tool calling (Meta's template, "Environment: ipython"): the assistant's whole
message is `{"name": "add", "parameters": {"a": 1, "b": 2}}` (sometimes after `<|python_tag|>`), a
result comes back as an `ipython` turn. A template that declares tools in any other way is refused (a
400 naming it), never rendered with tools the front cannot read back.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from .harmony import CallDelta, Delta


@dataclass(frozen=True)
class CallFormat:
    name: str
    markers: tuple[str, ...]  # any of these in the template source identifies the format
    prefixes: tuple[str, ...]  # what a call message may start with, before its JSON object
    args_keys: tuple[str, ...]  # where the arguments are, in the order tried


FORMATS = (
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
    """The front's conversation (calls as {"name", "arguments": JSON text}) as chat templates take it:
    calls as {"type": "function", "function": {"name", "arguments": object}}, a result as role `tool`."""
    out = []
    for m in messages:
        d = {"role": m["role"], "content": m["content"]}
        if m.get("tool_calls"):
            d["tool_calls"] = [{"type": "function",
                                "function": {"name": c["name"], "arguments": _loads(c["arguments"])}}
                               for c in m["tool_calls"]]
        if m["role"] == "tool":
            d["name"] = m.get("name")
        out.append(d)
    return out


def _loads(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text  # rendered as the client sent it


def template_tools(tools: list[dict]) -> list[dict]:
    """OpenAI tool specs ({"name", "description", "parameters"}) as templates take them."""
    return [{"type": "function", "function": {k: v for k, v in t.items() if v is not None}} for t in tools]


def forced_schema(fmt: CallFormat, tools: list[dict]) -> dict:
    """The JSON schema of a message that calls one of `tools` (their parameters enforced)."""
    key = fmt.args_keys[0]
    one = [{"type": "object", "properties": {"name": {"const": t["name"]},
                                             key: t.get("parameters") or {"type": "object", "properties": {}}},
            "required": ["name", key], "additionalProperties": False} for t in tools]
    return one[0] if len(one) == 1 else {"anyOf": one}


def parse_call(fmt: CallFormat, text: str, names: set[str]) -> tuple[str, str] | None:
    """(name, arguments as JSON text) when the whole message is a call to one of `names`; else None."""
    body = text.strip()
    for p in fmt.prefixes:
        body = body.removeprefix(p).lstrip()
    try:
        obj = json.loads(body)
    except json.JSONDecodeError:
        return None
    if not isinstance(obj, dict) or obj.get("name") not in names:
        return None
    args = next((obj[k] for k in fmt.args_keys if k in obj), {})
    if not isinstance(args, dict) or set(obj) - {"name", *fmt.args_keys}:
        return None
    return obj["name"], json.dumps(args)


class TemplateCallStream:
    """Feed a dense model's answer text; get content, or one function call. A message that may be a call
    (it starts with `{` or a format's prefix) is held back until it ends, then given as a call when it is
    one to an offered tool, else as the content it is; any other message streams as it comes."""

    def __init__(self, fmt: CallFormat, names: set[str]):
        self.fmt, self.names = fmt, names
        self.held = ""  # the message so far, while it may still be a call
        self.decided = False  # it is not a call: text streams on as content

    def feed(self, text: str) -> Delta:
        if self.decided:
            return Delta(content=text)
        self.held += text
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
        call = parse_call(self.fmt, text, self.names)
        if call is None:
            return Delta(content=text)
        return Delta(calls=[CallDelta(0, call[0], call[1])])
