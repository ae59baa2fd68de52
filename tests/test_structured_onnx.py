"""Structured outputs and forced tool calls over the in-process ONNX runtime, enforced by an llguidance
token mask in the runtime's own sampling loop (edgeport/serving/guidance.py), held to the same tests as
llama-server (tests/test_structured.py, tests/test_tools.py) through the real `openai` client against
`python -m edgeport.serving`, on the bundled tiny models (too weak to write schema-valid JSON by chance).

Per model and run: 13 strict `json_schema` answers validated with `jsonschema` (3 prompts at temperature
0, 10 seeds at temperature 1), 3 `json_object` answers, 5 Responses API `text.format` answers; on gpt-oss
21 forced calls (required and each named tool, temperature 0 and 6 seeds at 1), the Responses API's items
and forced call, and LangChain's forced call round trip."""

from __future__ import annotations

import openai
import pytest

from tests import test_responses as responses
from tests import test_structured as structured
from tests import test_tool_model as tool_model
from tests import test_tools as tools
from tests.test_serving import _client, _model, server


@pytest.fixture(scope="module", params=[pytest.param("onnx-gpt-oss-mxfp4-int8", marks=pytest.mark.toolenv),
                                        pytest.param("onnx-llama-int8", marks=pytest.mark.toolenv)],
                ids=["onnx-gpt-oss", "onnx-llama"])
def served(request, exported):
    path, manifest = exported(request.param)
    with server(path, "--ctx", "1024") as url:
        yield url, manifest["model"]["chat_format"] == "harmony"


def test_every_answer_validates_at_temperature_0_and_1(served):
    structured.test_every_answer_validates_at_temperature_0_and_1(served)


def test_streamed_answer_is_the_same_and_validates(served):
    structured.test_streamed_answer_is_the_same_and_validates(served)


def test_json_object_is_an_object(served):
    structured.test_json_object_is_an_object(served)


def test_a_truncated_answer_says_length(served):
    structured.test_a_truncated_answer_says_length(served)


@pytest.mark.parametrize("schema,code,words", [
    ({"type": "object", "properties": {"x": {"type": "string", "pattern": "^a+$"}}}, "unsupported_schema", "pattern"),
    ({"type": "array", "uniqueItems": True}, "unsupported_schema", "uniqueItems"),
    ({"type": 5}, "invalid_json_schema", "type"),
    ({"type": "integer", "minimum": 5, "maximum": 1}, "unsupported_schema", "Unsatisfiable"),  # llguidance's own
])
def test_a_schema_that_cannot_be_enforced_is_a_400(served, schema, code, words):
    """The same decisions as over llama-server (constrained.check_schema), then llguidance's compiler, in
    OpenAI's error shape, before any stream starts."""
    structured.test_a_schema_that_cannot_be_enforced_is_a_400(served, schema, code, words)


@pytest.mark.parametrize("choice", ["required", "add", "get_weather"])
def test_a_forced_call_is_always_made_and_valid(served, choice):
    url, harmony = served
    if not harmony:  # tools are rendered for harmony models only: a 400 on every engine
        with pytest.raises(openai.BadRequestError) as e:
            c = _client(url)
            c.chat.completions.create(model=_model(c), messages=tools.HAIKU, tools=tools.TOOLS, tool_choice="required")
        assert e.value.response.json()["error"]["code"] == "unsupported_tools"
        return
    tools.test_a_forced_call_is_always_made_and_valid(url, choice)


def test_streamed_call_deltas_reassemble_to_the_same_call(served):
    url, harmony = served
    if harmony:
        tools.test_streamed_call_deltas_reassemble_to_the_same_call(url)


@pytest.mark.parametrize("what", ["call", "schema"])
def test_harmony_markers_cannot_enter_a_constrained_string(served, what):
    url, harmony = served
    if harmony:
        tools.test_harmony_markers_cannot_enter_a_constrained_string(url, what)


def test_the_responses_api(served):
    """POST /v1/responses over ONNX: the chat completion in items (streamed and not), a forced call, its
    output under previous_response_id, and text.format enforced, as over llama-server."""
    url, harmony = served
    if harmony:
        responses.test_a_response_is_the_chat_completion_in_items(url)
        responses.test_a_forced_call_its_output_and_previous_response_id(url)
    responses.test_text_format_is_enforced(url)


def test_langchain_forced_call_round_trips(served):
    url, harmony = served
    if harmony:
        tool_model.test_langchain_forced_call_round_trips_through_an_agent_loop(url)


def test_without_llguidance_the_engine_says_what_to_install(monkeypatch):
    """An install without llguidance refuses (no free-text fallback) and names the extra that has it."""
    from edgeport.runtimes.base import ModelInfo
    from edgeport.serving import guidance
    from edgeport.serving.engines import RuntimeEngine

    class Tok:
        def get_vocab_size(self, with_added_tokens: bool) -> int:
            return 8

        def to_str(self) -> str:
            return "{}"

    class Runtime:
        name, tok = "onnxruntime", Tok()
        info = ModelInfo(architecture="x", chat_format="harmony", stop_token_ids=[1])

        def detokenize(self, ids) -> str:
            return ""

    monkeypatch.setattr(guidance, "available", lambda: False)
    engine = RuntimeEngine(Runtime(), n_ctx=64)
    assert not engine.constrains
    for param in ("response_format", "tool_choice"):
        err = engine.constraint_error(param).body()["error"]
        assert err["code"] == f"unsupported_{param}" and "pip install 'edgeport[onnx]'" in err["message"]


def test_offered_tools_are_rendered_and_parsed(served):
    """Tools that need no constraint (offered, `auto`) work as over llama-server."""
    url, harmony = served
    if not harmony:
        return
    c = _client(url)
    model = _model(c)
    plain = c.chat.completions.create(model=model, messages=tools.HAIKU, max_tokens=4, temperature=0)
    auto = c.chat.completions.create(model=model, messages=tools.HAIKU, tools=tools.TOOLS, max_tokens=4,
                                     temperature=0)
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens
    assert auto.choices[0].finish_reason in ("stop", "length", "tool_calls")


@pytest.mark.toolenv
@pytest.mark.parametrize("case", ["onnx-gpt-oss-mxfp4-int8", "onnx-llama-int8"])
def test_masking_only_refused_choices_gives_the_full_masks_answer(exported, case):
    """The runtime's loop computes the mask only when the model's own greedy choice is refused
    (runtimes/base.constrained_sample): the answer must be the one a mask at every step gives."""
    import json

    from edgeport import runtimes
    from edgeport.runtimes.base import GenerationResult
    from edgeport.serving.guidance import Guide, TokenMask

    class Counted(TokenMask):
        applied = 0

        def apply(self, logits):
            self.applied += 1
            return super().apply(logits)

    class EveryStep(Counted):
        def allows(self, token: int) -> bool:
            return False

    path, _ = exported(case)
    rt = runtimes.load(path, n_ctx=512)
    guide = Guide(rt.tok.to_str(), rt.tok.get_vocab_size(with_added_tokens=True), rt.info.stop_token_ids)
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 12},
                                               "n": {"type": "integer", "minimum": 0, "maximum": 99}},
              "required": ["name", "n"],
              "additionalProperties": False}
    ids = rt.encode("Give a name and a number.", add_bos=None)
    fast, full = (Counted(guide, guide.mask(schema, None).matcher), EveryStep(guide, guide.mask(schema, None).matcher))
    done = GenerationResult()
    text = {c: "".join(rt.stream_ids(ids, 192, 0.0, 1.0, 0, (), constraint=c, result=done)) for c in (fast, full)}
    assert text[fast] == text[full], text
    assert done.finish_reason == "stop" and set(json.loads(text[fast])) == {"name", "n"}, text[fast]
    assert fast.applied < full.applied  # masks computed: only where the model was refused
