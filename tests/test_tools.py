"""Tool calls in harmony, through the real `openai` client against `python -m edgeport.serving` over
llama-server on the bundled tiny gpt-oss (which was never taught to call tools: a call it makes under
`tool_choice` required or named is the grammar's doing), plus the rendering they rest on, pinned to
openai-harmony's own."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from edgeport.core.harmony import MARKERS, parse, parse_calls, render_harmony
from edgeport.serving.protocol import ChatRequest
from tests.conftest import asgi_server
from tests.test_harmony_offline import encoding, vocab_dir  # noqa: F401 - the openai-harmony oracle's fixtures
from tests.test_serving import _client, _model, server

ADD = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
       "required": ["a", "b"], "additionalProperties": False}
WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20, "description": "The city"},
                                            "unit": {"type": "string", "enum": ["c", "f"], "default": "c"}},
           "required": ["city"], "additionalProperties": False}
TOOLS = [{"type": "function", "function": {"name": "add", "description": "Add two numbers.", "parameters": ADD}},
         {"type": "function", "function": {"name": "get_weather", "description": "The weather in a city.",
                                           "parameters": WEATHER}}]
SCHEMAS = {"add": ADD, "get_weather": WEATHER}
HAIKU = [{"role": "user", "content": "Write a haiku about the sea."}]  # no reason to call a tool
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}
ROUND_TRIP = [{"role": "user", "content": "Weather in Paris?"},
              {"role": "assistant", "content": None, "tool_calls": [CALL]},
              {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 21}'}]


@pytest.fixture(scope="module", params=[pytest.param("cpu-gpt-oss", marks=pytest.mark.slow)], ids=["gguf-gpt-oss"])
def served(request, exported):
    path, _ = exported(request.param)
    with server(path, "--ctx", "1024", "--parallel", "4") as url:
        yield url


def _valid(call) -> None:
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@pytest.mark.parametrize("choice", ["required", "add", "get_weather"])
def test_a_forced_call_is_always_made_and_valid(served, choice):
    c = _client(served)
    model = _model(c)
    tool_choice = choice if choice == "required" else {"type": "function", "function": {"name": choice}}
    for temperature, seed in [(0, None), *((1, s) for s in range(6))]:
        r = c.chat.completions.create(model=model, messages=HAIKU, tools=TOOLS, tool_choice=tool_choice,
                                      max_tokens=300, temperature=temperature, seed=seed)
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls", ch
        assert len(ch.message.tool_calls) == 1 and not ch.message.content
        call = ch.message.tool_calls[0]
        assert call.function.name == choice or choice == "required"
        _valid(call)


@pytest.mark.parametrize("what", ["call", "schema"])
def test_harmony_markers_cannot_enter_a_constrained_string(served, what):
    """A JSON string admits any character, and llama-server's grammar judges a special token by its text:
    `<|end|>` inside a call's string passed, and the front's harmony parser then read the call as ended
    there (a served candidate, sampled: arguments '{"city": "cope ... gave me.' with finish_reason
    tool_calls). The client's logit_bias pushes the markers here; the front bans them while the grammar
    decodes, so the arguments or the answer stay whole and valid."""
    from tokenizers import Tokenizer

    from tests.conftest import GPT_OSS

    tok = Tokenizer.from_file(str(GPT_OSS / "tokenizer.json"))
    push = {tok.token_to_id(m): 100 for m in ("<|end|>", "<|start|>", "<|channel|>", "<|message|>",
                                                "<|constrain|>")}
    c = _client(served)
    kw = dict(model=_model(c), messages=HAIKU, max_tokens=300, temperature=0, logit_bias=push)
    if what == "call":
        r = c.chat.completions.create(**kw, tools=TOOLS, tool_choice={"type": "function",
                                                                      "function": {"name": "get_weather"}})
        ch = r.choices[0]
        assert ch.finish_reason == "tool_calls" and len(ch.message.tool_calls) == 1, ch
        _valid(ch.message.tool_calls[0])
    else:
        schema = {"type": "object", "properties": {"poem": {"type": "string"}},
                  "required": ["poem"], "additionalProperties": False}
        r = c.chat.completions.create(**kw, response_format={"type": "json_schema", "json_schema": {
            "name": "p", "schema": schema, "strict": True}})
        ch = r.choices[0]
        assert ch.finish_reason == "stop", ch
        jsonschema.validate(json.loads(ch.message.content), schema)


def test_streamed_call_deltas_reassemble_to_the_same_call(served):
    c = _client(served)
    model = _model(c)
    kw = dict(model=model, messages=HAIKU, tools=TOOLS, tool_choice="required", max_tokens=300, temperature=0)
    whole = c.chat.completions.create(**kw).choices[0].message.tool_calls[0]
    calls, finish, reasoning = {}, None, ""
    for ch in c.chat.completions.create(**kw, stream=True):
        for choice in ch.choices:
            finish = choice.finish_reason or finish
            reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            for d in choice.delta.tool_calls or []:
                if d.id:  # a call's first delta: its id, type and name
                    calls[d.index] = {"id": d.id, "name": d.function.name, "arguments": d.function.arguments or ""}
                else:
                    calls[d.index]["arguments"] += d.function.arguments or ""
    assert finish == "tool_calls" and list(calls) == [0]
    assert (calls[0]["name"], calls[0]["arguments"]) == (whole.function.name, whole.function.arguments)
    assert calls[0]["id"].startswith("call_") and reasoning and not any(m in reasoning for m in MARKERS)


def test_auto_and_none_leave_the_choice_to_the_model(served):
    """`none`: never a call. `auto`: the model's choice, text or a well-formed call (the tiny gpt-oss, taught
    only two tools, calls one for a haiku about the sea; tests/test_tool_model.py judges its choices)."""
    c = _client(served)
    model = _model(c)
    for choice in ("auto", "none"):
        r = c.chat.completions.create(model=model, messages=HAIKU, tools=TOOLS, tool_choice=choice, max_tokens=200,
                                      temperature=0)
        ch = r.choices[0]
        if choice == "auto" and ch.message.tool_calls:
            assert ch.finish_reason == "tool_calls"
            for t in ch.message.tool_calls:
                jsonschema.validate(json.loads(t.function.arguments), SCHEMAS[t.function.name])
        else:
            assert ch.finish_reason in ("stop", "length") and not ch.message.tool_calls
    # `none` offers no tools: the prompt is the one without them
    none = c.chat.completions.create(model=model, messages=HAIKU, tools=TOOLS, tool_choice="none", max_tokens=1)
    plain = c.chat.completions.create(model=model, messages=HAIKU, max_tokens=1)
    auto = c.chat.completions.create(model=model, messages=HAIKU, tools=TOOLS, max_tokens=1)
    assert none.usage.prompt_tokens == plain.usage.prompt_tokens < auto.usage.prompt_tokens


def test_a_tool_result_round_trips_into_the_next_prompt(served):
    from tokenizers import Tokenizer

    from tests.conftest import GPT_OSS

    req = ChatRequest(model="m", messages=ROUND_TRIP, tools=TOOLS)
    text = render_harmony(req.conversation(), tools=[t.spec() for t in req.tools])
    assert text.endswith('<|start|>user<|message|>Weather in Paris?<|end|>'
                         '<|start|>assistant to=functions.get_weather<|channel|>commentary <|constrain|>json'
                         '<|message|>{"city": "Paris"}<|call|>'
                         '<|start|>functions.get_weather to=assistant<|channel|>commentary<|message|>{"temp_c": 21}'
                         '<|end|><|start|>assistant')
    assert "namespace functions {\n\n// Add two numbers.\ntype add = (_: {\na: number,\nb: number,\n}) => any;" in text
    # the server renders the same conversation to the same tokens, and answers after the result
    c = _client(served)
    r = c.chat.completions.create(model=_model(c), messages=ROUND_TRIP, tools=TOOLS, max_tokens=100, temperature=0)
    assert r.usage.prompt_tokens == len(Tokenizer.from_file(str(GPT_OSS / "tokenizer.json")).encode(
        text, add_special_tokens=False).ids)
    assert r.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_rendering_matches_openai_harmony(encoding):  # noqa: F811 - the imported fixture
    from edgeport.core.harmony import render_harmony_official

    specs = [t["function"] for t in TOOLS] + [
        {"name": "now", "description": "The time.\nIn UTC.", "parameters": {"type": "object", "properties": {}}},
        {"name": "ping", "description": None, "parameters": None},
        {"name": "rich", "description": "Every shape.", "parameters": {"type": "object", "required": ["q"],
                                                                       "properties": {
            "q": {"type": "string", "title": "Query", "examples": ["a", "b"]},
            "n": {"type": ["integer", "null"], "default": 3},
            "tags": {"type": "array", "items": {"type": "string"}},
            "opt": {"type": "object", "description": "Options", "properties": {"x": {"type": "boolean",
                                                                                   "nullable": True}}},
            "v": {"oneOf": [{"type": "string", "description": "text"}, {"type": "number"}],
                  "description": "either"}}}}]
    convs = [HAIKU, [{"role": "system", "content": "Be brief."}, *ROUND_TRIP],
             [*HAIKU, {"role": "assistant", "content": ""}, {"role": "user", "content": "Again."}],
             [*ROUND_TRIP, {"role": "assistant", "content": "Sunny, 21 C."}, {"role": "user", "content": "Thanks"}]]
    for msgs in convs:
        conv = ChatRequest(model="m", messages=msgs).conversation()
        for tools in (specs, None):
            assert render_harmony(conv, "low", tools=tools) == render_harmony_official(conv, "low", encoding=encoding,
                                                                                       tools=tools)


def test_preambles_are_content_and_calls_are_parsed():
    text = ("<|channel|>analysis<|message|>Need weather.<|end|><|start|>assistant<|channel|>commentary<|message|>"
            "Checking.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
            '<|message|>{"city":"Paris"}<|call|>')
    assert parse(text) == ("Need weather.", "Checking.", False)
    assert parse_calls(text) == [("get_weather", '{"city":"Paris"}')]
    # openai-harmony's own order (recipient before the channel) reads the same
    assert parse_calls('<|start|>assistant to=functions.add<|channel|>commentary <|constrain|>json<|message|>{}'
                       '<|call|>') == [("add", "{}")]


def _refused(c, model: str, **kw) -> dict:
    with pytest.raises(openai.BadRequestError) as e:
        c.chat.completions.create(model=model, **{"messages": HAIKU, "max_tokens": 8, **kw})
    err = e.value.response.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize(("analysis", "last"), [("Need a sum.<|end|><|start|>assistant", ""), ("Need a sum.", ""),
                                              ("Need a sum.<|end|>", "<|start|>assistant")])  # in the last piece
def test_a_forced_call_after_a_channel_opened_inside_the_analysis_is_still_a_call(analysis, last):
    """The free analysis of a forced call stops where the model opens the commentary channel. The
    tool-trained tiny gpt-oss opened it inside its analysis, without `<|end|><|start|>assistant`: the
    header the front then wrote stayed in the analysis, and the call came back as reasoning text
    (finish_reason "stop", no tool_calls)."""
    from edgeport.serving.constrained import COMMENTARY, _Free
    from edgeport.serving.engines import Piece

    run = _Free(said=["<|channel|>analysis<|message|>", analysis], end=Piece(last, "stop", 5, COMMENTARY))
    call = ' to=functions.add <|constrain|>json<|message|>{"a": 1, "b": 2}'
    text = "".join(run.said) + run.end.text + run.lead() + COMMENTARY + call
    assert parse_calls(text) == [("add", '{"a": 1, "b": 2}')]
    assert parse(text)[0] == "Need a sum."
    assert text.count("<|start|>assistant") == 1  # one message opened, by the model or by the front


def test_bad_tool_requests_are_openai_errors(served):
    c = _client(served)
    model = _model(c)
    nameless = [{"type": "function", "function": {"description": "no name", "parameters": ADD}}]
    assert _refused(c, model, tools=nameless)["param"] == "tools.0.function.name"
    unknown = [*ROUND_TRIP[:2], {**ROUND_TRIP[2], "tool_call_id": "call_nope"}]
    err = _refused(c, model, messages=unknown, tools=TOOLS)
    assert err["param"] == "messages.2.tool_call_id" and "call_nope" in err["message"]
    assert _refused(c, model, tools=TOOLS, tool_choice={"type": "function", "function": {"name": "nope"}})["param"] \
        == "tool_choice.function.name"
    assert _refused(c, model, tool_choice="required")["param"] == "tool_choice"
    odd = [{"type": "function", "function": {"name": "odd", "parameters": {"type": "number", "multipleOf": 3}}}]
    err = _refused(c, model, tools=odd, tool_choice="required")
    assert err["code"] == "unsupported_schema" and err["param"] == "tools.0.function.parameters"


def _scripted(text: str, chat_format: str = "harmony"):
    """An engine without constrained decoding (as in-process ONNX) that writes `text` token by token."""
    from edgeport.runtimes.base import ModelInfo
    from edgeport.serving.engines import Engine, Piece

    class Scripted(Engine):
        name = "in-process onnxruntime"

        async def tokenize(self, text: str) -> list[int]:
            return [1] * len(text.split())

        async def generate(self, gen):
            assert "<|call|>" in gen.stop  # where a call ends, generation does
            pieces = [p for p in text.replace("<|", "\0<|").replace("|>", "|>\0").split("\0") if p]
            for p in pieces:
                yield Piece(p)
            yield Piece("", "stop", len(pieces))

    return Scripted(ModelInfo(architecture="x", chat_format=chat_format, chat_template="{{ messages[0].content }}"),
                    n_ctx=4096, slots=1)


def test_a_call_the_model_makes_on_its_own_is_parsed_and_streamed():
    """`auto`: what the model writes decides; a preamble is content, the call is tool_calls (any engine)."""
    from edgeport.serving.app import Settings, create_app

    said = ("<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary<|message|>"
            "Checking.<|end|><|start|>assistant<|channel|>commentary to=functions.get_weather <|constrain|>json"
            '<|message|>{"city": "Paris"}')  # <|call|> is a stop string: llama-server does not send it
    with asgi_server(create_app(_scripted(said), Settings("m", 1, 0))) as url:
        c = _client(url)
        r = c.chat.completions.create(model="m", messages=HAIKU, tools=TOOLS)
        m = r.choices[0].message
        assert r.choices[0].finish_reason == "tool_calls" and m.content == "Checking."
        assert m.model_extra["reasoning_content"] == "Need the weather."
        assert [(t.function.name, t.function.arguments) for t in m.tool_calls] == [("get_weather", '{"city": "Paris"}')]
        args, content, finish = "", "", None
        for ch in c.chat.completions.create(model="m", messages=HAIKU, tools=TOOLS, stream=True):
            for choice in ch.choices:
                content += choice.delta.content or ""
                args += "".join(d.function.arguments or "" for d in choice.delta.tool_calls or [])
                finish = choice.finish_reason or finish
        assert (content, args, finish) == ("Checking.", '{"city": "Paris"}', "tool_calls")


@pytest.mark.parametrize("offer", ["no tools", "none", "another tool"])
def test_a_call_to_a_function_the_request_did_not_offer_is_content(offer):
    """OpenAI never returns a call to a function it was not given: a model that addresses one anyway
    (no tools, `tool_choice: none`, or a name not in `tools`) has written text, given as content with
    finish_reason "stop", streamed or not; as the dense templates' calls are (template_tools.py)."""
    from edgeport.serving.app import Settings, create_app

    said = ("<|channel|>analysis<|message|>Need the weather.<|end|><|start|>assistant<|channel|>commentary "
            'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}')
    extra = {"no tools": {}, "none": {"tools": TOOLS, "tool_choice": "none"},
             "another tool": {"tools": [t for t in TOOLS if t["function"]["name"] != "get_weather"]}}[offer]
    assert offer != "another tool" or extra["tools"]
    with asgi_server(create_app(_scripted(said), Settings("m", 1, 0))) as url:
        c = _client(url)
        r = c.chat.completions.create(model="m", messages=HAIKU, **extra)
        m = r.choices[0].message
        assert (r.choices[0].finish_reason, m.tool_calls, m.content) == ("stop", None, '{"city": "Paris"}')
        content, calls, finish = "", [], None
        for ch in c.chat.completions.create(model="m", messages=HAIKU, stream=True, **extra):
            for choice in ch.choices:
                content += choice.delta.content or ""
                calls += choice.delta.tool_calls or []
                finish = choice.finish_reason or finish
        assert (content, calls, finish) == ('{"city": "Paris"}', [], "stop")
        r = c.responses.create(model="m", input="Weather?", **({"tools": [
            {"type": "function", **t["function"]} for t in extra["tools"]]} if extra.get("tools") else {}),
            **({"tool_choice": "none"} if offer == "none" else {}))
        assert [i.type for i in r.output] == ["reasoning", "message"] and r.output_text == '{"city": "Paris"}'


def test_engines_that_cannot_force_calls_or_render_tools_say_so():
    from edgeport.serving.app import Settings, create_app

    for fmt in ("harmony", "template"):
        engine = _scripted("<|channel|>final<|message|>hi<|return|>", fmt)
        with asgi_server(create_app(engine, Settings("m", 1, 0))) as url:
            c = _client(url)
            if fmt == "harmony":  # tools offered and parsed on any engine; a forced call needs constraints
                assert c.chat.completions.create(model="m", messages=HAIKU, tools=TOOLS).choices[0].message.content \
                    == "hi"
                assert _refused(c, "m", tools=TOOLS, tool_choice="required")["code"] == "unsupported_tool_choice"
            else:
                assert _refused(c, "m", tools=TOOLS)["code"] == "unsupported_tools"


def _looping():
    """An engine that constrains and whose analysis never ends: free, it writes "again" until its
    max_tokens; under a grammar it writes the first name, under a schema an object that fits it (what
    llama-server's grammar or llguidance would let through; here the front's phases are on trial)."""
    from edgeport.runtimes.base import ModelInfo
    from edgeport.serving.engines import Engine, Piece

    class Looping(Engine):
        name = "scripted"
        constrains = True

        async def tokenize(self, text: str) -> list[int]:
            return [1] * len(text.split())

        async def generate(self, gen):
            if gen.grammar is not None:
                yield Piece(gen.grammar.split('"')[1])
                yield Piece("", "stop", 1)
            elif gen.json_schema is not None:
                args = {"city": "Paris"} if "city" in gen.json_schema["properties"] else {"a": 1, "b": 2}
                yield Piece(json.dumps(args))
                yield Piece("", "stop", 1)
            else:
                yield Piece("<|channel|>analysis<|message|>")
                for _ in range(gen.max_tokens - 1):
                    yield Piece(" again")
                yield Piece("", "length", gen.max_tokens)

    return Looping(ModelInfo(architecture="x", chat_format="harmony"), n_ctx=600, slots=1)


@pytest.mark.parametrize("max_tokens", [60, None])
def test_a_forced_call_or_schema_answer_survives_an_analysis_that_never_ends(max_tokens):
    """The served tiny gpt-oss candidate of session 11 looped in its analysis under `required` until
    max_tokens, so no call was forced: the free phase spent every token. The front keeps a reserve
    for the constrained part and cuts the analysis there."""
    from edgeport.serving.app import Settings, create_app

    with asgi_server(create_app(_looping(), Settings("m", 1, 0))) as url:
        c = _client(url)
        for choice in ("required", {"type": "function", "function": {"name": "get_weather"}}):
            r = c.chat.completions.create(model="m", messages=HAIKU, tools=TOOLS, tool_choice=choice,
                                          max_tokens=max_tokens)
            ch = r.choices[0]
            assert ch.finish_reason == "tool_calls", ch
            assert ch.message.model_extra["reasoning_content"].startswith(" again again")
            _valid(ch.message.tool_calls[0])
            assert r.usage.completion_tokens <= (max_tokens or 600)
        fmt = {"type": "json_schema", "json_schema": {"name": "w", "schema": WEATHER, "strict": True}}
        r = c.chat.completions.create(model="m", messages=HAIKU, response_format=fmt, max_tokens=max_tokens)
        assert r.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(r.choices[0].message.content), WEATHER)


@pytest.mark.parametrize("said", [[], ["<|channel|>analysis"], ["<|channel|>analysis<|message|>", "Need"]])
def test_a_call_after_an_analysis_the_reserve_cut_anywhere_is_still_a_call(said):
    """The reserve can cut the free analysis before its first token, inside its header or inside its
    text: what the front writes next still makes a well-formed call."""
    from edgeport.serving.constrained import COMMENTARY, _Free
    from edgeport.serving.engines import Piece

    run = _Free(said=said, end=Piece("", "length", 3), reserved=True)
    assert not run.over([])
    text = "".join(said) + run.lead() + COMMENTARY + ' to=functions.add <|constrain|>json<|message|>{"a": 1}'
    assert parse_calls(text) == [("add", '{"a": 1}')]
    assert text.count("<|start|>assistant") == (1 if said else 0)


def test_the_reserve_is_256_tokens_at_most_half_of_max_tokens():
    """The README's figures for the free analysis's budget under a constraint."""
    from edgeport.serving.constrained import free_budget

    assert [free_budget(n) for n in (1, 2, 60, 512, 513, 4096)] == [1, 1, 30, 256, 257, 3840]
