"""Parity figures of every export case the tests pin (tests/test_regression_bounds.py): mean KL,
top-1, top-1 regret, PPL delta per judged stage, for the trained tiny models and the
random-init ones (edgeport/models/build_random.py). Re-measure after a deliberate change and update the
table in the test with the new figures.

    python -m edgeport.benchmarking.parity_figures [--only NAME ...] [--workdir /tmp/edgeport-figures]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgeport.benchmarking.cases import CASES, case_model
from edgeport.export.pipeline import export


def figures(report: dict) -> dict:
    return {stage: {k: r["summary"][k] for k in ("mean_kl", "top1", "top1_regret", "ppl_delta_pct")}
            for stage, r in report["stages"].items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="*")
    ap.add_argument("--workdir", type=Path)
    a = ap.parse_args()

    work = a.workdir or Path(tempfile.mkdtemp(prefix="edgeport-figures-"))
    out = {}
    for name, case in CASES.items():
        if a.only and name not in a.only:
            continue
        model = case_model(case["model"], work / "models")
        _, m = export(str(model), case["target"], work / name, force=True, keep_failed=True,
                      quantization=case.get("quantization"), policy=case.get("policy"))
        out[name] = {"passed": m["parity"]["passed"], **figures(m["parity"])}
        print(json.dumps({name: out[name]}), flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
