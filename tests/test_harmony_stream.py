"""The streaming harmony parser: reasoning apart from the answer, no marker in either, and
malformed output answered as content (never an error)."""

import random

import pytest

from edgeport.core.harmony import MARKERS, HarmonyStream, parse

WELL_FORMED = ("<|channel|>analysis<|message|>First, think.<|end|>"
               "<|start|>assistant<|channel|>final<|message|>The answer is 4.<|return|>")


def _stream(text: str, sizes: list[int]) -> tuple[str, str, bool]:
    s, r, c, i = HarmonyStream(), "", "", 0
    for n in sizes:
        d = s.feed(text[i:i + n])
        r, c, i = r + d.reasoning, c + d.content, i + n
    d = s.feed(text[i:])
    d2 = s.finish()
    return r + d.reasoning + d2.reasoning, c + d.content + d2.content, s.malformed


def test_whole_message():
    assert parse(WELL_FORMED) == ("First, think.", "The answer is 4.", False)


@pytest.mark.parametrize("seed", range(20))
def test_any_split_gives_the_same_result(seed):
    rng = random.Random(seed)
    sizes = [rng.randint(1, 7) for _ in range(len(WELL_FORMED))]
    assert _stream(WELL_FORMED, sizes) == ("First, think.", "The answer is 4.", False)


def test_final_only_and_unfinished():
    assert parse("<|channel|>final<|message|>hi") == ("", "hi", False)
    assert parse("<|channel|>analysis<|message|>still thinking") == ("still thinking", "", False)


def test_not_harmony_goes_to_content_and_says_so():
    r, c, bad = parse("def f():\n    return 1")
    assert (r, c, bad) == ("", "def f():\n    return 1", True)


def test_stray_markers_never_reach_the_texts():
    r, c, bad = parse("<|channel|>final<|message|>a <|channel|> b<|start|>")
    assert bad and not any(m in r + c for m in MARKERS)
    assert c == "a  b"


def test_text_after_return_is_dropped():
    assert parse("<|channel|>final<|message|>x<|return|>junk") == ("", "x", False)


def test_a_long_headerless_message_after_start_ends():
    """A model that writes `<|start|>` and then 300 characters with no `<|message|>` (the tool-trained
    tiny gpt-oss did, at temperature 0) is not harmony: the text goes to content. This hung the server
    (header and body handed the `<|start|>` back and forth for ever); run in a child so a hang fails."""
    import subprocess
    import sys

    code = ("from edgeport.core.harmony import parse;"
            "print(parse('<|channel|>final<|message|>hi<|start|>' + 'a' * 300))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == repr(("", "hi" + "a" * 300, True)), r.stderr
