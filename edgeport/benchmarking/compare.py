"""`edgeport bench --compare DIR [DIR …]`: the seed's table for the artifacts of one model on
this machine — runtime, size, time to first token, decode tokens/s, peak memory, quality
retained — with the reference (transformers on the source checkpoint) as the first row.
Each row is measured in a child process of its own, so its peak RSS is its own.

Quality retained (README: "Quality retained") = 100 · exp(−mean KL(reference ‖ artifact)) over
the parity eval set (the end-to-end stage of the artifact's parity report): 100 % when the
artifact's next-token distributions equal the reference's; it falls as they drift apart.
Top-1 agreement and top-1 regret are shown beside it."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

from edgeport.core import manifest as mf
from edgeport.core.errors import RuntimeUnavailable
from edgeport.export.pipeline import source_location

from . import raw
from .artifact import RUNS_HERE, artifact_bytes
from .speed import ROOT, threads

_CHILD = """
import json, sys
from edgeport.benchmarking import speed
from edgeport import runtimes
with runtimes.load({path!r}, **{opts!r}) as rt:
    w = speed.workloads({window!r}, {new!r})[0]
    print(json.dumps(speed.measure(rt, w, {reps!r}, 1)))
"""


def _measure(path: Path, opts: dict, window: int | None, new: int, reps: int) -> tuple[dict, float]:
    code = _CHILD.format(root=str(ROOT), path=str(path), opts=opts, window=window, new=new, reps=reps)
    out, rss = raw._run([sys.executable, "-c", code])
    return json.loads(out.strip().splitlines()[-1]), rss


def _quality(report: dict | None) -> dict:
    st = (report or {}).get("stages", {})
    s = (st.get("end_to_end") or st.get("quantization") or {}).get("summary")
    if not s:
        return {"quality_retained_pct": None, "mean_kl": None, "top1": None, "top1_regret": None}
    return {"quality_retained_pct": 100 * math.exp(-s["mean_kl"]), "mean_kl": s["mean_kl"], "top1": s["top1"],
            "top1_regret": s.get("top1_regret")}


def compare(artifacts: list[Path], reps: int = 3, new_tokens: int = 32) -> dict:
    ms = [mf.load(a) for a in artifacts]
    sources = {m["source"]["files"] and json.dumps(m["source"]["files"], sort_keys=True) for m in ms}
    if len(sources) > 1:
        raise RuntimeUnavailable("--compare takes artifacts of one model (their sources differ)")
    window = next(((m.get("parity") or {}).get("sliding_window") for m in ms), None)
    src = Path(source_location(ms[0]))
    rows = []
    perf, rss = _measure(src, {}, window, new_tokens, reps)
    src_bytes = sum(v["bytes"] for k, v in ms[0]["source"]["files"].items() if k.endswith(".safetensors"))
    rows.append({"name": "reference", "runtime": "transformers", "target": "-", "quantization": "source",
                 "bytes": src_bytes, **_perf(perf), "peak_rss_mib": rss,
                 "quality_retained_pct": 100.0, "mean_kl": 0.0, "top1": 1.0, "top1_regret": 0.0, "parity": "-"})
    for a, m in zip(artifacts, ms, strict=True):
        name = m["runtime"]["name"]
        if name not in RUNS_HERE:
            raise RuntimeUnavailable(f"{a}: its runtime ({name}) does not run on this machine")
        opts = {"n_threads": threads()} if name == "llama.cpp" else {}
        perf, rss = _measure(a, opts, window, new_tokens, reps)
        rows.append({"name": str(a), "runtime": name, "target": m["target"],
                     "quantization": m["quantization"].get("requested"), "bytes": artifact_bytes(a, m),
                     **_perf(perf), "peak_rss_mib": rss, **_quality(m.get("parity")),
                     "parity": None if not m.get("parity") else ("passed" if m["parity"]["passed"] else "FAILED")})
    return {"model": ms[0]["source"].get("model"), "prompt_tokens": perf["prompt_tokens"],
            "new_tokens": new_tokens, "threads": threads(), "reps": reps, "rows": rows}


def _perf(p: dict) -> dict:
    return {"ttft_ms": p["ttft_s"]["median"] * 1000, "decode_tps": p["decode_tps"]["median"],
            "prefill_tps": p["prefill_tps"]["median"]}


def table(result: dict):
    from rich.table import Table

    t = Table(title=f"{result['model']}: {result['prompt_tokens']}-token prompt + {result['new_tokens']} new, "
                    f"{result['threads']} threads, median of {result['reps']}")
    for col in ("artifact", "runtime", "quantization", "size MiB", "TTFT ms", "decode tok/s", "peak RSS MiB",
                "quality retained", "mean KL", "top-1", "parity"):
        t.add_column(col, justify="left" if col in ("artifact", "runtime", "quantization") else "right")
    for r in result["rows"]:
        q = r["quality_retained_pct"]
        t.add_row(Path(r["name"]).name if r["name"] != "reference" else "reference", r["runtime"],
                  str(r["quantization"]), f"{r['bytes'] / 2**20:.1f}", f"{r['ttft_ms']:.1f}", f"{r['decode_tps']:.1f}",
                  f"{r['peak_rss_mib']:.0f}", "-" if q is None else f"{q:.2f} %",
                  "-" if r["mean_kl"] is None else f"{r['mean_kl']:.2e}",
                  "-" if r["top1"] is None else f"{r['top1']:.3f}", r["parity"] or "none")
    return t
