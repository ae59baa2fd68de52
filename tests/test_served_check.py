"""edgeport/benchmarking/served_check.py judges a candidate's answers through the real server and `openai` client:
scripted engines here (one that answers in well-formed harmony, one whose analysis never ends), so what
is on trial is the judging; build_tools' candidates are what it runs on."""

from __future__ import annotations

import pytest

from edgeport.benchmarking import served_check
from tests.conftest import asgi_server
from tests.test_tools import _looping


def _answering():
    from edgeport.runtimes.base import ModelInfo
    from edgeport.serving.engines import Engine, Piece

    class Answering(Engine):
        name = "scripted"

        async def tokenize(self, text: str) -> list[int]:
            return [1] * len(text.split())

        async def generate(self, gen):
            yield Piece("<|channel|>analysis<|message|>The reasoning effort is low.<|end|>"
                        "<|start|>assistant<|channel|>final<|message|>def f():<|return|>")
            yield Piece("", "stop", 12)

    return Answering(ModelInfo(architecture="x", chat_format="harmony"), n_ctx=600, slots=1)


@pytest.mark.parametrize("engine,broken", [(_answering, 0), (_looping, 32)])
def test_broken_answers_are_those_that_do_not_end_well_formed(engine, broken):
    from edgeport.serving.app import Settings, create_app

    with asgi_server(create_app(engine(), Settings("m", 1, 0))) as url:
        found = served_check.broken_answers(served_check.eval_answers(url))
    assert len(found) == broken, found
    assert all(why.startswith("finish length") for _, _, why in found)
    assert {e for e, _, _ in found} == ({"low", "medium", "high", "tools-low"} if broken else set())


def test_analysis_words_are_the_mean_reasoning_length_per_effort():
    from edgeport.serving.app import Settings, create_app

    with asgi_server(create_app(_answering(), Settings("m", 1, 0))) as url:
        assert served_check.analysis_words(served_check.eval_answers(url)) == {"low": 5.0, "medium": 5.0, "high": 5.0}
