"""ONNX memory: onnxruntime-genai allocates a generator's whole KV cache for max_length up front
(past_present_share_buffer), so runtimes/onnxrt.py sizes max_length by the request (prompt +
max_new_tokens, at most n_ctx: serve's --ctx), never the model's context, and refuses a request
that does not fit. The planner's ONNX KV figure is the same allocation.

Measured on the tiny gpt-oss (int8 genai graph, CPU, fp32 KV; 4 layers x 2 KV heads x 64, context
131,072): a generator at the model's context grew RSS by 512 MiB (its KV, 4 x 2 x 64 x 131072 x 2
x 4 bytes) and took over a second to create; one sized for a 512-token request grows by about its
2 MiB of KV.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgeport import runtimes
from edgeport.planning import kv, memory, model
from edgeport.runtimes.onnxrt import ContextLengthExceeded, genai_kv_bytes
from tests.conftest import GPT_OSS, ROOT

pytestmark = pytest.mark.toolenv
G20 = ROOT / "edgeport" / "planning" / "configs" / "gpt-oss-20b.json"
MIB = 2**20
CTX = 512

# RSS growth of one generator, in a fresh process: `request` streams a request of exactly CTX
# tokens through stream_ids on a runtime with n_ctx=CTX (what serve --ctx 512 does); `model`
# creates the generator at the model's context (what the runtime did before: max_length =
# genai_config's context_length whatever the request).
MEASURE = r"""
import json, sys, time
from edgeport import runtimes

def rss():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) * 1024 for l in f if l.startswith("VmRSS:"))

path, mode, ctx = sys.argv[1], sys.argv[2], int(sys.argv[3])
rt = runtimes.load(path, n_ctx=ctx if mode == "request" else 10**9)
ids = rt.encode("def fibonacci(n):\n    if n < 2:\n        return n\n")[:32]
ban = {{t: -100 for t in rt.info.stop_token_ids}}  # run to max_tokens: the whole max_length is used
list(rt.stream_ids(ids, 4, logit_bias=ban))  # warm-up: loads the genai model, its arenas
out = {{"model_ctx": rt.model_ctx, "n_ctx": rt.n_ctx, "kv_dtype_bytes": rt.kv_dtype_bytes}}
before, t0 = rss(), time.perf_counter()
if mode == "request":
    stream = rt.stream_ids(ids, ctx - len(ids), logit_bias=ban)
    next(stream)  # the generator exists and has taken its first steps
    out["grow"], out["seconds"] = rss() - before, time.perf_counter() - t0
    n = 1 + sum(1 for _ in stream)
    out["max_length"], out["pieces"] = rt.last_max_length, n
else:
    dec = rt._decode(ids, rt.model_ctx - len(ids))  # max_length = the model's context, as before
    next(dec)
    out["grow"], out["seconds"] = rss() - before, time.perf_counter() - t0
    out["max_length"] = rt.last_max_length
    dec.close()
out["kv_bytes"] = rt.kv_bytes(out["max_length"])
print(json.dumps(out))
"""


def _measure(path: Path, mode: str, ctx: int = CTX) -> dict:
    r = subprocess.run([sys.executable, "-c", MEASURE.format(root=str(ROOT)), str(path), mode, str(ctx)],
                       capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def gpt_oss_onnx(exported):
    return exported("onnx-gpt-oss-mxfp4-int8")


def test_a_request_allocates_its_own_length_not_the_models_context(gpt_oss_onnx):
    path, _ = gpt_oss_onnx
    req = _measure(path, "request")
    old = _measure(path, "model")
    assert req["n_ctx"] == CTX and req["max_length"] == CTX  # prompt + max_tokens, = --ctx here
    assert req["kv_bytes"] == 2 * MIB and req["kv_dtype_bytes"] == 4
    # its KV and the per-request working memory: measured +2.1 to +3.9 MiB
    assert req["grow"] <= req["kv_bytes"] + 6 * MIB, req
    # before: max_length = the model's context (131072), all of it allocated and touched
    assert old["max_length"] == old["model_ctx"] == 131072 and old["kv_bytes"] == 512 * MIB
    assert old["grow"] >= 0.95 * old["kv_bytes"], old
    assert old["grow"] >= 50 * max(req["grow"], MIB), (old, req)


def test_a_request_beyond_the_context_is_refused_before_any_work(gpt_oss_onnx):
    path, _ = gpt_oss_onnx
    with runtimes.load(path, n_ctx=64) as rt:
        assert rt.n_ctx == 64
        ids = rt.encode("def add(a, b):\n    return a + b\n" * 4)[:40]
        with pytest.raises(ContextLengthExceeded, match=r"\(40 tokens\) plus max_tokens \(25\) is 65 tokens; "
                                                        r"this runtime's context is 64 tokens") as e:
            rt.stream_ids(ids, 25)  # raised at the call, before a generator exists
        assert (e.value.prompt_tokens, e.value.max_new_tokens, e.value.n_ctx) == (40, 25, 64)
        assert isinstance(e.value, ValueError) and rt.last_max_length is None
        with pytest.raises(ContextLengthExceeded):
            rt.greedy(ids, 25)
        # exactly the context: all of it generated
        ban = {t: -100 for t in rt.info.stop_token_ids}
        from edgeport.runtimes.base import GenerationResult

        res = GenerationResult()
        "".join(rt.stream_ids(ids, 24, logit_bias=ban, result=res))
        assert res.completion_tokens == 24 and rt.last_max_length == 64
        assert len(rt.greedy(ids, 24)) == 24 and rt.last_max_length == 64
    with runtimes.load(path, n_ctx=10**9) as rt:  # at most the model's
        assert rt.n_ctx == rt.model_ctx == 131072
    with runtimes.load(path) as rt:  # by default the model's: requests are still sized by themselves
        assert rt.n_ctx == rt.model_ctx
        "".join(rt.stream_ids(ids, 8))
        assert rt.last_max_length == 48


def _genai_decoder(cfg: dict) -> dict:
    """genai_config.json's decoder sizes, from a Hugging Face config, as the builder writes them."""
    return {"model": {"decoder": {"num_key_value_heads": cfg["num_key_value_heads"], "head_size": cfg["head_dim"],
                                  "num_hidden_layers": cfg["num_hidden_layers"]}}}


def test_the_planner_plans_what_the_runtime_allocates(gpt_oss_onnx):
    path, _ = gpt_oss_onnx
    # the builder's genai_config.json carries the checkpoint's sizes (the mapping used for 20b below)
    real = json.loads((path / "genai_config.json").read_text())
    hf = json.loads((GPT_OSS / "config.json").read_text())
    assert {k: real["model"]["decoder"][k] for k in _genai_decoder(hf)["model"]["decoder"]} \
        == _genai_decoder(hf)["model"]["decoder"]
    assert real["search"]["past_present_share_buffer"] is True  # the whole max_length, up front
    with runtimes.load(path, n_ctx=CTX) as rt:
        assert kv.onnx_kv(model.load(GPT_OSS), CTX, 1, rt.kv_dtype_bytes) == rt.kv_bytes(CTX) == 2 * MIB
    # gpt-oss-20b: 24 layers x 8 KV heads x 64; fp32 KV on CPU graphs, fp16 on CUDA
    cfg20 = json.loads(G20.read_text())
    cpu = memory.plan(str(G20), "laptop-16gb-cpu", target="onnx", context=4096)
    gpu = memory.plan(str(G20), "rtx-4090", target="onnx", context=4096)
    assert cpu.options == {"ep": "cpu", "max_length": 4096} and gpu.options["ep"] == "cuda"
    assert cpu.kv_bytes == genai_kv_bytes(_genai_decoder(cfg20), 4096, 4) == 24 * 8 * 64 * 2 * 4 * 4096 == 384 * MIB
    assert gpu.kv_bytes == genai_kv_bytes(_genai_decoder(cfg20), 4096, 2) == 192 * MIB
    full = memory.plan(str(G20), "h100-80gb", target="onnx", context=131072)
    assert full.kv_bytes == genai_kv_bytes(_genai_decoder(cfg20), 131072, 2)  # fp16: 6 GiB; fp32 would be 12.9 GB
