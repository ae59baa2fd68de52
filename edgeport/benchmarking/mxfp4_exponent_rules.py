"""MXFP4 shared-exponent rules on real (trained) weights: the OCP spec's
floor(log2(amax)) - 2 against a per-block search over the neighbouring exponents.

Prints relative RMS and mean-absolute error of each rule, and the share of blocks the
search moves, over every expert tensor of the bundled trained tiny gpt-oss.

    python bench/mxfp4_exponent_rules.py [--model models/tiny-gpt-oss]
"""

from __future__ import annotations

import argparse
import json

import numpy as np

from edgeport.core import mxfp4
from edgeport.core.source import Source
from edgeport.export.hf_mxfp4 import EXPERT_WEIGHTS
from edgeport.models import MODELS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(MODELS / "tiny-gpt-oss"))
    a = ap.parse_args()

    src = Source.open(a.model)
    acc = {r: {"sq": 0.0, "abs": 0.0} for r in mxfp4.EXPONENT_RULES}
    ref_sq = ref_abs = moved = blocks = 0.0
    for name in sorted(n for n in src.tensors if n.endswith(EXPERT_WEIGHTS)):
        w = src.read_f32(name)
        rows = np.ascontiguousarray(w.transpose(0, 2, 1)).reshape(-1, w.shape[1])
        ref_sq += float((rows.astype(np.float64) ** 2).sum())
        ref_abs += float(np.abs(rows).sum())
        scales = {}
        for rule in mxfp4.EXPONENT_RULES:
            b, s = mxfp4.quantize(rows, rule)
            d = mxfp4.dequantize(b, s) - rows
            acc[rule]["sq"] += float((d.astype(np.float64) ** 2).sum())
            acc[rule]["abs"] += float(np.abs(d).sum())
            scales[rule] = s
        moved += float((scales["ocp"] != scales["search"]).sum())
        blocks += scales["ocp"].size
    out = {rule: {"rel_rms_error": (v["sq"] / ref_sq) ** 0.5, "rel_mean_abs_error": v["abs"] / ref_abs}
           for rule, v in acc.items()}
    out["search_moved_blocks"] = moved / blocks
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
