"""Split a gpt-oss completion, as it streams, into reasoning and answer.

After `<|start|>assistant` a harmony model writes messages such as
`<|channel|>analysis<|message|>…<|end|><|start|>assistant<|channel|>final<|message|>…<|return|>`.
The analysis (and commentary) channel goes to `reasoning_content`, the final channel to
`content`, and no marker reaches either. Output that is not well-formed harmony is never an
error: text outside any message goes to `content` and `malformed` says so (llama-server's own
chat endpoint answers such output with HTTP 500; this parser is why we drive its completion
endpoint instead).
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
