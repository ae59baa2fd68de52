"""`invoke chat` through a pseudo-terminal: multi-turn, streaming, /effort, /reset, /exit, and a
bad option as one line and exit 2; `invoke run --chat` shows gpt-oss reasoning apart from the
answer the same way (`--raw` keeps harmony's tokens)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pexpect

from edgeport.core.harmony import MARKERS, parse
from edgeport.models.build_tools import run_tool
from tests.conftest import ROOT

INVOKE = str(Path(sys.executable).parent / "invoke")


def test_chat_in_a_terminal(exported):
    path, _ = exported("cpu-gpt-oss")
    child = pexpect.spawn(INVOKE, ["chat", "--artifact", str(path), "--max-new-tokens", "300"], cwd=str(ROOT),
                          encoding="utf-8", timeout=120, dimensions=(40, 200))
    try:
        child.expect("chatting with")
        child.expect("> ")
        child.sendline("Write a function called parse_args.")
        # the bundled model reasons in harmony (edgeport/models/build_harmony.py): its analysis is shown
        # first, apart, then the answer streams after its label
        child.expect(r"thinking: The reasoning effort is medium\.")
        child.expect("assistant:")
        child.expect("\n> ")
        child.sendline("/effort deep")
        child.expect(r"\(reasoning effort: high\)")
        child.sendline("/effort bogus")
        child.expect("error: unknown reasoning effort 'bogus'")
        child.sendline("Now write a function called main.")  # a second turn, at the new effort
        child.expect(r"thinking: The reasoning effort is high\.")
        child.expect("assistant:")
        child.expect("\n> ")
        child.sendline("/reset")
        child.expect(r"\(conversation cleared\)")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_chat_bad_effort_is_one_line(exported):
    path, _ = exported("cpu-llama")
    r = subprocess.run([INVOKE, "chat", "--artifact", str(path), "--reasoning-effort", "bogus"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and "bogus" in r.stderr
    assert "Traceback" not in r.stderr


def test_run_chat_shows_reasoning_apart_from_the_answer(exported):
    path, _ = exported("cpu-gpt-oss")
    argv = [INVOKE, "run", "--artifact", str(path), "--prompt", "Write a function called parse_args.", "--chat",
            "--max-new-tokens", "300"]
    shown = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=300)
    raw = subprocess.run([*argv, "--raw"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert shown.returncode == 0 and raw.returncode == 0, shown.stderr + raw.stderr
    # as invoke chat prints it: the analysis after "thinking:", the answer after "assistant:", no marker
    assert shown.stdout.startswith("thinking: The reasoning effort is medium."), shown.stdout[:300]
    assert "\nassistant: " in shown.stdout
    assert not any(m in shown.stdout for m in MARKERS), shown.stdout
    # --raw: the model's own harmony, which says the same (greedy: the same generation)
    assert raw.stdout.startswith("<|channel|>analysis<|message|>"), raw.stdout[:300]
    assert "<|channel|>final<|message|>" in raw.stdout
    reasoning, content, malformed = parse(raw.stdout.rstrip("\n"))
    assert not malformed
    assert shown.stdout == f"thinking: {reasoning}\nassistant: {content}\n"


def test_run_chat_on_a_template_model_prints_the_answer(exported):
    path, _ = exported("cpu-llama")
    r = subprocess.run([INVOKE, "run", "--artifact", str(path), "--prompt", "import", "--chat",
                        "--max-new-tokens", "8"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and "thinking:" not in r.stdout and "assistant:" not in r.stdout


WEATHER_TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                                   "parameters": {"type": "object",
                                                                  "properties": {"city": {"type": "string"}}}}}]


def test_a_call_is_shown_as_it_streams():
    """What chat prints for a gpt-oss turn that calls a function, fed in the runtime's pieces: the call's
    name as soon as its header is read, then its arguments as they come, and the call kept for the history."""
    import io

    from edgeport.serving.chat import Reply

    out = io.StringIO()
    reply = Reply(out, harmony=True)
    said = ("<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
            'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}')
    shown = []
    for i in range(0, len(said), 7):
        reply.feed(said[i:i + 7])
        shown.append(out.getvalue())
    assert reply.finish() == ""
    assert out.getvalue() == 'thinking: Need the weather.\ncall: get_weather {"city": "Paris"}\n'
    first = next(i for i, s in enumerate(shown) if "call: get_weather" in s)
    assert '"Paris"' not in shown[first]  # the name shown before the arguments have all come
    assert reply.calls == [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]


def test_a_dense_models_call_is_shown_when_its_message_ends():
    """A dense model's call (Llama 3.1 JSON) is the whole message: chat shows it once it is whole, as
    `call: NAME ARGUMENTS`, and keeps it for the history; other text is the answer, shown as it comes."""
    import io

    from edgeport.core.template_tools import FORMATS, TemplateCallStream
    from edgeport.serving.chat import Reply

    LLAMA3 = next(f for f in FORMATS if f.name == "llama3_json")

    out = io.StringIO()
    reply = Reply(out, harmony=False, calls=TemplateCallStream(LLAMA3, {"get_weather"}))
    for piece in ('{"name": "get_', 'weather", "parameters": ', '{"city": "Paris"}}'):
        reply.feed(piece)
        assert out.getvalue() == ""
    assert reply.finish() == ""
    assert out.getvalue() == 'call: get_weather {"city": "Paris"}\n'
    assert reply.calls == [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]
    out = io.StringIO()
    reply = Reply(out, harmony=False, calls=TemplateCallStream(LLAMA3, {"get_weather"}))
    reply.feed("It is ")
    assert out.getvalue() == "assistant: It is "
    reply.feed("sunny.")
    assert reply.finish() == "It is sunny." and not reply.calls


def test_chat_with_tools_in_a_terminal(exported, tmp_path):
    path, _ = exported("cpu-gpt-oss")
    tools = tmp_path / "tools.json"
    tools.write_text(json.dumps(WEATHER_TOOLS))
    child = pexpect.spawn(INVOKE, ["chat", "--artifact", str(path), "--max-new-tokens", "200", "--tools", str(tools)],
                          cwd=str(ROOT), encoding="utf-8", timeout=120, dimensions=(40, 200))
    try:
        child.expect(r"tools: get_weather;")
        child.expect("> ")
        child.sendline("What is the weather in Paris?")
        # the bundled model calls its tools (edgeport/models/build_tools.py): the call shown as it streams
        # (bold "call:"), its result asked for, then an answer (what it says is tests/test_tool_model.py's to judge)
        child.expect(r'call:(?:\x1b\[[0-9;]*m)* get_weather \{"city": "Paris"\}')
        child.expect("result of get_weather> ")
        child.sendline(run_tool("get_weather", {"city": "Paris"}))
        child.expect("assistant:")
        child.expect("\n> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
    finally:
        child.close()
    assert child.exitstatus == 0


def test_chat_bad_tools_file_is_one_line(exported, tmp_path):
    path, _ = exported("cpu-llama")
    bad = {"missing": (tmp_path / "nope.json", "No such file"), "not-json": (tmp_path / "a.json", "not JSON"),
           "not-a-list": (tmp_path / "b.json", "JSON list"), "nameless": (tmp_path / "c.json", "name")}
    bad["not-json"][0].write_text("{")
    bad["not-a-list"][0].write_text("{}")
    bad["nameless"][0].write_text(json.dumps([{"type": "function", "function": {"description": "x"}}]))
    bad["no-tools-in-template"] = (tmp_path / "d.json", "chat template does not declare them")
    bad["no-tools-in-template"][0].write_text(json.dumps(WEATHER_TOOLS))
    for f, words in bad.values():
        r = subprocess.run([INVOKE, "chat", "--artifact", str(path), "--tools", str(f)], cwd=ROOT,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and words in r.stderr, r.stderr
        assert "Traceback" not in r.stderr


def test_a_template_that_refuses_a_turn_is_one_line_and_the_chat_goes_on(monkeypatch, capsys):
    """A chat template's raise_exception (transformers gives templates one) was a Jinja traceback that
    ended `edgeport chat`; it is the template's message, and the turn is dropped from the history."""
    import contextlib
    import io

    from edgeport.runtimes.base import ModelInfo, Runtime
    from edgeport.serving import chat

    seen: list[int] = []  # the history's length at each turn the template took

    class OneTurn:  # a runtime whose template takes one user message only, rendered as every runtime renders it
        name = "scripted"
        info = ModelInfo(architecture="llama", chat_format="template", chat_template=(
            "{% if messages|length > 1 %}{{ raise_exception('one message only') }}{% endif %}"
            "{{ messages[0].content }}"))
        format_prompt = Runtime.format_prompt

        def stream(self, history, **kw):
            self.format_prompt(history)
            seen.append(len(history))
            return iter(["Hi."])

    monkeypatch.setattr(chat.runtimes, "load", lambda artifact: contextlib.nullcontext(OneTurn()))
    monkeypatch.setattr("sys.stdin", io.StringIO("hello\nagain\n/reset\nonce more\n/exit\n"))
    chat.chat("x")
    out = capsys.readouterr().out
    assert out.count("error: this model's chat template refused the messages: one message only") == 1
    assert seen == [1, 1]  # after the refusal the history held the first turn only; after /reset, none
