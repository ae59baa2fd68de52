"""What the importance matrix buys, per GGUF scheme, on the trained tiny models: the parity
gate's quantization stage (GGUF F16 -> quantized, both in llama.cpp, the eval set) with and
without the imatrix (i-quants only with: edgeport refuses them without one), and file sizes.
The model is converted, and the imatrix computed (the shipped calibration set), once per model;
the reference and F16 logits are scored once and reused for every variant, so this runs the
exporter's steps, not `edgeport export` itself (gpt-oss: experts MXFP4 and kept, as exported).

    python -m edgeport.benchmarking.imatrix_quality [--models tiny-llama tiny-gpt-oss] \
        [--schemes Q4_K_M ...] [--chunks 2,4,8,16,32,0] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from edgeport import targets
from edgeport.core.architectures import for_config
from edgeport.core.quant import IQUANTS
from edgeport.core.source import Source
from edgeport.export.gguf_convert import write_gguf
from edgeport.export.gguf_export import GGUFExporter
from edgeport.export.gguf_quantize import quantize
from edgeport.export.imatrix import compute, load_calibration
from edgeport.models import MODELS
from edgeport.parity import gate
from edgeport.runtimes import load_runtime
from edgeport.runtimes.reference import ReferenceRuntime

SCHEMES = ["Q5_K_M", "Q4_K_M", "IQ4_XS", "Q3_K_M", "IQ3_M", "Q2_K", "IQ2_M"]


class Cached:
    """A runtime whose logits and greedy continuations are computed once per prompt."""

    def __init__(self, rt):
        self.rt, self.name, self._l, self._g = rt, rt.name, {}, {}

    def __getattr__(self, k):
        return getattr(self.rt, k)

    def logits(self, ids):
        key = tuple(ids)
        if key not in self._l:
            self._l[key] = self.rt.logits(ids)
        return self._l[key]

    def greedy(self, ids, n):
        key = (tuple(ids), n)
        if key not in self._g:
            self._g[key] = self.rt.greedy(ids, n)
        return self._g[key]

    def close(self):
        pass


def measure(model: str, schemes: list[str], work: Path, budgets: list[int | None] = (None,)) -> list[dict]:
    """Rows of the quantization stage per scheme: without the matrix, then with a matrix from
    each chunk budget in `budgets` (None: the whole calibration set)."""
    import gguf


    src = Source.open(MODELS / model)
    arch = for_config(src.config)
    f16 = work / f"{model}-F16.gguf"
    write_gguf(src, arch, f16)
    quant_input, keep = f16, None
    if arch.expert_tensors:  # the cpu target's default for a BF16 gpt-oss: experts MXFP4, kept
        quant_input = work / f"{model}-F16-experts-MXFP4.gguf"
        write_gguf(src, arch, quant_input, experts_to_mxfp4=True)
        keep = {GGUFExporter().expert_pattern(arch): gguf.GGMLQuantizationType.MXFP4}
    matrices = {}
    for b in budgets:  # as the export computes it: what is kept MXFP4 is not measured
        matrices[b] = compute(f16, load_calibration(), max_chunks=b, skip="|".join(keep) if keep else None)
        m = matrices[b]
        print(f"{model}: imatrix {m.chunk_count} chunks, {m.tokens} tokens, {m.seconds} s", flush=True)
    profile = targets.load("cpu")
    ref = ReferenceRuntime(src.root)
    rts = {"reference": Cached(ref), "unquantized": Cached(load_runtime("llama.cpp", f16, ref.info,
                                                                         profile.runtime_options))}
    rows = []
    try:
        for scheme in schemes:
            for b in [False, *budgets]:
                with_imatrix, imatrix = b is not False, matrices.get(b) if b is not False else None
                if scheme in IQUANTS and not with_imatrix:
                    continue
                out = work / f"{model}-{scheme}-{'imatrix' if with_imatrix else 'plain'}.gguf"
                quantize(quant_input, out, scheme, keep=keep, imatrix=imatrix)
                q = load_runtime("llama.cpp", out, ref.info, profile.runtime_options)
                try:
                    report = gate.run({**rts, "quantized": q}, profile.thresholds(arch.name, None, scheme),
                                      sliding_window=src.config.get("sliding_window"))
                finally:
                    q.close()
                s = report["stages"]["quantization"]
                row = {"model": model, "scheme": scheme, "imatrix": with_imatrix, "bytes": out.stat().st_size,
                       "chunks": imatrix.chunk_count if imatrix else 0, "imatrix_seconds": imatrix.seconds if imatrix
                       else None,
                       **{k: s["summary"][k] for k in ("mean_kl", "p99_kl", "top1", "top1_regret", "ppl_delta_pct")},
                       "passed": s["passed"], "failures": s["failures"]}
                rows.append(row)
                print(json.dumps(row), flush=True)
                out.unlink()
    finally:
        ref.close()
        rts["unquantized"].rt.close()
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| model | scheme | imatrix chunks | size MiB | mean KL | p99 KL | top-1 | ΔPPL % | KL with / without |",
             "|---|---|---|---|---|---|---|---|---|"]
    plain = {(r["model"], r["scheme"]): r["mean_kl"] for r in rows if not r["imatrix"]}
    for r in rows:
        ratio = (f"{r['mean_kl'] / plain[(r['model'], r['scheme'])]:.3f}×"
                 if r["imatrix"] and (r["model"], r["scheme"]) in plain else "")
        lines.append(f"| {r['model']} | {r['scheme']} | {r['chunks'] if r['imatrix'] else 'no'} "
                     f"| {r['bytes'] / 2**20:.2f} | {r['mean_kl']:.4g} | {r['p99_kl']:.4g} | {r['top1']:.4f} "
                     f"| {r['ppl_delta_pct']:+.2f} | {ratio} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=["tiny-llama", "tiny-gpt-oss"])
    ap.add_argument("--schemes", nargs="*", default=SCHEMES)
    ap.add_argument("--chunks", default="0",
                    help="comma-separated chunk budgets of 512 tokens for the matrix (0: the whole calibration "
                         "set), e.g. 2,4,8,16,32,0 for the quality-vs-budget curve")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    a = ap.parse_args()
    budgets = [int(c) or None for c in a.chunks.split(",")]
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgeport-imatrix-") as work:
        for m in a.models:
            rows += measure(m, a.schemes, Path(work), budgets)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    print(table(rows))


if __name__ == "__main__":
    main()
