"""The in-process ONNX runtime keeps the last generation's KV cache when asked (`keep_prefix`, which the
server turns on), so a next phase that continues it (gpt-oss's constrained answer after its free
reasoning, edgeport/serving/constrained.py) appends only its new tokens instead of computing the whole
conversation again. Measured on both bundled models (int8, CPU): the continued logits differ from a
fresh prefill's as much as decoding the same tokens one at a time does: at most 7e-6 on most
continuations, and 0.041 on the tool-trained gpt-oss after CODE + " and then", where decoding one token
at a time from a fresh prefill differs by the same 0.041 (int8 arithmetic at another batching, not the
cache; what the cache's bugs give is far larger)."""

from __future__ import annotations

import numpy as np
import pytest

from edgeport import runtimes

pytestmark = pytest.mark.toolenv
CODE = "def fibonacci(n):\n    if n < 2:\n        return n\n"


@pytest.fixture(scope="module", params=["onnx-gpt-oss-mxfp4-int8", "onnx-llama-int8"], ids=["gpt-oss", "llama"])
def rt(request, exported):
    path, _ = exported(request.param)
    with runtimes.load(path, n_ctx=512) as r:
        yield r


def _first_logits(rt, ids: list[int]) -> np.ndarray:
    d = rt._decode(ids, 8)
    out = next(d)
    d.close()
    return out


def _fresh(rt, ids: list[int]) -> np.ndarray:
    keep, rt.keep_prefix, rt._kept = rt.keep_prefix, False, None
    try:
        return _first_logits(rt, ids)
    finally:
        rt.keep_prefix = keep


def _stepwise(rt, ids: list[int], nxt: list[int]) -> np.ndarray:
    """The last logits of `nxt` computed from a fresh prefill of `ids`, then one token at a time."""
    keep, hits, rt.keep_prefix, rt._kept = rt.keep_prefix, rt.prefix_hits, True, None
    try:
        for k in range(len(ids), len(nxt)):
            _first_logits(rt, nxt[:k])
        return _first_logits(rt, nxt)
    finally:
        rt.keep_prefix, rt._kept, rt.prefix_hits = keep, None, hits


@pytest.mark.parametrize("tail", [" and then", " or", " x = 1"])
def test_a_continuation_reuses_the_kept_cache_and_equals_a_fresh_prefill(rt, tail):
    rt.keep_prefix, hits = True, rt.prefix_hits
    ids = rt.encode(CODE, False)
    out = rt.greedy(ids, 12)  # the 12th token is sampled, never computed: the kept state ends before it
    nxt = ids + out[:11] + rt.encode(tail, False)
    continued = _first_logits(rt, nxt)
    assert rt.prefix_hits == hits + 1
    fresh = _fresh(rt, nxt)
    assert np.abs(continued - fresh).max() <= max(1e-4, 2 * np.abs(_stepwise(rt, ids, nxt) - fresh).max())
    assert continued.argmax() == fresh.argmax()
    # and greedy on from there: the same tokens
    rt.greedy(ids, 12)
    continued_ids = rt.greedy(nxt, 16)
    assert rt.prefix_hits == hits + 2
    rt.keep_prefix = False
    assert continued_ids == rt.greedy(nxt, 16)


def test_only_a_true_continuation_reuses_it(rt):
    rt.keep_prefix = True
    ids = rt.encode(CODE, False)
    out = rt.greedy(ids, 12)
    hits = rt.prefix_hits
    changed = [*ids[:-1], (ids[-1] + 1) % 200, *out[:11], out[0]]  # one token of the prompt differs
    got = _first_logits(rt, changed)
    assert rt.prefix_hits == hits
    assert np.array_equal(got, _fresh(rt, changed))  # computed from nothing: bit-identical to a fresh one
    rt.greedy(ids, 12)
    assert _first_logits(rt, ids[:5]) is not None and rt.prefix_hits == hits  # a prefix of it: not a continuation
    rt.greedy(ids, 12)  # continues ids[:5]: reused
    assert rt.prefix_hits == hits + 1
    rt.keep_prefix = False
    _first_logits(rt, ids + out[:11] + [out[0]])
    assert rt.prefix_hits == hits + 1  # off (parity's and bench's default): never reused


def test_a_continuation_longer_than_the_kept_allocation_starts_fresh(rt):
    if not (rt.dir / "genai_config.json").is_file():
        pytest.skip("a plain session's past grows as needed")
    rt.keep_prefix = True
    ids = rt.encode(CODE, False)
    list(rt.stream_ids(ids, 4))
    cap = rt._kept.capacity
    assert cap == len(ids) + 4 + 32  # the request plus HEADROOM for the front's header
    hits = rt.prefix_hits
    seq = rt._kept.seq
    d = rt._decode([*seq, seq[-1]], cap - len(seq))  # needs more than was allocated
    next(d)
    d.close()
    assert rt.prefix_hits == hits and rt.last_max_length == min(cap + 1 + 32, rt.n_ctx)


def test_the_servers_constrained_answer_continues_its_reasoning(exported):
    """harmony_json over the ONNX engine: the answer's phase (the reasoning, the header the front writes,
    then the schema) is a continuation of the free phase, so it reuses its cache."""
    import asyncio

    from edgeport.core.harmony import render_harmony_own
    from edgeport.serving.constrained import harmony_json
    from edgeport.serving.engines import Generation, open_engine

    path, _ = exported("onnx-gpt-oss-mxfp4-int8")

    async def run() -> tuple[str, int]:
        engine = open_engine(path, n_ctx=1024, slots=None)
        try:
            ids = await engine.tokenize(render_harmony_own([{"role": "user", "content": "List some numbers."}],
                                                           "low", None, None))
            gen = Generation(ids, 64, temperature=0.0, json_schema={"type": "array", "items": {"type": "integer"}})
            text = "".join([p.text async for p in harmony_json(engine, gen)])
            return text, engine.rt.prefix_hits
        finally:
            await engine.close()

    text, hits = asyncio.run(run())
    assert "<|channel|>final<|message|>[" in text
    assert hits == 1
