"""Tool calls for a dense model whose chat template declares tools (Llama 3.1's JSON calls, the
Hermes / Qwen `<tool_call>` blocks, Mistral's `[TOOL_CALLS]` arrays and its newer `[TOOL_CALLS]name[ARGS]`
calls: edgeport/core/template_tools.py),
through the real `openai` client and LangChain against `python -m edgeport.serving` over llama-server
(GGUF) and the in-process ONNX runtime.

The model is the bundled tiny Llama with tests/templates/llama3-tools.jinja (Meta's format, cut down),
tests/templates/hermes-tools.jinja (Qwen 2.5's, with the Llama's turn tokens) or
tests/templates/mistral-tools.jinja (Mistral 7B Instruct v0.3's, cut down) or
tests/templates/mistral-args-tools.jinja (Mistral Small 3.2's `[TOOL_CALLS]name[ARGS]{…}`, cut down) as its
chat template. It
was never taught to call tools, so a call it makes under `tool_choice` required
or named is the constraint's doing; what it writes on its own under `auto` is read by the same parser,
tested here on a scripted engine. Per engine and template: 21 forced calls (required and each tool, temperature 0
and 6 seeds at 1), each validated against its tool's schema with `jsonschema`."""

from __future__ import annotations

import json
import shutil

import jsonschema
import pytest

from edgeport.core.template_tools import TemplateCallStream, call_format, parse_call
from tests import test_tools as tools
from tests.conftest import ROOT, asgi_server
from tests.test_serving import _client, _model, server
from tests.test_tools import HAIKU, SCHEMAS, TOOLS, _refused

TEMPLATES = {name: ROOT / "tests" / "templates" / f"{name}-tools.jinja"
             for name in ("llama3", "hermes", "mistral", "mistral-args")}
LLAMA3 = call_format(TEMPLATES["llama3"].read_text())
HERMES = call_format(TEMPLATES["hermes"].read_text())
MISTRAL = call_format(TEMPLATES["mistral"].read_text())
MISTRAL_ARGS = call_format(TEMPLATES["mistral-args"].read_text())
ROUND_TRIP = [{"role": "user", "content": "Weather in Paris?"},
              {"role": "assistant", "content": None,
               "tool_calls": [{"id": "call_1", "type": "function",
                               "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
              {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'}]


@pytest.fixture(scope="module", params=list(TEMPLATES))
def tools_llama(request, tmp_path_factory):
    """(The tiny Llama with a template that declares tools, the template's name)."""
    out = tmp_path_factory.mktemp("tools-llama") / "tiny-llama-tools"
    shutil.copytree(ROOT / "edgeport" / "models" / "tiny-llama", out)
    cfg = json.loads((out / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(cfg))
    shutil.copy(TEMPLATES[request.param], out / "chat_template.jinja")
    return out, request.param


@pytest.fixture(scope="module", params=["cpu", pytest.param("onnx", marks=pytest.mark.toolenv)],
                ids=["gguf-llama", "onnx-llama"])
def served(request, tools_llama, tmp_path_factory):
    from edgeport.export.pipeline import export

    model, template = tools_llama
    path = tmp_path_factory.mktemp("dense-tools") / request.param
    export(str(model), request.param, path)
    with server(path, "--ctx", "1024") as url:
        yield url, path, template


@pytest.mark.parametrize("choice", ["required", "add", "get_weather"])
def test_a_forced_call_is_always_made_and_valid(served, choice):
    """The harmony tests' own check (temperature 0 and 6 seeds at 1, each call validated)."""
    tools.test_a_forced_call_is_always_made_and_valid(served[0], choice)


def test_streamed_call_is_the_same_call(served):
    c = _client(served[0])
    model = _model(c)
    kw = {"model": model, "messages": HAIKU, "tools": TOOLS, "tool_choice": "required", "max_tokens": 200,
          "temperature": 0}
    whole = c.chat.completions.create(**kw).choices[0].message.tool_calls[0]
    name, args, finish, ids = None, "", None, set()
    for ch in c.chat.completions.create(**kw, stream=True):
        for choice in ch.choices:
            for d in choice.delta.tool_calls or []:
                name = d.function.name or name
                args += d.function.arguments or ""
                ids |= {d.id} if d.id else set()
            finish = choice.finish_reason or finish
    assert (name, json.loads(args), finish) == (whole.function.name, json.loads(whole.function.arguments),
                                                "tool_calls")
    assert len(ids) == 1


def test_tools_and_a_result_are_rendered_by_the_template(served):
    """The prompt the server generated from is the template's own rendering of the tools and of the
    call and its result (an ipython turn, a <tool_response> block): its token count equals the
    tokenizer's count of that text."""
    from tokenizers import Tokenizer

    from edgeport.core.chat import render_template
    from edgeport.core.template_tools import template_messages, template_tools
    from edgeport.serving.protocol import ChatRequest

    url, _, template = served
    c = _client(url)
    model = _model(c)
    tok = Tokenizer.from_file(str(ROOT / "edgeport" / "models" / "tiny-llama" / "tokenizer.json"))
    req = ChatRequest(model=model, messages=ROUND_TRIP, tools=TOOLS)
    cfg = json.loads((ROOT / "edgeport" / "models" / "tiny-llama" / "tokenizer_config.json").read_text())
    text = render_template(TEMPLATES[template].read_text(), template_messages(req.conversation()),
                           bos_token=cfg.get("bos_token") or "", eos_token=cfg.get("eos_token") or "",
                           tools=template_tools(req.tool_plan()[0]))
    result, call = {"llama3": ("ipython", '"name": "get_weather", "parameters": {"city": "Paris"}'),
                    "hermes": ("<tool_response>", '"name": "get_weather", "arguments": {"city": "Paris"}'),
                    "mistral": ("[TOOL_RESULTS]", '"name": "get_weather", "arguments": {"city": "Paris"}'),
                    "mistral-args": ("[TOOL_RESULTS]", '[TOOL_CALLS]get_weather[ARGS]{"city": "Paris"}')}[template]
    assert '"name": "get_weather"' in text and result in text and call in text
    r = c.chat.completions.create(model=model, messages=ROUND_TRIP, tools=TOOLS, max_tokens=8, temperature=0)
    assert r.usage.prompt_tokens == len(tok.encode(text, add_special_tokens=False).ids)
    # a forced call continues the format's opening (Hermes: "<tool_call>\n"), written into the prompt
    forced = c.chat.completions.create(model=model, messages=ROUND_TRIP, tools=TOOLS, tool_choice="required",
                                       max_tokens=200, temperature=0)
    prefix = call_format(TEMPLATES[template].read_text()).forced_prefix
    assert forced.usage.prompt_tokens == len(tok.encode(text + prefix, add_special_tokens=False).ids)
    plain = c.chat.completions.create(model=model, messages=ROUND_TRIP[:1], max_tokens=8, temperature=0)
    assert plain.usage.prompt_tokens < r.usage.prompt_tokens  # without tools: no tool definitions


def test_bad_tool_requests_are_openai_errors(served):
    c = _client(served[0])
    model = _model(c)
    unknown = [*ROUND_TRIP[:2], {**ROUND_TRIP[2], "tool_call_id": "call_nope"}]
    err = _refused(c, model, messages=unknown, tools=TOOLS)
    assert err["param"] == "messages.2.tool_call_id" and "call_nope" in err["message"]
    odd = [{"type": "function", "function": {"name": "odd", "parameters": {"type": "number", "multipleOf": 3}}}]
    err = _refused(c, model, tools=odd, tool_choice="required")
    assert err["code"] == "unsupported_schema" and err["param"] == "tools.0.function.parameters"
    nameless = [{"type": "function", "function": {"description": "no name", "parameters": SCHEMAS["add"]}}]
    assert _refused(c, model, tools=nameless)["param"] == "tools.0.function.name"


def test_langchain_binds_tools_and_gets_a_call(served):
    from langchain_openai import ChatOpenAI

    c = _client(served[0])
    llm = ChatOpenAI(base_url=f"{served[0]}/v1", api_key="unused", model=_model(c), temperature=0, max_tokens=200,
                     max_retries=0)
    msg = llm.bind_tools([t["function"] for t in TOOLS], tool_choice="any").invoke("Add 2 and 3.")
    assert len(msg.tool_calls) == 1 and msg.tool_calls[0]["name"] in SCHEMAS
    jsonschema.validate(msg.tool_calls[0]["args"], SCHEMAS[msg.tool_calls[0]["name"]])


def test_responses_api_returns_a_function_call_item(served):
    c = _client(served[0])
    tools = [{"type": "function", **t["function"]} for t in TOOLS]
    r = c.responses.create(model=_model(c), input="Add 2 and 3.", tools=tools, tool_choice="required",
                           max_output_tokens=200, temperature=0)
    calls = [i for i in r.output if i.type == "function_call"]
    assert len(calls) == 1
    jsonschema.validate(json.loads(calls[0].arguments), SCHEMAS[calls[0].name])


def test_a_template_without_tools_refuses_them(exported):
    """The bundled tiny Llama's template renders no tools: a 400 that says so, not tools dropped."""
    path, _ = exported("cpu-llama")
    with server(path, "--ctx", "512") as url:
        c = _client(url)
        err = _refused(c, _model(c), tools=TOOLS)
        assert err["code"] == "unsupported_tools" and "does not declare them" in err["message"]
        # tools offered with tool_choice none are not shown to the model: nothing to refuse
        r = c.chat.completions.create(model=_model(c), messages=HAIKU, tools=TOOLS, tool_choice="none", max_tokens=4)
        assert r.choices[0].finish_reason in ("stop", "length")


def _scripted(text: str, template: str):
    """An engine that writes `text` a few characters at a time, for a tools template's model."""
    from edgeport.runtimes.base import ModelInfo
    from edgeport.serving.engines import Engine, Piece

    class Scripted(Engine):
        name = "scripted"

        async def tokenize(self, text: str) -> list[int]:
            return [1] * len(text.split())

        async def generate(self, gen):
            said = min((text.split(s)[0] for s in gen.stop), key=len, default=text)  # as engines stop
            for i in range(0, len(said), 3):
                yield Piece(said[i:i + 3])
            yield Piece("", "stop", len(said) // 3)

    return Scripted(ModelInfo(architecture="llama", chat_format="template",
                              chat_template=TEMPLATES[template].read_text()), n_ctx=4096, slots=1)


def _block(name: str, args: dict) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call>'


def _array(*calls: tuple[str, dict], ids: bool = False) -> str:
    return "[TOOL_CALLS] " + json.dumps([{"name": n, "arguments": a, **({"id": f"abc12345{i}"} if ids else {})}
                                         for i, (n, a) in enumerate(calls)])


def _named(call: tuple[str, dict]) -> str:
    return f"[TOOL_CALLS]{call[0]}[ARGS]{json.dumps(call[1])}"


PARIS, SUM = ("get_weather", {"city": "Paris"}), ("add", {"a": 1, "b": 2})


@pytest.mark.parametrize("template,said,content,calls", [
    ("llama3", '{"name": "get_weather", "parameters": {"city": "Paris"}}', "", [PARIS]),
    ("llama3", '<|python_tag|>{"name": "add", "parameters": {"a": 1, "b": 2}}', "", [SUM]),
    ("llama3", '{"name": "nope", "parameters": {}}', None, []),  # not an offered tool: the text it is
    ("llama3", '{"a": 1}', None, []),
    ("llama3", "It is sunny.", None, []),
    ("hermes", _block(*PARIS), "", [PARIS]),
    ("hermes", f"Let me look.\n{_block(*PARIS)}\n{_block(*SUM)}", "Let me look.", [PARIS, SUM]),  # parallel
    ("hermes", f"{_block(*SUM)}\n{_block('nope', {})}", None, []),  # one unknown: all of it is text
    ("hermes", "<tool_call>\n{not json}\n</tool_call>", None, []),
    ("hermes", "Use <tool_ca", None, []),
    ("hermes", "It is sunny.", None, []),
    ("mistral", _array(PARIS), "", [PARIS]),
    ("mistral", _array(PARIS, SUM, ids=True), "", [PARIS, SUM]),  # parallel, with the ids Mistral writes
    ("mistral", '[TOOL_CALLS]{"name": "add", "arguments": {"a": 1, "b": 2}}', None, []),  # not an array
    ("mistral", _array(SUM, ("nope", {})), None, []),  # one unknown: all of it is text
    ("mistral", "[TOOL_CALLS] [{not json}]", None, []),
    ("mistral", "[1, 2] is a list.", None, []),
    ("mistral", "It is sunny.", None, []),
    ("mistral-args", _named(PARIS), "", [PARIS]),
    ("mistral-args", f"Let me look.{_named(PARIS)}{_named(SUM)}", "Let me look.", [PARIS, SUM]),  # parallel
    ("mistral-args", f"{_named(SUM)}{_named(('nope', {}))}", None, []),  # one unknown: all of it is text
    ("mistral-args", "[TOOL_CALLS]add[ARGS]{not json}", None, []),
    ("mistral-args", '[TOOL_CALLS]add{"a": 1, "b": 2}', None, []),  # no [ARGS]
    ("mistral-args", "Use [TOOL_CA", None, []),
    ("mistral-args", "It is sunny.", None, []),
], ids=lambda v: v if isinstance(v, str) and len(v) < 12 else None)
def test_a_call_the_model_makes_on_its_own_is_read_streamed_or_not(template, said, content, calls):
    """`content` None: the message is all text (as written; around calls, whitespace aside)."""
    from edgeport.serving.app import Settings, create_app

    content = said if content is None else content
    with asgi_server(create_app(_scripted(said, template), Settings("m", 1, 0))) as url:
        c = _client(url)
        m = c.chat.completions.create(model="m", messages=HAIKU, tools=TOOLS).choices[0]
        got = [(t.function.name, json.loads(t.function.arguments)) for t in m.message.tool_calls or []]
        assert ((m.message.content or "").strip(), got) == (content.strip(), calls)
        assert m.finish_reason == ("tool_calls" if calls else "stop")
        text, streamed, finish, ids = "", {}, None, set()
        for ch in c.chat.completions.create(model="m", messages=HAIKU, tools=TOOLS, stream=True):
            for choice in ch.choices:
                text += choice.delta.content or ""
                for d in choice.delta.tool_calls or []:
                    name, args = streamed.get(d.index, (None, ""))
                    streamed[d.index] = (d.function.name or name, args + (d.function.arguments or ""))
                    ids |= {d.id} if d.id else set()
                finish = choice.finish_reason or finish
        assert [(n, json.loads(a)) for _, (n, a) in sorted(streamed.items())] == calls and len(ids) == len(calls)
        assert (text.strip(), finish) == (content.strip(), "tool_calls" if calls else "stop")


def test_text_streams_at_once_and_a_possible_call_waits_for_its_end():
    s = TemplateCallStream(LLAMA3, {"add"})
    assert s.feed("  It").content == "  It" and s.feed(" is").content == " is"
    s = TemplateCallStream(LLAMA3, {"add"})
    assert not s.feed(' {"name"') and not s.feed(': "add", "parameters": {"a": 1, "b": 2}}')
    d = s.finish()
    assert d.calls[0].name == "add" and json.loads(d.calls[0].arguments) == {"a": 1, "b": 2} and not d.content
    s = TemplateCallStream(LLAMA3, {"add"})
    assert not s.feed("<|pyth") and s.finish().content == "<|pyth"  # a prefix of a prefix, then the end
    assert parse_call(LLAMA3, '{"name": "add", "arguments": {"a": 1}}', {"add"}) == ("add", '{"a": 1}')
    assert parse_call(LLAMA3, '{"name": "add", "parameters": {}, "x": 1}', {"add"}) is None


def test_parallel_tool_calls_false_ends_a_hermes_message_at_its_first_call():
    from edgeport.serving.app import Settings, create_app

    said = f"{_block(*PARIS)}\n{_block(*SUM)}"
    with asgi_server(create_app(_scripted(said, "hermes"), Settings("m", 1, 0))) as url:
        c = _client(url)
        for parallel, want in ((None, [PARIS, SUM]), (True, [PARIS, SUM]), (False, [PARIS])):
            kw = {} if parallel is None else {"parallel_tool_calls": parallel}
            m = c.chat.completions.create(model="m", messages=HAIKU, tools=TOOLS, **kw).choices[0].message
            assert [(t.function.name, json.loads(t.function.arguments)) for t in m.tool_calls] == want
            r = c.responses.create(model="m", input="Weather in Paris?", tools=[
                {"type": "function", **t["function"]} for t in TOOLS], **kw)
            assert [(i.name, json.loads(i.arguments)) for i in r.output if i.type == "function_call"] == want
            assert r.parallel_tool_calls is (parallel is not False)


def test_parallel_tool_calls_false_gives_the_first_call_of_a_mistral_array():
    from edgeport.serving.app import Settings, create_app

    with asgi_server(create_app(_scripted(_array(PARIS, SUM), "mistral"), Settings("m", 1, 0))) as url:
        c = _client(url)
        for parallel, want in ((None, [PARIS, SUM]), (False, [PARIS])):
            kw = {} if parallel is None else {"parallel_tool_calls": parallel}
            m = c.chat.completions.create(model="m", messages=HAIKU, tools=TOOLS, **kw).choices[0].message
            assert [(t.function.name, json.loads(t.function.arguments)) for t in m.tool_calls] == want


def test_a_named_call_streams_text_until_it_opens_and_a_forced_one_is_continued():
    s = TemplateCallStream(MISTRAL_ARGS, {"add", "get_weather"})
    assert s.feed("Sure [TOOL").content == "Sure " and not s.feed("_CA")  # maybe an opener: held
    assert not s.feed('LLS]add[ARGS]{"a": 1}') and not s.feed('[TOOL_CALLS]get_weather[ARGS]{"city": "Oslo"}')
    d = s.finish()
    assert [(c.index, c.name, json.loads(c.arguments)) for c in d.calls] == [
        (0, "add", {"a": 1}), (1, "get_weather", {"city": "Oslo"})] and not d.content
    s = TemplateCallStream(MISTRAL_ARGS, {"add"}, parallel=False)
    s.feed(f"{_named(SUM)}{_named(SUM)}")
    assert len(s.finish().calls) == 1
    # forced: the prompt ended with "[TOOL_CALLS]"; the front writes the name and [ARGS], the model the JSON
    s = TemplateCallStream(MISTRAL_ARGS, {"add"}, forced=True)
    assert not s.feed('add[ARGS]{"a": 2, "b": 3}')
    assert [(c.name, json.loads(c.arguments)) for c in s.finish().calls] == [("add", {"a": 2, "b": 3})]


def test_mistral_ids_are_nine_characters_and_a_result_keeps_its_calls_id():
    """Mistral's templates refuse call ids that are not 9 letters or digits (OpenAI's are `call_...`);
    the front renders each as a 9-character id, the same for the call and for its result, and numbers
    the calls of a history without ids (`edgeport chat`)."""
    from edgeport.core.chat import render_template
    from edgeport.core.template_tools import template_messages
    from edgeport.serving.protocol import ChatRequest

    msgs = template_messages(ChatRequest(model="m", messages=ROUND_TRIP, tools=TOOLS).conversation())
    call_id = msgs[1]["tool_calls"][0]["id"]
    assert len(call_id) == 9 and call_id.isalnum() and msgs[2]["tool_call_id"] == call_id
    text = render_template(TEMPLATES["mistral"].read_text(), msgs, tools=[])
    assert f'"id": "{call_id}"}}]' in text and f'"call_id": "{call_id}"}}[/TOOL_RESULTS]' in text
    plain = [{"role": "user", "content": "2+3 and 1+1?"},
             {"role": "assistant", "content": "", "tool_calls": [{"name": "add", "arguments": '{"a": 2, "b": 3}'},
                                                                 {"name": "add", "arguments": '{"a": 1, "b": 1}'}]},
             {"role": "tool", "name": "add", "content": "5"}, {"role": "tool", "name": "add", "content": "2"}]
    got = template_messages(plain)
    assert [r["tool_call_id"] for r in got[2:]] == [c["id"] for c in got[1]["tool_calls"]]
    assert len({c["id"] for c in got[1]["tool_calls"]}) == 2


def test_a_template_that_raises_is_a_400_with_its_message():
    """transformers gives templates `raise_exception`; what they say with it is the client's 400, not a 500."""
    from edgeport.runtimes.base import ModelInfo
    from edgeport.serving.app import Settings, create_app

    engine = _scripted("Hi.", "mistral")
    engine.info = ModelInfo(architecture="llama", chat_format="template",
                            chat_template="{{ raise_exception('roles must alternate') }}")
    with asgi_server(create_app(engine, Settings("m", 1, 0))) as url:
        err = _refused(_client(url), "m")
        assert err["param"] == "messages" and "roles must alternate" in err["message"]


def test_a_hermes_block_streams_text_until_it_opens_and_a_forced_one_is_continued():
    s = TemplateCallStream(HERMES, {"add"})
    assert s.feed("Sure <tool").content == "Sure " and not s.feed("_ca")  # maybe a marker: held
    assert s.feed("ll>\n").content == "" and not s.feed('{"name": "add", "arguments": {"a": 1}}\n</tool_call>')
    d = s.finish()
    assert [(c.index, c.name, json.loads(c.arguments)) for c in d.calls] == [(0, "add", {"a": 1})] and not d.content
    s = TemplateCallStream(HERMES, {"add"})
    assert s.feed("a <b>").content == "a <b>" and s.finish().content == ""
    # forced: the prompt ended with "<tool_call>\n"; the model writes the JSON and stops (no closing marker)
    s = TemplateCallStream(HERMES, {"add"}, forced=True)
    assert not s.feed('{"name": "add", "arguments": {"a": 2}}')
    assert [(c.name, json.loads(c.arguments)) for c in s.finish().calls] == [("add", {"a": 2})]


def test_only_known_call_formats_are_rendered_with_tools():
    other = "{% for t in tools %}{{ t | tojson }}{% endfor %}<function_calls>{{ messages[0].content }}"
    assert call_format(other) is None  # declares tools, in a format the front does not read
    assert call_format((ROOT / "edgeport" / "models" / "tiny-llama" / "chat_template.jinja").read_text()) is None
    assert LLAMA3 is not None and LLAMA3.name == "llama3_json"
    assert HERMES is not None and HERMES.name == "hermes" and HERMES.forced_prefix == "<tool_call>\n"
    assert MISTRAL is not None and MISTRAL.name == "mistral" and MISTRAL.forced_prefix == "[TOOL_CALLS]"
    assert MISTRAL_ARGS is not None and MISTRAL_ARGS.name == "mistral_args"
    assert MISTRAL_ARGS.forced_prefix == "[TOOL_CALLS]"


def test_the_onnx_engine_ends_an_integer_where_llama_cpp_does():
    """llguidance bounds no integer; llama.cpp's converter allows 16 digits. Unbounded, the tiny Llama
    under a forced call wrote "5" until max_tokens over ONNX while llama-server ended the number."""
    from tokenizers import Tokenizer

    from edgeport.serving.guidance import Guide

    path = ROOT / "edgeport" / "models" / "tiny-llama" / "tokenizer.json"
    tok = Tokenizer.from_file(str(path))
    guide = Guide(path.read_text(), tok.get_vocab_size(with_added_tokens=True), [tok.token_to_id("<|eot_id|>")])
    one, close = tok.token_to_id("1"), tok.encode("}", add_special_tokens=False).ids[0]
    mask = guide.mask({"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}, None)
    for t in tok.encode('{"n": ', add_special_tokens=False).ids:
        mask.advance(t)
    for _ in range(16):
        assert mask.allows(one)
        mask.advance(one)
    assert not mask.allows(one) and mask.allows(close)
