"""Which GGUF policy for a BF16 gpt-oss (a fine-tune): plain Q4_K_M (experts get K-quants
or their fallbacks) or experts -> MXFP4 with Q4_K_M rules for the rest? Measures size and
parity of both on the bundled trained tiny gpt-oss; the cpu profile's default follows.

    python bench/gpt_oss_bf16_policy.py [--model models/tiny-gpt-oss]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgeport.export.pipeline import export
from edgeport.models import MODELS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=str(MODELS / "tiny-gpt-oss"))
    a = ap.parse_args()

    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for policy in ("kquant", "mxfp4"):
            _, m = export(a.model, "cpu", Path(tmp) / policy, policy={"bf16_experts": policy}, keep_failed=True)
            f = next(x for x in m["files"] if x["path"] == m["runtime"]["model_file"])
            st = m["parity"]["stages"]
            rows[policy] = {
                "bytes": f["bytes"], "types": m["quantization"]["applied"]["counts"],
                **{f"{stage}_{k}": st[stage]["summary"][k] for stage in ("quantization", "end_to_end")
                   for k in ("mean_kl", "p99_kl", "top1", "ppl_delta_pct")},
            }
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
