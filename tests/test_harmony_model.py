"""The bundled tiny gpt-oss answers in harmony (edgeport/models/build_harmony.py), served over both engines
through the real `openai` client: its analysis arrives as `reasoning_content`, its answer as
`content`, no harmony marker in either, and the analysis grows with the reasoning effort
(mean length over build_harmony's eval prompts: low < medium < high)."""

from __future__ import annotations

import pytest

from edgeport.core.harmony import MARKERS
from tests.test_serving import _client, _model, server

ENGINES = {
    "gguf": pytest.param("cpu-gpt-oss", marks=pytest.mark.slow),  # Q4_K_M, via llama-server
    "onnx": pytest.param("onnx-gpt-oss-mxfp4-int8", marks=pytest.mark.toolenv),  # in-process
}


@pytest.fixture(scope="module", params=list(ENGINES.values()), ids=list(ENGINES))
def served(request, exported):
    path, _ = exported(request.param)
    with server(path, "--ctx", "1024") as url:
        yield url


def test_reasoning_is_separated_and_follows_the_effort(served):
    from edgeport.models.build_harmony import EVAL_PROMPTS

    c = _client(served)
    model = _model(c)
    words: dict[str, list[int]] = {}
    for effort in ("low", "medium", "high"):
        for msgs in EVAL_PROMPTS:
            r = c.chat.completions.create(model=model, messages=msgs, max_tokens=400, temperature=0,
                                          extra_body={"reasoning_effort": effort})
            m = r.choices[0].message
            reasoning = (m.model_extra or {}).get("reasoning_content")
            assert r.choices[0].finish_reason == "stop", (effort, msgs, reasoning, m.content)
            assert reasoning and m.content, (effort, msgs, reasoning, m.content)
            assert not any(k in reasoning or k in m.content for k in MARKERS), (reasoning, m.content)
            assert (m.model_extra or {}).get("reasoning") == reasoning
            words.setdefault(effort, []).append(len(reasoning.split()))
    mean = {e: sum(n) / len(n) for e, n in words.items()}
    assert mean["low"] < mean["medium"] < mean["high"], words
