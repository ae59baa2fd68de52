"""The Responses API (`POST /v1/responses`) through the real `openai` client against
`python -m edgeport.serving` over llama-server on the bundled tiny gpt-oss: the same pipeline as chat
completions (the same answer at temperature 0), function calls and their outputs, previous_response_id,
text.format enforced, and its errors in OpenAI's shape."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest

from tests.test_serving import _client, _model, server

WEATHER = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 16}}, "required": ["city"],
           "additionalProperties": False}
TOOLS = [{"type": "function", "name": "get_weather", "description": "The weather in a city.", "parameters": WEATHER}]
ANSWER = {"type": "object", "properties": {"x": {"type": "integer"}, "ok": {"type": "boolean"}},
          "required": ["x", "ok"], "additionalProperties": False}


@pytest.fixture(scope="module", params=[pytest.param("cpu-gpt-oss", marks=pytest.mark.slow)], ids=["gguf-gpt-oss"])
def served(request, exported):
    path, _ = exported(request.param)
    with server(path, "--ctx", "1024", "--parallel", "4") as url:
        yield url


def test_a_response_is_the_chat_completion_in_items(served):
    c = _client(served)
    model = _model(c)
    r = c.responses.create(model=model, input="Hello there", max_output_tokens=200, temperature=0)
    chat = c.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello there"}],
                                     max_tokens=200, temperature=0)
    assert r.status == "completed" and [o.type for o in r.output] == ["reasoning", "message"]
    assert r.output_text == chat.choices[0].message.content
    assert r.output[0].content[0].text == chat.choices[0].message.model_extra["reasoning_content"]
    assert (r.usage.input_tokens, r.usage.output_tokens) == (chat.usage.prompt_tokens, chat.usage.completion_tokens)
    # streamed: the SDK's own event handling assembles the same response
    with c.responses.stream(model=model, input="Hello there", max_output_tokens=200, temperature=0) as s:
        deltas = "".join(e.delta for e in s if e.type == "response.output_text.delta")
        final = s.get_final_response()
    assert deltas == final.output_text == r.output_text
    short = c.responses.create(model=model, input="Hello there", max_output_tokens=5, temperature=0)
    assert short.status == "incomplete" and short.incomplete_details.reason == "max_output_tokens"


def test_a_forced_call_its_output_and_previous_response_id(served):
    c = _client(served)
    model = _model(c)
    r = c.responses.create(model=model, input="Weather in Paris?", tools=TOOLS, tool_choice="required",
                           max_output_tokens=300, temperature=0)
    call = next(o for o in r.output if o.type == "function_call")
    assert call.name == "get_weather" and call.call_id.startswith("call_")
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    with c.responses.stream(model=model, input="Weather in Paris?", tools=TOOLS, tool_choice="required",
                            max_output_tokens=300, temperature=0) as s:
        streamed = next(o for o in s.get_final_response().output if o.type == "function_call")
    assert (streamed.name, streamed.arguments) == (call.name, call.arguments)
    # the call's output, continuing the stored conversation: the prompt is the chat completion's
    nxt = c.responses.create(model=model, previous_response_id=r.id, tools=TOOLS, max_output_tokens=50,
                             input=[{"type": "function_call_output", "call_id": call.call_id, "output": '{"c": 21}'}])
    same = c.chat.completions.create(model=model, tools=[{"type": "function", "function": {
        k: v for k, v in TOOLS[0].items() if k != "type"}}], max_tokens=1, messages=[
        {"role": "user", "content": "Weather in Paris?"},
        {"role": "assistant", "content": None, "tool_calls": [{"id": call.call_id, "type": "function", "function": {
            "name": call.name, "arguments": call.arguments}}]},
        {"role": "tool", "tool_call_id": call.call_id, "content": '{"c": 21}'}])
    assert nxt.usage.input_tokens == same.usage.prompt_tokens and nxt.status in ("completed", "incomplete")


def test_text_format_is_enforced(served):
    c = _client(served)
    model = _model(c)
    fmt = {"format": {"type": "json_schema", "name": "answer", "schema": ANSWER, "strict": True}}
    for seed in range(5):
        r = c.responses.create(model=model, input="Give x.", text=fmt, max_output_tokens=300, temperature=1,
                               extra_body={"seed": seed})
        assert r.status == "completed"
        jsonschema.validate(json.loads(r.output_text), ANSWER)


def test_bad_responses_requests_are_openai_errors(served):
    c = _client(served)
    model = _model(c)
    with pytest.raises(openai.NotFoundError) as e:
        c.responses.create(model=model, input="hi", previous_response_id="resp_nope")
    assert e.value.response.json()["error"]["param"] == "previous_response_id"
    for bad, param in [({"tools": [{"type": "function", "parameters": WEATHER}]}, "tools.0.name"),
                       ({"text": {"format": {"type": "json_schema", "name": "x", "schema": {"type": 5}}}},
                        "text.format.schema"),
                       ({"tools": TOOLS, "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice.name")]:
        with pytest.raises(openai.BadRequestError) as e:
            c.responses.create(model=model, input="hi", **bad)
        err = e.value.response.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["param"] == param, err


def test_a_stored_response_is_retrieved_and_deleted():
    """GET /v1/responses/{id} returns the stored response as it was answered; DELETE forgets it (and its
    conversation for previous_response_id); `store: false` keeps nothing. Any engine: a scripted one."""
    from edgeport.serving.app import Settings, create_app
    from tests.conftest import asgi_server
    from tests.test_tools import _scripted

    engine = _scripted("<|channel|>analysis<|message|>Hm.<|end|><|start|>assistant<|channel|>final<|message|>"
                       "Hello.<|return|>")
    with asgi_server(create_app(engine, Settings("m", 1, 0))) as url:
        c = _client(url)
        r = c.responses.create(model="m", input="hi")
        got = c.responses.retrieve(r.id)
        assert got.model_dump() == r.model_dump() and got.output_text == "Hello."
        assert c.responses.create(model="m", input="again", previous_response_id=r.id).status == "completed"
        c.responses.delete(r.id)
        for call in (lambda: c.responses.retrieve(r.id),
                     lambda: c.responses.create(model="m", input="hi", previous_response_id=r.id)):
            with pytest.raises(openai.NotFoundError):
                call()
        unstored = c.responses.create(model="m", input="hi", store=False)
        with pytest.raises(openai.NotFoundError) as e:
            c.responses.retrieve(unstored.id)
        assert e.value.response.json()["error"]["code"] == "response_not_found"


def test_the_store_is_bounded_and_forgets_oldest_first():
    from edgeport.serving.protocol import APIError
    from edgeport.serving.responses import Store

    s = Store(size=2)
    for i in range(3):
        s.keep(f"r{i}", [{"role": "user", "content": str(i)}], {"id": f"r{i}"})
    with pytest.raises(APIError):
        s.get("r0")
    with pytest.raises(APIError):
        s.history("r0")
    assert s.get("r2") == {"id": "r2"} and len(s.bodies) == len(s.turns) == 2
