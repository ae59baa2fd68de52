"""Chat formatting (harmony, templates), reasoning-effort aliases, stop handling."""

import pytest

from edgeport.core.chat import StopMatcher, as_messages, render_template
from edgeport.core.harmony import CHAT_TEMPLATE as HARMONY_CHAT_TEMPLATE
from edgeport.core.harmony import normalize_effort, parse_harmony_final, render_harmony_own

MSGS = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "2+2?"}]


def test_effort_aliases():
    assert [normalize_effort(x) for x in ("fast", "balanced", "deep", "LOW", None)] == \
        ["low", "medium", "high", "low", "medium"]
    with pytest.raises(ValueError, match="unknown reasoning effort"):
        normalize_effort("extreme")


def test_own_harmony_renderer_matches_the_documented_format():
    text = render_harmony_own(as_messages(MSGS[1:2]), "high", date="2025-06-28")
    assert text == (
        "<|start|>system<|message|>You are ChatGPT, a large language model trained by OpenAI.\n"
        "Knowledge cutoff: 2024-06\nCurrent date: 2025-06-28\n\nReasoning: high\n\n"
        "# Valid channels: analysis, commentary, final. Channel must be included for every message."
        "<|end|><|start|>user<|message|>Hi<|end|><|start|>assistant"
    )


@pytest.mark.parametrize("effort", ["fast", "balanced", "deep"])
def test_bundled_jinja_template_renders_the_same_text(effort):
    assert render_template(HARMONY_CHAT_TEMPLATE, MSGS, effort=effort) == \
        render_harmony_own(as_messages(MSGS), normalize_effort(effort))


def test_parse_harmony_final():
    out = "<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final<|message|>4<|return|>"
    assert parse_harmony_final(out) == "4"


def test_stop_matcher_holds_back_partial_stops():
    m = StopMatcher(["END"])
    pieces = [m.feed(p) for p in ("abc E", "N", "D tail")]
    assert pieces == ["abc ", "", ""] and m.stopped
    m = StopMatcher(["END"])
    assert m.feed("xE") == "x" and m.feed("Nope") == "ENope" and m.flush() == ""


def test_reply_prints_reasoning_apart_from_the_answer_whatever_the_pieces():
    """What `invoke chat` and `invoke run --chat` print for a harmony completion streamed in
    pieces that split markers anywhere: reasoning after "thinking:", the answer after "assistant:"."""
    import io

    from edgeport.serving.chat import Reply

    raw = ("<|channel|>analysis<|message|>The user wants code.<|end|><|start|>assistant<|channel|>final"
           "<|message|>def f(): pass")
    for size in (1, 2, 3, 7, len(raw)):
        out = io.StringIO()
        reply = Reply(out, harmony=True, label_plain=False)
        for i in range(0, len(raw), size):
            reply.feed(raw[i:i + size])
        assert reply.finish() == "def f(): pass"
        assert out.getvalue() == "thinking: The user wants code.\nassistant: def f(): pass\n"
    out = io.StringIO()
    reply = Reply(out, harmony=False, label_plain=False)
    reply.feed("plain text")
    assert reply.finish() == "plain text" and out.getvalue() == "plain text\n"
