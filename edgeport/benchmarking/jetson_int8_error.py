"""Where Edge-LLM's INT8 SmoothQuant (W8A8) loses accuracy on a model: the simulated engine
with its int8 activations, against the same int8 weights with fp16 activations.

    python bench/jetson_int8_error.py [--model models/tiny-llama] [--samples 64]

Quantizes with Edge-LLM's quantizer (tool environment), then scores both variants against the
reference on the parity eval set.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from edgeport.export import edgellm
from edgeport.models import MODELS
from edgeport.parity.gate import load_evalset
from edgeport.parity.metrics import compare_logits, summarize
from edgeport.runtimes.reference import ReferenceRuntime
from edgeport.runtimes.simulated import SimulatedRuntime


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=str(MODELS / "tiny-llama"))
    ap.add_argument("--samples", type=int, default=64)
    a = ap.parse_args()


    with tempfile.TemporaryDirectory() as d:
        ckpt = Path(d) / "int8"
        edgellm.quantize(Path(a.model), ckpt, "int8", a.samples, Path(d) / "quantize.log")
        ref = ReferenceRuntime(Path(a.model))
        prompts, _ = load_evalset()
        ids = [ref.encode(p["text"])[:512] for p in prompts]
        base = [ref.logits(x) for x in ids]
        for label, act in (("W8A8 (engine: int8 activations)", True), ("same int8 weights, fp16 activations", False)):
            sim = SimulatedRuntime(ckpt, ref.info, quantize_activations=act)
            s = summarize([compare_logits(p["id"], p["kind"], x, b, sim.logits(x))
                           for p, x, b in zip(prompts, ids, base, strict=True)])
            print(f"{label:<40} mean KL {s['mean_kl']:.2e}  p99 {s['p99_kl']:.2e}  top-1 {s['top1']:.4f} "
                  f"(decisive {s['top1_decisive']:.4f})  dPPL {s['ppl_delta_pct']:+.2f} %")


if __name__ == "__main__":
    main()
