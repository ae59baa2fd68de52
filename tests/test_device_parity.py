"""Device parity (`invoke parity --device-output`): what a Jetson's engine returned, judged
against the reference with the profile's [parity.device.*] thresholds, for both kits.

No engine runs here. Device outputs are made from the reference itself (what a perfect device
returns), from the simulated engine, or broken on purpose; the TensorRT-LLM kit's own
device_eval.py runs for real against a stand-in `tensorrt_llm` package whose ModelRunner
returns what v0.12's does, computed by the reference model.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgeport.core import manifest as mf
from edgeport.export import jetson_kit
from edgeport.export.jetson_export import eval_requests
from edgeport.export.pipeline import device_parity, export
from edgeport.parity.device import continuation_match, path_regret
from edgeport.parity.metrics import log_softmax
from edgeport.runtimes.reference import ReferenceRuntime
from edgeport.targets import device_thresholds_for

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def trt_kit(llama_dir, tmp_path_factory) -> Path:
    """The --jetpack 6 TensorRT-LLM kit (no tool environment; simulated parity skipped)."""
    path, _ = export(str(llama_dir), "jetson", tmp_path_factory.mktemp("d") / "jp6", policy={"jetpack": "6"},
                     parity=False)
    return path


@pytest.fixture(scope="module")
def edge_kit(trt_kit, tmp_path_factory) -> Path:
    """An Edge-LLM int8 artifact as device parity reads one: the exporter's input.json (same
    writer, same eval requests) and a manifest naming the edgellm runtime and variant. Its ONNX
    and checkpoint are never read here, so no tensorrt-edgellm tool environment is needed (the
    real export is checked in test_real_edgellm_export_device_parity)."""
    path = tmp_path_factory.mktemp("d") / "edge"
    shutil.copytree(trt_kit, path)
    jetson_kit.write_edgellm_kit(path, {"max_batch_size": 1, "max_input_len": 1024, "max_kv_cache_capacity": 4096},
                                 "orin-agx-64gb", "int8", eval_requests(None, 16))
    m = mf.load(path)
    m["runtime"]["name"] = "edgellm"
    m["quantization"]["variant"] = "edgellm-int8"
    mf.seal(path, m)  # a hand-made artifact: sealed as export would
    return path


@pytest.fixture(scope="module")
def ref(llama_dir):
    with ReferenceRuntime(llama_dir) as r:
        yield r


@pytest.fixture(scope="module")
def trt_good(trt_kit, ref) -> dict:
    """What a perfect TensorRT-LLM device returns: the reference's own greedy ids, context
    argmax and next-token log-probabilities."""
    spec = json.loads((trt_kit / "eval_inputs.json").read_text())
    results = []
    for p in spec["prompts"]:
        ids = p["ids"]
        lp = log_softmax(ref.logits(ids))
        results.append({"id": p["id"], "greedy_ids": ref.greedy(ids, spec["greedy_tokens"]),
                        "argmax": lp.argmax(-1).tolist(),
                        "next_logprob": lp[np.arange(len(ids) - 1), ids[1:]].tolist()})
    return {"schema": "edgeport.device-output/1", "runtime": "tensorrt-llm", "results": results}


@pytest.fixture(scope="module")
def edge_good(edge_kit, ref) -> dict:
    """What a perfect Edge-LLM device returns: the reference's greedy continuations as text."""
    spec = json.loads((edge_kit / "input.json").read_text())
    return {"responses": [{"output_text": ref.detokenize(edge_greedy(ref, r["messages"], spec))}
                          for r in spec["requests"]]}


def edge_greedy(ref, messages: list[dict], spec: dict) -> list[int]:
    return ref.greedy(ref.encode(ref.format_prompt(messages), add_bos=False), spec["max_generate_length"])


def write(tmp_path: Path, name: str, obj: dict | str) -> Path:
    p = tmp_path / name
    p.write_text(obj if isinstance(obj, str) else json.dumps(obj))
    return p


def cli_parity(artifact: Path, device_output: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "invoke", "parity", "--artifact", str(artifact),
                           "--device-output", str(device_output)], cwd=ROOT, capture_output=True, text=True,
                          timeout=600)


def assert_judged_failure(proc: subprocess.CompletedProcess, reason: str) -> None:
    """Exit 1 (a failed verdict, not exit 2 or a crash), no traceback, the reason on one line."""
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out, out
    assert any(reason in line for line in out.splitlines()), out


# --- TensorRT-LLM (--jetpack 6) ----------------------------------------------------------------

def test_trtllm_simulated_engine_output_passes(trt_kit, llama_dir, tmp_path):
    """What an Orin returns to simulation accuracy (W8A16 in torch on the kit's weights) is
    within the device bounds: they are not tighter than the quantization itself."""
    from edgeport.runtimes.reference import model_info_from_hf
    from edgeport.runtimes.simulated import SimulatedRuntime

    spec = json.loads((trt_kit / "eval_inputs.json").read_text())
    sim = SimulatedRuntime(trt_kit / "trtllm_checkpoint", model_info_from_hf(llama_dir), hf_dir=trt_kit / "hf")
    results = []
    for p in spec["prompts"]:
        lp = log_softmax(sim.logits(p["ids"]))
        results.append({"id": p["id"], "greedy_ids": sim.greedy(p["ids"], spec["greedy_tokens"]),
                        "argmax": lp.argmax(-1).tolist(),
                        "next_logprob": lp[np.arange(len(p["ids"]) - 1), p["ids"][1:]].tolist()})
    rep = device_parity(trt_kit, write(tmp_path, "sim.json", {"schema": "edgeport.device-output/1",
                                                             "runtime": "tensorrt-llm", "results": results}))
    assert rep["passed"], rep["failures"]
    assert 0.98 < rep["top1"] < 1 and rep["top1_regret"] < 1e-3


def test_trtllm_off_by_one_argmax_fails_on_regret(trt_kit, trt_good, tmp_path):
    out = copy.deepcopy(trt_good)
    for r in out["results"]:
        r["argmax"] = [(a + 1) % 1024 for a in r["argmax"]]  # the tiny Llama's vocabulary
    rep = device_parity(trt_kit, write(tmp_path, "shift.json", out))
    assert not rep["passed"]
    assert [f for f in rep["failures"] if f.startswith("top1_regret")], rep["failures"]
    assert rep["top1"] == 0 and rep["top1_regret"] > 0.1


def test_trtllm_without_context_logits_fails(trt_kit, trt_good, tmp_path):
    """An engine built with GATHER_CONTEXT_LOGITS=0 gives greedy ids only: nothing to judge
    top-1 and perplexity on, so no verdict can pass."""
    out = copy.deepcopy(trt_good)
    for r in out["results"]:
        del r["argmax"], r["next_logprob"]
    rep = device_parity(trt_kit, write(tmp_path, "nologits.json", out))
    assert not rep["passed"]
    assert len(rep["failures"]) == 1 and "GATHER_CONTEXT_LOGITS=0" in rep["failures"][0]


@pytest.mark.parametrize("breakage, reason", [
    (lambda o: o["results"].pop(), "9 results for 10 prompts"),
    (lambda o: o["results"][0].pop("greedy_ids"), "no 'greedy_ids'"),
    (lambda o: o["results"][0]["argmax"].pop(), "argmax"),
    (lambda o: o["results"][0].update(next_logprob=[0.5] * len(o["results"][0]["next_logprob"])),
     "no log-probabilities"),
    (lambda o: o["results"][0].update(argmax=[10**6] * len(o["results"][0]["argmax"])), "token ids below"),
    (lambda o: o.update(runtime="edgellm"), "comes from edgellm"),
    (lambda o: o.pop("schema"), "schema None"),
])
def test_trtllm_malformed_output_fails_with_its_reason(trt_kit, trt_good, tmp_path, breakage, reason):
    out = copy.deepcopy(trt_good)
    breakage(out)
    rep = device_parity(trt_kit, write(tmp_path, "broken.json", out))
    assert not rep["passed"] and len(rep["failures"]) == 1 and reason in rep["failures"][0], rep["failures"]
    assert "\n" not in rep["failures"][0]


def test_trtllm_garbage_and_truncated_output_exit_1(trt_kit, trt_good, ref, tmp_path):
    """Through the command line: the "zzz" a broken engine might return fails every threshold,
    a truncated copy of a good output fails with one line saying so; neither is a traceback."""
    spec = json.loads((trt_kit / "eval_inputs.json").read_text())
    z = ref.tokenize("zzz")
    garbage = {"schema": "edgeport.device-output/1", "runtime": "tensorrt-llm", "results": [
        {"id": p["id"], "greedy_ids": (z * 16)[:16], "argmax": [z[0]] * len(p["ids"]),
         "next_logprob": [-float(np.log(spec["vocab_size"]))] * (len(p["ids"]) - 1)} for p in spec["prompts"]]}
    proc = cli_parity(trt_kit, write(tmp_path, "zzz.json", garbage))
    assert_judged_failure(proc, "greedy_match_mean")
    rep = json.loads((trt_kit / "device_parity.json").read_text())
    assert not rep["passed"] and {f.split()[0] for f in rep["failures"]} == {
        "top1_regret", "ppl_delta_pct", "greedy_match_mean"}
    good = json.dumps(trt_good)
    assert_judged_failure(cli_parity(trt_kit, write(tmp_path, "cut.json", good[: len(good) // 2])), "not JSON")


# --- TensorRT-LLM kit: device_eval.py against a stand-in ModelRunner ----------------------------

STANDIN_RUNTIME = '''
"""Stand-in for TensorRT-LLM v0.12's tensorrt_llm.runtime.ModelRunner (tests only). Same call
and return shapes as v0.12's python runtime (tensorrt_llm/runtime/model_runner.py): generate()
takes SamplingConfig fields as keyword arguments and, with return_dict, returns output_ids
[batch, beams, max input + new] (prompt first, end_id after a stop) and, only for engines built
with --gather_context_logits, context_logits: one [input length, vocab] tensor per request.
The numbers come from the reference model ($EDGEPORT_STANDIN_MODEL) instead of an engine."""
import json
import os
from pathlib import Path

import torch

from edgeport.runtimes.reference import ReferenceRuntime


class ModelRunner:
    def __init__(self, ref, build):
        self.ref, self.build = ref, build

    @classmethod
    def from_dir(cls, engine_dir, *, max_output_len=None, lora_dir=None, rank=0, **kwargs):
        cfg = json.loads((Path(engine_dir) / "config.json").read_text())
        return cls(ReferenceRuntime(os.environ["EDGEPORT_STANDIN_MODEL"]), cfg["build_config"])

    @property
    def gather_context_logits(self):
        return self.build["gather_context_logits"]

    def generate(self, batch_input_ids, sampling_config=None, **kwargs):
        assert sampling_config is None and kwargs.get("top_k") == 1, "the stand-in runs greedy only"
        new, end_id = kwargs["max_new_tokens"], kwargs["end_id"]
        lengths = [int(x.size(0)) for x in batch_input_ids]
        if max(lengths) > self.build["max_input_len"] or max(lengths) + new > self.build["max_seq_len"]:
            raise RuntimeError("input exceeds the engine's limits")
        output_ids = torch.full((len(lengths), 1, max(lengths) + new), end_id, dtype=torch.int32)
        sequence_lengths = torch.zeros((len(lengths), 1), dtype=torch.int32)
        context_logits = []
        for b, x in enumerate(batch_input_ids):
            ids = x.to(torch.int32).tolist()
            gen = []
            for t in self.ref.greedy(ids, new):
                gen.append(t)
                if t == end_id:
                    break
            output_ids[b, 0, : len(ids) + len(gen)] = torch.tensor(ids + gen, dtype=torch.int32)
            sequence_lengths[b, 0] = len(ids) + len(gen)
            if self.gather_context_logits:
                context_logits.append(torch.from_numpy(self.ref.logits(ids)))
        if not kwargs.get("return_dict"):
            return output_ids
        out = {"output_ids": output_ids}
        if kwargs.get("output_sequence_lengths"):
            out["sequence_lengths"] = sequence_lengths
        if self.gather_context_logits:
            out["context_logits"] = context_logits
        return out
'''


def run_kit(artifact: Path, llama_dir: Path, tmp_path: Path, gather: bool) -> Path:
    """The kit's own run.sh -> device_eval.py, with `python3` the test's interpreter and the
    stand-in package first on PYTHONPATH; the engine's config.json as trtllm-build writes it."""
    pkg = tmp_path / "standin" / "tensorrt_llm"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text('"""Stand-in for TensorRT-LLM v0.12 (tests only)."""\n__version__ = "0.12.0"\n')
    (pkg / "runtime.py").write_text(STANDIN_RUNTIME)
    limits = mf.load(artifact)["runtime"]["options"]["limits"]
    (artifact / "engine").mkdir(exist_ok=True)
    (artifact / "engine" / "config.json").write_text(json.dumps({"version": "0.12.0", "build_config": {
        "max_input_len": limits["max_input_len"], "max_seq_len": limits["max_kv_cache_capacity"],
        "max_batch_size": limits["max_batch_size"], "gather_context_logits": gather}}))
    out = tmp_path / f"device_output_gather{int(gather)}.json"
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "PYTHONPATH": f"{pkg.parent}{os.pathsep}{ROOT}", "EDGEPORT_STANDIN_MODEL": str(llama_dir)}
    proc = subprocess.run(["bash", str(artifact / "run.sh"), str(out)], env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0 and out.is_file(), proc.stdout + proc.stderr
    return out


def test_trtllm_kit_device_eval_runs_and_its_output_is_judged(trt_kit, llama_dir, tmp_path):
    """device_eval.py's output format and the reader agree: a device that computes what the
    reference does passes (and the verdict is recorded in the artifact); the same engine built
    without context logits fails, saying why."""
    artifact = tmp_path / "kit"
    shutil.copytree(trt_kit, artifact)
    out = run_kit(artifact, llama_dir, tmp_path, gather=True)
    rep = device_parity(artifact, out)
    assert rep["passed"], rep["failures"]
    assert rep["top1"] == 1 and rep["top1_regret"] == 0 and rep["greedy_match_mean"] == 16
    assert abs(rep["ppl_delta_pct"]) < 1e-3
    assert {"top1_regret_max", "ppl_delta_pct_max", "greedy_match_min"} <= set(rep["thresholds"])
    assert mf.load(artifact)["device_parity"]["passed"] and json.loads((artifact / "device_parity.json").read_text())[
        "top1_regret"] == 0

    rep = device_parity(artifact, run_kit(artifact, llama_dir, tmp_path, gather=False))
    assert not rep["passed"] and "GATHER_CONTEXT_LOGITS=0" in rep["failures"][0]
    assert all("greedy_ids" in r and "argmax" not in r
               for r in json.loads((tmp_path / "device_output_gather0.json").read_text())["results"])


# --- Edge-LLM (JetPack 7.2) --------------------------------------------------------------------

def test_edgellm_reference_text_passes(edge_kit, edge_good, tmp_path):
    rep = device_parity(edge_kit, write(tmp_path, "good.json", edge_good))
    assert rep["passed"], rep["failures"]
    assert rep["greedy_match_mean"] == 16 and rep["top1_regret"] == 0
    assert {"top1_regret_max", "greedy_match_min"} <= set(rep["thresholds"])


def test_edgellm_off_by_one_tokens_fail(edge_kit, ref, tmp_path):
    spec = json.loads((edge_kit / "input.json").read_text())
    texts = [ref.detokenize([(t + 1) % 1024 for t in edge_greedy(ref, r["messages"], spec)])
             for r in spec["requests"]]
    rep = device_parity(edge_kit, write(tmp_path, "shift.json", {"responses": [{"output_text": t} for t in texts]}))
    assert not rep["passed"] and {f.split()[0] for f in rep["failures"]} == {"top1_regret", "greedy_match_mean"}


def test_edgellm_int4_variant_takes_its_own_bound(edge_kit):
    """The variant's sub-table overrides the runtime's table; what it leaves out is inherited."""
    m = mf.load(edge_kit)
    m["quantization"]["variant"] = "edgellm-int4"
    th = device_thresholds_for(m)
    assert th["top1_regret_max"] == 0.03 and th["greedy_match_min"] == 4 and "INT4 AWQ" in th["reason"]


@pytest.mark.parametrize("output, reason", [
    ({"responses": [{"output_text": "x"}]}, "1 responses for 6 requests"),
    ({"results": []}, "no 'responses'"),
    ({"responses": [{"text": "x"}] * 6}, "no 'output_text'"),
    ({"schema": "edgeport.device-output/1", "runtime": "tensorrt-llm", "results": []}, "comes from tensorrt-llm"),
    ([1, 2], "JSON list"),
])
def test_edgellm_malformed_output_fails_with_its_reason(edge_kit, tmp_path, output, reason):
    rep = device_parity(edge_kit, write(tmp_path, "broken.json", output))
    assert not rep["passed"] and len(rep["failures"]) == 1 and reason in rep["failures"][0], rep["failures"]


def test_edgellm_garbage_and_truncated_output_exit_1(edge_kit, edge_good, tmp_path):
    garbage = {"responses": [{"output_text": "zzz"}] * 6}
    assert_judged_failure(cli_parity(edge_kit, write(tmp_path, "zzz.json", garbage)), "greedy_match_mean")
    rep = json.loads((edge_kit / "device_parity.json").read_text())
    assert not rep["passed"] and {f.split()[0] for f in rep["failures"]} == {"top1_regret", "greedy_match_mean"}
    good = json.dumps(edge_good)
    assert_judged_failure(cli_parity(edge_kit, write(tmp_path, "cut.json", good[:-10])), "not JSON")


@pytest.mark.toolenv
def test_real_edgellm_export_device_parity(exported, edge_kit, edge_good, ref, tmp_path):
    """The real Edge-LLM int8 export (tensorrt-edgellm tool environment; the session's shared
    case, copied so its manifest stays as exported) asks the device the same requests as
    edge_kit; the reference's text passes, the simulated W8A8 engine's text (to simulation
    accuracy, what the Orin returns) passes, "zzz" fails."""
    from edgeport.runtimes import load_runtime

    path = tmp_path / "edge"
    shutil.copytree(exported("jetson-llama-int8")[0], path)
    spec = json.loads((path / "input.json").read_text())
    assert spec == json.loads((edge_kit / "input.json").read_text())
    assert device_parity(path, write(tmp_path, "good.json", edge_good))["passed"]
    with load_runtime("simulated", path / "checkpoint", ref.info, {"quantize_activations": True}) as sim:
        texts = [sim.detokenize(edge_greedy(sim, r["messages"], spec)) for r in spec["requests"]]
    rep = device_parity(path, write(tmp_path, "sim.json", {"responses": [{"output_text": t} for t in texts]}))
    assert rep["passed"], rep["failures"]
    rep = device_parity(path, write(tmp_path, "zzz.json", {"responses": [{"output_text": "zzz"}] * 6}))
    assert not rep["passed"] and rep["greedy_match_mean"] < 1


# --- the greedy comparison itself --------------------------------------------------------------

def test_greedy_match_counts_a_shared_stop_as_the_whole_continuation():
    """Devices stop at the end token (TensorRT-LLM pads with it), the reference does not."""
    eos = {9}
    assert continuation_match([1, 2, 3, 4], [1, 2, 5, 4], eos) == 2
    assert continuation_match([1, 2, 9, 4], [1, 2, 9, 9], eos) == 4  # both stopped after 2 tokens
    assert continuation_match([1, 2, 9, 4], [1, 2], eos) == 4  # Edge-LLM text ends at the stop
    assert continuation_match([1, 2, 9, 4], [1, 2, 3, 4], eos) == 2  # device ran past the reference's stop
    assert continuation_match([1, 2, 3, 4], [1, 2, 9, 9], eos) == 2  # device stopped early
    assert continuation_match([1, 2, 3, 4], [], eos) == 0


def test_path_regret_charges_a_flip_once_and_an_early_stop(ref):
    """A device that takes the reference's second choice at the first token and continues
    greedily from there loses p1 - p2 once (greedy match would say 0 of 16); one that stops
    after 3 tokens is charged for choosing the end token there."""
    prompt = ref.encode(ref.format_prompt([{"role": "user", "content": "def f(x):"}]), add_bos=False)
    p = np.exp(log_softmax(ref.logits(prompt))[-1])
    first, second = np.argsort(p)[::-1][:2]
    got = [int(second), *ref.greedy([*prompt, int(second)], 15)]
    reg = path_regret(ref, prompt, got, 16, set(ref.info.stop_token_ids))
    assert reg.shape == (16,) and reg[0] == pytest.approx(p[first] - p[second], rel=1e-3) and np.all(reg[1:] < 1e-4)
    want = ref.greedy(prompt, 16)
    assert continuation_match(want, got, set(ref.info.stop_token_ids)) == 0
    reg = path_regret(ref, prompt, want[:3], 16, set(ref.info.stop_token_ids))
    assert reg.shape == (4,) and np.all(reg[:3] < 1e-4) and reg[3] > 0.01
