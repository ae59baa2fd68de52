"""`edgeport chat`: a multi-turn conversation with an artifact in the terminal.

The artifact's own runtime runs in-process (no server); gpt-oss output goes through the same
harmony parser as the server, so reasoning is shown apart from the answer (dimmed) and never
kept in the history, and a function call is shown as it streams (`call: NAME ARGUMENTS`).
`--tools FILE` declares OpenAI tool definitions as the server does (to gpt-oss, or to a dense model
whose chat template declares tools: edgeport/core/template_tools.py); after a call the chat asks for
its result and the model goes on. Commands: /effort low|medium|high (or
fast|balanced|deep), /reset, /exit.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from edgeport import runtimes
from edgeport.core.chat import render_template
from edgeport.core.errors import EdgeportError, TemplateRefused
from edgeport.core.harmony import HarmonyStream, normalize_effort, render_harmony
from edgeport.core.template_tools import (
    TemplateCallStream,
    call_format,
    template_messages,
    template_tools,
    why_no_tools,
)

from .protocol import Tool

HELP = "commands: /effort low|medium|high (fast|balanced|deep), /reset, /exit"


class ChatError(EdgeportError):
    """A bad chat option."""


def effort_or_error(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return normalize_effort(value)
    except ValueError as e:
        raise ChatError(str(e)) from None


def load_tools(path: str | None) -> list[dict]:
    """--tools FILE: a JSON list of OpenAI tool definitions, validated as the server validates `tools`
    and returned as the harmony renderer takes them; a mistake is one line before the model loads."""
    if path is None:
        return []
    from pydantic import TypeAdapter, ValidationError

    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise ChatError(f"--tools {path}: {e.strerror or e}") from None
    except ValueError as e:
        raise ChatError(f"--tools {path}: not JSON: {e}") from None
    if not isinstance(data, list):
        raise ChatError(f"--tools {path}: must be a JSON list of tool definitions "
                        '([{"type": "function", "function": {"name": ...}}])')
    try:
        tools = [t.spec() for t in TypeAdapter(list[Tool]).validate_python(data)]
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise ChatError(f"--tools {path}: item {where}: {err['msg']}") from None
    if len({t["name"] for t in tools}) != len(tools):
        raise ChatError(f"--tools {path}: two tools have the same name")
    return tools


class Reply:
    """Prints one streamed reply: gpt-oss reasoning (harmony's analysis channel) after
    `thinking: `, dimmed on a terminal, then the answer after `assistant: `, and each function call
    as it streams, after `call: ` (its name, then its arguments); no harmony marker is shown.
    `edgeport chat` and `edgeport run --chat` both print through it."""

    def __init__(self, out, *, harmony: bool, label_plain: bool = True,
                 calls: TemplateCallStream | HarmonyStream | None = None):
        # gpt-oss: harmony (a stream given knows the functions offered); a dense model offered tools: its
        # template's call format (template_tools.py)
        self.out = out
        self.parser = (calls if isinstance(calls, HarmonyStream) else HarmonyStream()) if harmony else calls
        tty = out.isatty()
        self.dim, self.bold, self.reset = ("\x1b[2m", "\x1b[1m", "\x1b[0m") if tty else ("", "", "")
        self.label_plain = label_plain  # label a non-harmony answer too
        self.state: str | None = None  # None, "reasoning", "answer", "call"
        self.answer: list[str] = []
        self.calls: list[dict] = []  # [{"name", "arguments"}], as the renderers take an assistant's calls

    def feed(self, piece: str) -> None:
        if self.parser:
            d = self.parser.feed(piece)
            self._show(d.reasoning, d.content)
            self._calls(d.calls)
        else:
            self._show("", piece)

    def finish(self) -> str:
        """Flush, end the line; the answer's text (what goes into a conversation's history)."""
        if self.parser:
            d = self.parser.finish()
            self._show(d.reasoning, d.content)
            self._calls(d.calls)
        self.out.write(f"{self.reset if self.dim else ''}\n")
        self.out.flush()
        return "".join(self.answer)

    def _calls(self, deltas: list) -> None:
        for c in deltas:
            if c.name is not None:  # a new call: its name first, then its arguments as they stream
                self.out.write(f"{self.reset}\n" if self.state else "")
                self.out.write(f"{self.bold}call:{self.reset} {c.name} ")
                self.calls.append({"name": c.name, "arguments": ""})
                self.state = "call"
            if c.arguments:
                self.out.write(c.arguments)
                self.calls[-1]["arguments"] += c.arguments
        if deltas:
            self.out.flush()

    def _show(self, reasoning: str, content: str) -> None:
        out = self.out
        if reasoning:
            if self.state != "reasoning":
                out.write(f"{self.reset}\n" if self.state == "call" else "")
                out.write(f"{self.dim}thinking: ")
                self.state = "reasoning"
            out.write(reasoning)
        if content:
            if self.state != "answer":
                out.write(f"{self.reset}\n" if self.state in ("reasoning", "call") else "")
                if self.parser or self.label_plain:
                    out.write(f"{self.bold}assistant:{self.reset} ")
                self.state = "answer"
            out.write(content)
            self.answer.append(content)
        out.flush()


def chat(artifact: str, *, reasoning_effort: str | None = None, max_new_tokens: int = 256,
         temperature: float = 0.0, seed: int = 0, tools: list[dict] | None = None) -> None:
    effort = effort_or_error(reasoning_effort)
    out = sys.stdout
    with runtimes.load(artifact) as rt:
        harmony = rt.info.chat_format == "harmony"
        fmt = call_format(rt.info.chat_template) if tools and not harmony else None
        if tools and not harmony and fmt is None:
            raise ChatError(f"--tools: {why_no_tools(rt.info.chat_template)}")
        shown = f"; tools: {', '.join(t['name'] for t in tools)}" if tools else ""
        print(f"chatting with {artifact} ({rt.name}){shown}; {HELP}", file=out, flush=True)
        history: list[dict] = []
        while True:
            try:
                line = input("> ")
            except EOFError:
                print(file=out)
                return
            text = line.strip()
            if not text:
                continue
            if text.startswith("/"):
                cmd, _, arg = text.partition(" ")
                if cmd in ("/exit", "/quit"):
                    return
                if cmd == "/reset":
                    history.clear()
                    print("(conversation cleared)", file=out, flush=True)
                elif cmd == "/effort":
                    try:
                        effort = normalize_effort(arg) if arg.strip() else effort
                        print(f"(reasoning effort: {effort or 'medium'})", file=out, flush=True)
                    except ValueError as e:
                        print(f"error: {e}", file=out, flush=True)
                else:
                    print(f"unknown command {cmd}; {HELP}", file=out, flush=True)
                continue
            before = len(history)
            history.append({"role": "user", "content": text})
            try:
                if _turn(rt, history, tools, fmt, harmony, effort, out, max_new_tokens, temperature, seed):
                    return
            except TemplateRefused as e:  # what the template says of this conversation; the turn is dropped
                del history[before:]
                print(f"error: {e}", file=out, flush=True)


def _turn(rt, history: list[dict], tools: list[dict] | None, fmt, harmony: bool, effort: str | None, out,
          max_new_tokens: int, temperature: float, seed: int) -> bool:
    """The model's turn, and after each call it makes, its result and the model again; True when the
    user ended the session at a result's prompt."""
    while True:
        names = {t["name"] for t in tools or []}
        reply = Reply(out, harmony=harmony, calls=HarmonyStream(functions=frozenset(names)) if harmony
                      else TemplateCallStream(fmt, names) if fmt else None)
        if tools:  # rendered as the server renders them
            text = render_harmony(history, effort, tools=tools) if harmony else render_template(
                rt.info.chat_template, template_messages(history), bos_token=rt.info.bos_token,
                eos_token=rt.info.eos_token, effort=effort, tools=template_tools(tools))
            ids = rt.encode(text, add_bos=False)
            pieces = rt.stream_ids(ids, max_new_tokens, temperature, 1.0, seed)
        else:
            pieces = rt.stream(history, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                               reasoning_effort=effort)
        for piece in pieces:
            reply.feed(piece)
        answer = reply.finish()
        history.append({"role": "assistant", "content": answer, **({"tool_calls": reply.calls} if reply.calls
                                                                   else {})})
        if not reply.calls:
            break
        for call in reply.calls:
            try:
                result = input(f"result of {call['name']}> ")
            except EOFError:
                print(file=out)
                return True
            history.append({"role": "tool", "name": call["name"], "content": result})
    return False
