"""The runtime interface over transformers and llama.cpp."""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from edgeport import runtimes
from edgeport.core.errors import RuntimeUnavailable
from edgeport.core.llama_log import LlamaLog, model_params
from edgeport.runtimes.llamacpp import LlamaCppRuntime
from edgeport.runtimes.reference import ReferenceRuntime
from tests.conftest import ROOT, gguf_of

EVAL = [p["text"] for p in json.loads((ROOT / "edgeport" / "parity" / "evalset.json").read_text())["prompts"]]


@pytest.fixture(scope="module", params=["gpt-oss", "llama"])
def pair(request, gpt_oss_dir, llama_dir, gguf_dir):
    d = gpt_oss_dir if request.param == "gpt-oss" else llama_dir
    ref = ReferenceRuntime(d)
    art = LlamaCppRuntime(gguf_of(d, gguf_dir), ref.info)
    yield ref, art
    art.close()


def test_llama_cpp_tokenizes_like_the_hf_tokenizer(pair):
    ref, art = pair
    for text in [*EVAL, "<|start|>user<|message|>héllo wörld 12345 <|end|>", "  x\n\n\ty'll "]:
        assert art.tokenize(text) == ref.tokenize(text)
        assert art.detokenize(art.tokenize(text)) == text


def test_greedy_generation_matches_between_runtimes(pair):
    ref, art = pair
    prompt = "def parse(self, text):\n    "
    a = ref.generate(prompt, max_new_tokens=24)
    b = art.generate(prompt, max_new_tokens=24)
    assert a == b and len(a) > 10


def test_stream_concatenates_to_generate_and_stops(pair):
    _, art = pair
    prompt = "import os\nimport "
    full = art.generate(prompt, max_new_tokens=20)
    assert "".join(art.stream(prompt, max_new_tokens=20)) == full
    cut = full[3:6]
    stopped = art.generate(prompt, max_new_tokens=20, stop=[cut])
    assert stopped == full[: full.index(cut)]


def test_sampling_is_seeded(pair):
    _, art = pair
    a = art.generate("class ", max_new_tokens=12, temperature=1.0, seed=7)
    b = art.generate("class ", max_new_tokens=12, temperature=1.0, seed=7)
    c = art.generate("class ", max_new_tokens=12, temperature=1.0, seed=8)
    assert a == b and a != c


def test_chat_prompt_uses_the_model_format(pair):
    ref, _ = pair
    text = ref.format_prompt([{"role": "user", "content": "hi"}], reasoning_effort="deep")
    if ref.info.chat_format == "harmony":
        assert "Reasoning: high" in text and text.endswith("<|start|>assistant")
    else:
        assert text.startswith("<|begin_of_text|><|start_header_id|>user")


def test_logits_shape_and_agreement(pair):
    ref, art = pair
    ids = ref.encode(EVAL[0])
    a, b = ref.logits(ids), art.logits(ids)
    assert a.shape == b.shape == (len(ids), 1024) and a.dtype == b.dtype == np.float32
    assert (a.argmax(-1) == b.argmax(-1)).all()


def test_scoring_equals_llama_eval_on_one_loaded_model(pair, monkeypatch):
    """Scoring reads each batch's logits from llama.cpp's output buffer on a second context of
    the same loaded model: the same numbers as Llama.eval's own `scores` in one 512-token batch
    (the prompt longer than the sliding window, and than a scoring batch made small here), in
    blocks that add up to them, and no second load of the weights."""
    ref, art = pair
    ids = (ref.encode(EVAL[0]) * 40)[:300]
    monkeypatch.setattr(art, "_scorer", None)
    loads = []
    monkeypatch.setattr(art.lc, "Llama", lambda *a, **kw: loads.append(kw))  # a second load would fail here
    monkeypatch.setattr(art, "_scoring_rows", lambda: 64)
    got = art.logits(ids)
    blocks = list(art.logit_blocks(ids, 128))
    monkeypatch.undo()
    assert loads == [] and art._scorer is not None
    with model_params(art.lc, art.extra_bufts), LlamaLog():
        whole = art.lc.Llama(model_path=str(art.path), n_ctx=512, n_batch=512, n_ubatch=512, logits_all=True,
                             verbose=False)
    whole.eval(ids)
    want = np.array(whole.scores[:len(ids)])
    whole.close()
    assert np.array_equal(got, want)
    assert [len(b) for b in blocks] == [64] * 4 + [44] and np.array_equal(np.concatenate(blocks), want)


def test_load_picks_runtime_from_path(gpt_oss_dir, gguf_dir, tmp_path):
    with runtimes.load(gguf_of(gpt_oss_dir, gguf_dir)) as rt:
        assert rt.name == "llama.cpp" and rt.info.architecture == "gpt-oss"
    with pytest.raises(RuntimeUnavailable, match="not an edgeport artifact"):
        runtimes.load(tmp_path)


def test_missing_llama_cpp_is_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "llama_cpp", None)
    with pytest.raises(RuntimeUnavailable, match="llama-cpp-python is not installed"):
        LlamaCppRuntime(tmp_path / "x.gguf")


def test_q4_k_does_not_crash_on_amx_cpus(gpt_oss_dir, gguf_dir, tmp_path):
    """llama.cpp's AMX path segfaults on Q4_K matmuls (llama.cpp#20824); the runtime must
    avoid it. Run in a subprocess so a crash fails this test instead of killing pytest."""
    from edgeport.export.gguf_quantize import quantize

    q = tmp_path / "q.gguf"
    quantize(gguf_of(gpt_oss_dir, gguf_dir), q, "Q4_K_M")
    code = textwrap.dedent(f"""
        from edgeport.core.llama_log import cpu_has_amx, extra_bufts_enabled
        from edgeport.runtimes.llamacpp import LlamaCppRuntime
        rt = LlamaCppRuntime({str(q)!r})
        l = rt.logits(list(range(10, 200)))
        print(cpu_has_amx(), extra_bufts_enabled(), l.shape)
    """)
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"llama.cpp crashed (rc {r.returncode}): {r.stderr[-500:]}"
    amx, extra, shape = r.stdout.split(" ", 2)
    assert shape.strip() == "(190, 1024)"
    if amx == "True":
        assert extra == "False"
