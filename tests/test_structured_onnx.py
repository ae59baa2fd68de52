"""Over the in-process ONNX runtime (no constrained decoding there yet), through the real `openai` client
against `python -m edgeport.serving`: what needs a grammar is refused with a 400 that says so, never
answered as free text; tools that need none (offered, `auto`) work as over llama-server."""

from __future__ import annotations

import openai
import pytest

from tests.test_serving import _client, _model, server
from tests.test_tools import HAIKU, TOOLS


@pytest.fixture(scope="module", params=[pytest.param("onnx-gpt-oss-mxfp4-int8", marks=pytest.mark.toolenv)],
                ids=["onnx-gpt-oss"])
def served(request, exported):
    path, _ = exported(request.param)
    with server(path, "--ctx", "1024") as url:
        yield url


def test_onnx_refuses_what_it_cannot_constrain_and_serves_tools(served):
    c = _client(served)
    model = _model(c)
    for kw, code in [({"response_format": {"type": "json_object"}}, "unsupported_response_format"),
                     ({"tools": TOOLS, "tool_choice": "required"}, "unsupported_tool_choice")]:
        for stream in (False, True):
            with pytest.raises(openai.BadRequestError) as e:
                c.chat.completions.create(model=model, messages=HAIKU, max_tokens=8, stream=stream, **kw)
            err = e.value.response.json()["error"]
            assert err["code"] == code and "not supported by this engine (in-process onnxruntime" in err["message"]
    # offered tools are rendered into the prompt and the answer parsed as on every engine
    plain = c.chat.completions.create(model=model, messages=HAIKU, max_tokens=4, temperature=0)
    auto = c.chat.completions.create(model=model, messages=HAIKU, tools=TOOLS, max_tokens=4, temperature=0)
    assert auto.usage.prompt_tokens > plain.usage.prompt_tokens
    assert auto.choices[0].finish_reason in ("stop", "length", "tool_calls")
