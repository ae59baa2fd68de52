"""Structured outputs (`response_format`) enforced by constrained decoding, through the real `openai`
client against `python -m edgeport.serving` over llama-server, on the bundled tiny models: too weak
to write schema-valid JSON by chance, so every answer validating shows the grammar is real."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import jsonschema
import openai
import pytest

from edgeport.core.harmony import MARKERS
from tests.conftest import asgi_server
from tests.test_serving import _client, _model, server

REVIEW = {
    "type": "object",
    "properties": {
        "risk_level": {"type": "string", "enum": ["low", "medium", "high"]},
        "issue_summary": {"type": "string", "maxLength": 24},
        "score": {"type": "integer", "minimum": 0, "maximum": 10},
        "flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 2},
    },
    "required": ["risk_level", "issue_summary", "score", "flags"],
    "additionalProperties": False,
}
FORMAT = {"type": "json_schema", "json_schema": {"name": "review", "schema": REVIEW, "strict": True}}
PROMPTS = ["Review this contract clause: the supplier may end the deal at any time.", "def parse_args(argv):",
           "Hello!"]
SAMPLES = 10  # at temperature 1, one seed each


@pytest.fixture(scope="module", params=[pytest.param("cpu-gpt-oss", marks=pytest.mark.slow),
                                        pytest.param("cpu-llama", marks=pytest.mark.slow)],
                ids=["gguf-gpt-oss", "gguf-llama"])
def served(request, exported):
    path, manifest = exported(request.param)
    with server(path, "--ctx", "1024", "--parallel", "4") as url:
        yield url, manifest["model"]["chat_format"] == "harmony"


def _ask(c, model: str, prompt: str, **kw):
    return c.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                     response_format=FORMAT, **{"max_tokens": 800, **kw})


def test_every_answer_validates_at_temperature_0_and_1(served):
    url, harmony = served
    c = _client(url)
    model = _model(c)
    jobs = [dict(prompt=p, temperature=0) for p in PROMPTS]
    jobs += [dict(prompt=PROMPTS[i % len(PROMPTS)], temperature=1, seed=i) for i in range(SAMPLES)]
    with ThreadPoolExecutor(4) as pool:  # the server's 4 slots
        answers = list(pool.map(lambda j: _ask(c, model, j.pop("prompt"), **j), jobs))
    valid, reasoned = 0, 0
    for r in answers:
        choice = r.choices[0]
        assert choice.finish_reason == "stop", choice  # 800 tokens: room for the JSON to close
        jsonschema.validate(json.loads(choice.message.content), REVIEW)
        valid += 1
        reasoned += bool((choice.message.model_extra or {}).get("reasoning_content"))
        assert not any(m in choice.message.content for m in MARKERS)
    assert valid == len(jobs) == len(PROMPTS) + SAMPLES
    if harmony:  # the analysis ran free before the constrained answer (the model may skip it, rarely)
        assert reasoned >= len(PROMPTS)


def test_streamed_answer_is_the_same_and_validates(served):
    url, _ = served
    c = _client(url)
    model = _model(c)
    whole = _ask(c, model, PROMPTS[0], temperature=0)
    content, reasoning, finish, usage = "", "", None, None
    for ch in _ask(c, model, PROMPTS[0], temperature=0, stream=True, stream_options={"include_usage": True}):
        usage = ch.usage or usage
        for choice in ch.choices:
            content += choice.delta.content or ""
            reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
            finish = choice.finish_reason or finish
    assert content == whole.choices[0].message.content and finish == "stop"
    assert reasoning == ((whole.choices[0].message.model_extra or {}).get("reasoning_content") or "")
    assert usage.completion_tokens == whole.usage.completion_tokens
    jsonschema.validate(json.loads(content), REVIEW)


def test_json_object_is_an_object(served):
    url, _ = served
    c = _client(url)
    model = _model(c)
    for seed in range(3):
        r = c.chat.completions.create(model=model, messages=[{"role": "user", "content": PROMPTS[seed]}],
                                      max_tokens=400, temperature=1, seed=seed, response_format={"type": "json_object"})
        if r.choices[0].finish_reason == "stop":  # an open-ended object may not close in time: then "length"
            assert isinstance(json.loads(r.choices[0].message.content), dict)
        else:
            assert r.choices[0].finish_reason == "length"


def test_a_truncated_answer_says_length(served):
    url, harmony = served
    c = _client(url)
    r = _ask(c, _model(c), PROMPTS[0], temperature=0, max_tokens=30 if harmony else 6)
    assert r.choices[0].finish_reason == "length"
    with pytest.raises(json.JSONDecodeError):
        json.loads(r.choices[0].message.content)


@pytest.mark.parametrize("schema,code,words", [
    ({"type": 5}, "invalid_json_schema", "type"),
    ([1, 2], "invalid_json_schema", "JSON object"),
    ({"type": "object", "properties": {"x": {"type": "string", "pattern": "^a+$"}}}, "unsupported_schema", "pattern"),
    ({"type": "number", "minimum": 1}, "unsupported_schema", "minimum"),
    ({"not": {"type": "string"}}, "unsupported_schema", "'not'"),
    ({"type": "array", "uniqueItems": True}, "unsupported_schema", "uniqueItems"),
    ({"oneOf": [{"type": "string"}, {"type": "integer"}]}, "unsupported_schema", "oneOf"),
    ({"type": "object", "required": ["a"]}, "unsupported_schema", "not in properties"),
    ({"$ref": "#/$defs/missing"}, "invalid_json_schema", "points at nothing"),
])
def test_a_schema_that_cannot_be_enforced_is_a_400(served, schema, code, words):
    url, _ = served
    c = _client(url)
    fmt = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
    for stream in (False, True):  # refused before any stream starts
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model=_model(c), messages=[{"role": "user", "content": "hi"}], max_tokens=8,
                                      response_format=fmt, stream=stream)
        err = e.value.response.json()["error"]
        assert set(err) == {"message", "type", "param", "code"}
        assert err["code"] == code and err["param"] == "response_format.json_schema.schema"
        assert words in err["message"], err


def test_an_engine_without_constraints_refuses_response_format():
    """An engine without constrained decoding (vLLM's is not wired up yet) says so instead of answering free
    text."""
    from edgeport.runtimes.base import ModelInfo
    from edgeport.serving.app import Settings, create_app
    from edgeport.serving.engines import Engine, Piece

    class Free(Engine):
        name = "vllm"

        async def tokenize(self, text: str) -> list[int]:
            return [1] * len(text.split())

        async def generate(self, gen):
            yield Piece("not json", "stop", 1)

    engine = Free(ModelInfo(architecture="llama", chat_format="template", chat_template="{{ messages[0].content }}"),
                  n_ctx=256, slots=1)
    with asgi_server(create_app(engine, Settings("m", 1, 0))) as url:
        c = _client(url)
        with pytest.raises(openai.BadRequestError) as e:
            c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}],
                                      response_format={"type": "json_object"})
        err = e.value.response.json()["error"]
        assert err["code"] == "unsupported_response_format" and "not supported by this engine" in err["message"]
        # without response_format the same engine answers
        assert c.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}]).choices


@pytest.mark.slow
def test_a_client_gone_mid_answer_frees_the_engine(exported):
    """The constrained answer is a second engine request: it too stops when the client goes."""
    import httpx

    from tests.test_serving import _wait_idle

    path, manifest = exported("cpu-gpt-oss")  # one slot, no queue: the next request needs the slot back
    with server(path, "--parallel", "1", "--queue", "0", "--ctx", "8192") as url:
        c = _client(url)
        endless = {"type": "array", "items": {"type": "integer"}}  # no end unless the model closes it
        no_stop = {str(t): -100 for t in manifest["model"]["stop_token_ids"]}
        body = {"model": _model(c), "messages": [{"role": "user", "content": "Numbers."}], "max_tokens": 8000,
                "stream": True, "logit_bias": no_stop,
                "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": endless}}}
        with httpx.Client(timeout=120) as h, h.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if '"content":"[' in line.replace(" ", ""):  # inside the constrained answer
                    break
        _wait_idle(url)
        r = c.chat.completions.create(model=_model(c), messages=[{"role": "user", "content": "x"}], max_tokens=4,
                                      timeout=5)
        assert r.choices[0].message is not None
