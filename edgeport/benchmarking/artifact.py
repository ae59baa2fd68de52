"""`edgeport bench --artifact DIR`: one artifact's speed through our runtime and through its raw
backend in the same run, written to bench.json, the manifest and bench.png."""

from __future__ import annotations

import platform
import time
from pathlib import Path

from edgeport import runtimes
from edgeport.core import manifest as mf
from edgeport.core.atomic import write_json
from edgeport.core.errors import RuntimeUnavailable
from edgeport.core.progress import console

from . import raw, speed
from .plots import speed_figure

SCHEMA = "edgeport.bench/1"
RUNS_HERE = {"llama.cpp", "onnxruntime"}


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def artifact_bytes(artifact: Path, m: dict) -> int:
    return sum(f["bytes"] for f in m["files"] if not f["path"].endswith((".json", ".png", ".jinja")))


def bench(artifact: Path, *, reps: int = 3, warmup: int = 1, new_tokens: int = 32, with_raw: bool = True) -> dict:
    m = mf.verify(artifact, skip={"bench.json", "bench.png"})  # measure only what the manifest describes
    name = m["runtime"]["name"]
    if name not in RUNS_HERE:
        raise RuntimeUnavailable(f"{artifact}: its runtime ({name}) does not run on this machine; bench measures "
                                 f"{' and '.join(sorted(RUNS_HERE))} artifacts here")
    threads = speed.threads()
    opts = {"n_threads": threads} if name == "llama.cpp" else {}
    window = (m.get("parity") or {}).get("sliding_window")
    rows = []
    with runtimes.load(artifact, **opts) as rt:
        for w in speed.workloads(window, new_tokens):
            console.print(f"bench: {w.name} prompt ({w.prompt_tokens} tokens) + {w.new_tokens} new, "
                          f"{reps} reps after {warmup} warmup, {threads} threads", highlight=False)
            row = speed.measure(rt, w, reps, warmup)
            if with_raw:
                row["raw"] = _raw(artifact, m, rt, w, reps, threads)
                row["ratio"] = ratios(row, row["raw"])
            rows.append(row)
    report = {"schema": SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "machine": {"cpu": cpu_name(), "threads": threads, "platform": platform.platform()},
              "artifact": {"target": m["target"], "format": m["format"], "runtime": name,
                           "bytes": artifact_bytes(artifact, m)},
              "reps": reps, "warmup": warmup, "workloads": rows, "peak_rss_mib": round(speed.peak_rss_mib(), 1)}
    return report


def _raw(artifact: Path, m: dict, rt, w: speed.Workload, reps: int, threads: int) -> dict:
    if m["format"] == "gguf":
        return raw.llama_bench(artifact / m["runtime"]["model_file"], w.prompt_tokens, w.new_tokens, reps, threads)
    return raw.genai(artifact, speed.prompt_ids(rt, w.prompt_tokens), w.new_tokens, reps)


def ratios(row: dict, r: dict) -> dict:
    """wrapper ÷ raw for throughput (goal ≥ 0.97 decode), wrapper − raw for TTFT in ms (goal ≤ 5)."""
    return {"decode": row["decode_tps"]["median"] / r["decode_tps"],
            "prefill": row["prefill_tps"]["median"] / r["prefill_tps"],
            "ttft_overhead_ms": (row["ttft_s"]["median"] - r["ttft_s"]) * 1000}


def save(artifact: Path, report: dict) -> None:
    """bench.json and bench.png into the artifact; the manifest gets the summary and the new files,
    without re-sealing the rest: an artifact whose files no longer match its manifest is
    refused before anything is written (a bench proves nothing about the files)."""
    bench = {"created": report["created"], "machine": report["machine"],
             "workloads": [{k: (v["median"] if isinstance(v, dict) and "median" in v else v)
                            for k, v in w.items() if k != "raw"} for w in report["workloads"]]}
    mf.record(artifact, {"bench": bench},
              {"bench.json": lambda p: write_json(p, report), "bench.png": lambda p: _figure(report, p)})


def _figure(report: dict, path: Path) -> None:
    """bench.png, drawn beside and renamed into place (matplotlib writes in place)."""
    import os
    import tempfile


    with tempfile.TemporaryDirectory(prefix=".bench-", dir=path.parent) as tmp:
        speed_figure(report, Path(tmp) / path.name)
        os.replace(Path(tmp) / path.name, path)
