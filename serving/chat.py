"""`invoke chat`: a multi-turn conversation with an artifact in the terminal.

The artifact's own runtime runs in-process (no server); gpt-oss output goes through the same
harmony parser as the server, so reasoning is shown apart from the answer (dimmed) and never
kept in the history. Commands: /effort low|medium|high (or fast|balanced|deep), /reset, /exit.
"""

from __future__ import annotations

import sys

from export.errors import EdgeportError
from runtimes.chat import normalize_effort

from .harmony import HarmonyStream

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


def chat(artifact: str, *, reasoning_effort: str | None = None, max_new_tokens: int = 256,
         temperature: float = 0.0, seed: int = 0) -> None:
    import runtimes

    effort = effort_or_error(reasoning_effort)
    out = sys.stdout
    tty = out.isatty()
    dim, bold, reset = ("\x1b[2m", "\x1b[1m", "\x1b[0m") if tty else ("", "", "")
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
            parser = HarmonyStream() if harmony else None
            answer: list[str] = []
            state = None  # None, "reasoning", "answer"

            def show(reasoning: str, content: str, answer: list[str] = answer) -> None:
                nonlocal state
                if reasoning:
                    if state != "reasoning":
                        out.write(f"{dim}thinking: ")
                        state = "reasoning"
                    out.write(reasoning)
                if content:
                    if state != "answer":
                        out.write(f"{reset}\n" if state == "reasoning" else "")
                        out.write(f"{bold}assistant:{reset} ")
                        state = "answer"
                    out.write(content)
                    answer.append(content)
                out.flush()

            for piece in rt.stream(history, max_new_tokens=max_new_tokens, temperature=temperature, seed=seed,
                                   reasoning_effort=effort):
                if parser:
                    d = parser.feed(piece)
                    show(d.reasoning, d.content)
                else:
                    show("", piece)
            if parser:
                d = parser.finish()
                show(d.reasoning, d.content)
            out.write(f"{reset}\n")
            out.flush()
            history.append({"role": "assistant", "content": "".join(answer)})
