"""`edgeport chat`: a multi-turn conversation with an artifact in the terminal.

The artifact's own runtime runs in-process (no server); gpt-oss output goes through the same
harmony parser as the server, so reasoning is shown apart from the answer (dimmed) and never
kept in the history. Commands: /effort low|medium|high (or fast|balanced|deep), /reset, /exit.
"""

from __future__ import annotations

import sys

from edgeport import runtimes
from edgeport.core.errors import EdgeportError
from edgeport.core.harmony import HarmonyStream, normalize_effort

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


class Reply:
    """Prints one streamed reply: gpt-oss reasoning (harmony's analysis channel) after
    `thinking: `, dimmed on a terminal, then the answer after `assistant: `; no harmony marker is
    shown. `edgeport chat` and `edgeport run --chat` both print through it."""

    def __init__(self, out, *, harmony: bool, label_plain: bool = True):
        self.out, self.parser = out, HarmonyStream() if harmony else None
        tty = out.isatty()
        self.dim, self.bold, self.reset = ("\x1b[2m", "\x1b[1m", "\x1b[0m") if tty else ("", "", "")
        self.label_plain = label_plain  # label a non-harmony answer too
        self.state: str | None = None  # None, "reasoning", "answer"
        self.answer: list[str] = []

    def feed(self, piece: str) -> None:
        if self.parser:
            d = self.parser.feed(piece)
            self._show(d.reasoning, d.content)
        else:
            self._show("", piece)

    def finish(self) -> str:
        """Flush, end the line; the answer's text (what goes into a conversation's history)."""
        if self.parser:
            d = self.parser.finish()
            self._show(d.reasoning, d.content)
        self.out.write(f"{self.reset if self.dim else ''}\n")
        self.out.flush()
        return "".join(self.answer)

    def _show(self, reasoning: str, content: str) -> None:
        out = self.out
        if reasoning:
            if self.state != "reasoning":
                out.write(f"{self.dim}thinking: ")
                self.state = "reasoning"
            out.write(reasoning)
        if content:
            if self.state != "answer":
                out.write(f"{self.reset}\n" if self.state == "reasoning" else "")
                if self.parser or self.label_plain:
                    out.write(f"{self.bold}assistant:{self.reset} ")
                self.state = "answer"
            out.write(content)
            self.answer.append(content)
        out.flush()


def chat(artifact: str, *, reasoning_effort: str | None = None, max_new_tokens: int = 256,
         temperature: float = 0.0, seed: int = 0) -> None:
    effort = effort_or_error(reasoning_effort)
    out = sys.stdout
    with runtimes.load(artifact) as rt:
        harmony = rt.info.chat_format == "harmony"
        print(f"chatting with {artifact} ({rt.name}); {HELP}", file=out, flush=True)
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
            history.append({"role": "user", "content": text})
            reply = Reply(out, harmony=harmony)
            for piece in rt.stream(history, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                   reasoning_effort=effort):
                reply.feed(piece)
            history.append({"role": "assistant", "content": reply.finish()})
