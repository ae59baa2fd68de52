"""The streamed reference (one decoder layer in memory at a time) against transformers holding the
whole model (ReferenceRuntime): same logits, same greedy continuations, on every bundled model and
a random-init one, for the eval set's prompts (long ones past the sliding window); and its peak
memory does not grow with the number of layers."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgeport.parity.gate import load_evalset
from tests.conftest import GPT_OSS, ROOT

# float tolerance on logits: max |streamed - transformers| <= RTOL * max(1, max |transformers|)
# (both run transformers' own modules in float32 on the same inputs; measured: 0.0, bit-equal)
RTOL = 1e-4
GREEDY = 16


@pytest.fixture(scope="module")
def random_gpt_oss(tmp_path_factory) -> Path:
    """A random-init gpt-oss with a 32768-row vocabulary (the lm_head takes two float32 chunks)."""
    from edgeport.models.build_random import build

    return build("gpt-oss", tmp_path_factory.mktemp("r") / "random-gpt-oss")


def _eval_ids(rt, max_tokens: int = 512):
    prompts, _ = load_evalset()
    ids = [rt.encode(p["text"])[:max_tokens] for p in prompts]
    return ids, [i for i, p in zip(ids, prompts, strict=True) if p["kind"] == "short"]


@pytest.mark.parametrize("model", ["tiny-gpt-oss", "tiny-gpt-oss-mxfp4", "tiny-llama", "random-gpt-oss"])
def test_streamed_equals_transformers(model, request):
    from edgeport.runtimes.reference import ReferenceRuntime
    from edgeport.runtimes.streamed import StreamedReferenceRuntime

    root = {"tiny-gpt-oss": lambda: GPT_OSS, "tiny-gpt-oss-mxfp4": lambda: request.getfixturevalue("mxfp4_dir"),
            "tiny-llama": lambda: request.getfixturevalue("llama_dir"),
            "random-gpt-oss": lambda: request.getfixturevalue("random_gpt_oss")}[model]()
    ref = ReferenceRuntime(root)
    st = StreamedReferenceRuntime(root)
    ids, short = _eval_ids(ref)
    window = getattr(ref.model.config, "sliding_window", None)
    if window:
        assert max(map(len, ids)) > window, "no eval prompt reaches past the sliding window"
    st.prepare(ids, greedy=short, greedy_tokens=GREEDY)
    n_layers = ref.model.config.num_hidden_layers
    assert st.layers_run == n_layers * GREEDY  # one pass for every prompt, one per further greedy token
    for x in ids:
        want, got = ref.logits(x), st.logits(x)
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.isfinite(got).all()
        diff = float(np.abs(got - want).max())
        assert diff <= RTOL * max(1.0, float(np.abs(want).max())), f"{model}, {len(x)} tokens: max |diff| {diff}"
    for x in short:
        assert st.greedy(x, GREEDY) == ref.greedy(x, GREEDY)
    # unprepared calls (a prompt the pass did not see) and streaming agree too
    x = ids[0][:-1]
    np.testing.assert_allclose(st.logits(x), ref.logits(x), rtol=0, atol=RTOL * 30)
    assert st.greedy(x, 4) == ref.greedy(x, 4)
    assert st.generate("Hello", max_new_tokens=4) == ref.generate("Hello", max_new_tokens=4)


# --- peak memory flat in layers -------------------------------------------------------------------
WIDE = {"hidden_size": 512, "intermediate_size": 512, "num_local_experts": 32, "num_experts_per_tok": 4,
        "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 64}


def _wide_mxfp4(out: Path, n_layers: int) -> Path:
    """A random-init gpt-oss (the tiny one's tokenizer and attention pattern, wider experts) with
    `n_layers` layers, its experts stored MXFP4 as openai/gpt-oss-20b ships them."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from edgeport.core.source import Source
    from edgeport.export.hf_mxfp4 import write_mxfp4_checkpoint
    from edgeport.models.build_random import TOKENIZER_FILES

    cfg = json.loads((GPT_OSS / "config.json").read_text())
    cfg |= WIDE | {"num_hidden_layers": n_layers,
                   "layer_types": ["sliding_attention", "full_attention"] * (n_layers // 2)}
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**cfg), dtype=torch.bfloat16)
    bf16 = out.with_name(out.name + "-bf16")
    model.save_pretrained(bf16, safe_serialization=True)
    for name in TOKENIZER_FILES:
        if (GPT_OSS / name).is_file():
            (bf16 / name).write_bytes((GPT_OSS / name).read_bytes())
    write_mxfp4_checkpoint(Source.open(bf16), out)
    return out


CHILD = textwrap.dedent("""
    import json, resource, sys
    from edgeport.parity.gate import load_evalset
    from edgeport.runtimes.streamed import StreamedReferenceRuntime
    rt = StreamedReferenceRuntime(sys.argv[1])
    prompts, _ = load_evalset()
    ids = [rt.encode(p["text"])[:512] for p in prompts]
    rt.prepare(ids, greedy=[i for i, p in zip(ids, prompts) if p["kind"] == "short"], greedy_tokens=4)
    for x in ids:
        rt.logits(x)
    print(json.dumps({"peak_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                      "layers_run": rt.layers_run}))
""")


def _peak_kib(model: Path) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, str(model)], capture_output=True, text=True, cwd=ROOT,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_kib"]


def test_streamed_peak_memory_flat_in_layers(tmp_path):
    """2 -> 6 layers of 32 MXFP4 experts (each layer ~97 MiB dequantized in float32; the whole-model
    reference grows by ~390 MiB): the streamed reference's peak RSS grows by less than one layer."""
    c = WIDE
    layer_mib = 4 * c["num_local_experts"] * 3 * c["hidden_size"] * c["intermediate_size"] / 2**20
    peaks = {n: _peak_kib(_wide_mxfp4(tmp_path / f"wide-{n}", n)) for n in (2, 6)}
    growth_mib = (peaks[6] - peaks[2]) / 1024
    print(f"peak RSS 2 layers {peaks[2] / 1024:.0f} MiB, 6 layers {peaks[6] / 1024:.0f} MiB, "
          f"growth {growth_mib:.0f} MiB; one layer's experts dequantized {layer_mib:.0f} MiB")
    assert growth_mib < layer_mib, (peaks, layer_mib)


# --- the gate scores the candidate's greedy continuation teacher-forced ---------------------------
class _Jittered:
    """A candidate that disagrees now and then: the wrapped runtime's logits plus seeded noise fixed
    per token sequence, and a greedy decode over those same logits."""

    def __init__(self, rt, scale: float):
        self.rt, self.name, self.scale = rt, "jittered", scale

    def encode(self, text, add_bos=None):
        return self.rt.encode(text, add_bos)

    def logits(self, ids):
        out = self.rt.logits(ids)
        rng = np.random.default_rng(abs(hash(tuple(int(t) for t in ids))) % 2**32)
        return out + rng.normal(0.0, self.scale, out.shape).astype(np.float32)

    def greedy(self, ids, n):
        out: list[int] = []
        for _ in range(n):
            out.append(int(self.logits(list(ids) + out)[-1].argmax()))
        return out


@pytest.mark.parametrize("model", ["tiny-gpt-oss", "tiny-llama"])
def test_gate_greedy_figures_equal_with_teacher_forcing(model, request):
    """The streamed reference never decodes greedily in the gate (one more pass over every layer
    per token): it scores the candidate's continuation teacher-forced. The greedy figures must be
    exactly those of the whole-model reference decoding its own greedy tokens."""
    from edgeport.parity import gate
    from edgeport.runtimes.reference import ReferenceRuntime
    from edgeport.runtimes.streamed import StreamedReferenceRuntime

    root = GPT_OSS if model == "tiny-gpt-oss" else request.getfixturevalue("llama_dir")
    whole = ReferenceRuntime(root)
    cand = _Jittered(ReferenceRuntime(root), scale=0.1)
    streamed = StreamedReferenceRuntime(root)
    a = gate.run({"reference": whole, "unquantized": cand}, {}, greedy_tokens=GREEDY)
    b = gate.run({"reference": streamed, "unquantized": cand}, {}, greedy_tokens=GREEDY)
    sa, sb = a["stages"]["fidelity"]["summary"], b["stages"]["fidelity"]["summary"]
    assert 0 < sa["greedy_match_mean"] < GREEDY, "the candidate must sometimes disagree, or this shows nothing"
    assert (sb["greedy_match_mean"], sb["greedy_match_min"]) == (sa["greedy_match_mean"], sa["greedy_match_min"])
    assert sb["mean_kl"] == pytest.approx(sa["mean_kl"], rel=1e-4)
    assert streamed.layers_run == streamed.config.num_hidden_layers  # one pass, no greedy passes
    n_experts = getattr(streamed.config, "num_local_experts", 0)
    # each routed expert dequantized once per layer for all the prompts, not once per prompt
    assert streamed.experts_run <= streamed.config.num_hidden_layers * n_experts, streamed.experts_run


def test_kept_reference_answers_the_next_export(tmp_path):
    """A second gate run on the same checkpoint (another quantization, a re-run) takes every
    sequence the first one scored from the reference cache: no pass over the layers, the same
    figures to the bit; a sequence not kept yet is computed and kept, and a cache file that was
    damaged is computed again, never read as results."""
    from edgeport.parity import gate
    from edgeport.runtimes.reference import ReferenceRuntime
    from edgeport.runtimes.streamed import StreamedReferenceRuntime

    cand = _Jittered(ReferenceRuntime(GPT_OSS), scale=0.1)
    first = StreamedReferenceRuntime(GPT_OSS, cache=tmp_path)
    a = gate.run({"reference": first, "unquantized": cand}, {}, greedy_tokens=GREEDY)
    kept = sorted(tmp_path.glob("*.npy"))
    assert first.cache_hits == 0 and first.layers_run == first.config.num_hidden_layers and kept
    again = StreamedReferenceRuntime(GPT_OSS, cache=tmp_path)
    b = gate.run({"reference": again, "unquantized": cand}, {}, greedy_tokens=GREEDY)
    assert again.layers_run == 0 and again.cache_hits == len(kept)
    assert b["stages"] == a["stages"]
    kept[0].write_bytes(b"not a numpy file")
    other = _Jittered(ReferenceRuntime(GPT_OSS), scale=0.2)  # other continuations: new sequences
    third = StreamedReferenceRuntime(GPT_OSS, cache=tmp_path)
    c = gate.run({"reference": third, "unquantized": other}, {}, greedy_tokens=GREEDY)
    assert third.layers_run == third.config.num_hidden_layers and 0 < third.cache_hits < len(kept)
    fresh = gate.run({"reference": StreamedReferenceRuntime(GPT_OSS), "unquantized": other}, {},
                     greedy_tokens=GREEDY)
    assert c["stages"] == fresh["stages"]


@pytest.mark.slow
def test_whole_export_anonymous_memory_flat_in_layers(tmp_path):
    """`edgeport export --target cpu` with the importance matrix and parity on, 2 -> 6 layers of 32
    MXFP4 experts: the process tree's peak anonymous memory grows by less than one layer's experts
    in float32 (a whole-model reference grows by four). Memory-mapped GGUF pages are file-backed
    (the kernel's to drop) and are reported by the benchmark, not bounded here."""
    from edgeport.benchmarking.scale import run_measured

    c = WIDE
    layer_bytes = 4 * c["num_local_experts"] * 3 * c["hidden_size"] * c["intermediate_size"]
    # llama.cpp as it runs a model too big to copy (core/llama_log.py REPACK_MAX_SHARE): memory-mapped,
    # not repacked into anonymous copies that grow with the model by design for small ones
    env = {**__import__("os").environ, "EDGEPORT_IMATRIX_CACHE": str(tmp_path / "imatrix-cache"),
           "EDGEPORT_LLAMA_EXTRA_BUFTS": "0"}
    peaks = {}
    for n in (2, 6):
        model = _wide_mxfp4(tmp_path / f"wide-{n}", n)
        out = tmp_path / f"artifact-{n}"
        m = run_measured([sys.executable, "-m", "edgeport", "export", "--target", "cpu", "--model", str(model),
                          "--out", str(out), "--keep-failed"], watch=[], env=env, cwd=ROOT,
                         log=tmp_path / f"export-{n}.log")
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["parity"] is not None and manifest["quantization"]["imatrix"]["used"], m.log_tail
        peaks[n] = m.peak_anon_bytes
    growth = peaks[6] - peaks[2]
    print(f"peak anonymous 2 layers {peaks[2] / 2**20:.0f} MiB, 6 layers {peaks[6] / 2**20:.0f} MiB, growth "
          f"{growth / 2**20:.0f} MiB; one layer's experts in float32 {layer_bytes / 2**20:.0f} MiB")
    assert growth < layer_bytes, (peaks, layer_bytes)
