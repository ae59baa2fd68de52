"""`edgeport bench`: one artifact's speed, one model's artifacts side by side, or a server under load."""

from __future__ import annotations

import json
import os
from pathlib import Path

from invoke import task

from .common import cli, existing, number, quiet_libs, require_runtime_of, stdout


@task(
    iterable=["compare"],
    help={
        "artifact": "measure one artifact: TTFT, prefill and decode tokens/s, peak RSS at a short prompt and one "
                    "past the sliding window, through edgeport's runtime and its raw backend (llama-bench for "
                    "GGUF, onnxruntime-genai for ONNX); writes bench.json, bench.png and the manifest's bench",
        "compare": "artifacts of one model to compare (repeat --compare, or comma-separate): the table and "
                   "figure with the reference (transformers) as the first row",
        "serve": "URL of a running OpenAI-compatible server (e.g. http://127.0.0.1:8000): concurrent streaming load",
        "clients": "--serve: concurrency levels (default 1,4,8)",
        "requests": "--serve: requests per client (default 4)",
        "endpoint": "--serve: chat (default) or completions",
        "api_key_env": "--serve: environment variable holding the server's API key",
        "reps": "repetitions after one warmup (default 3)",
        "new_tokens": "tokens generated per run (default 32; --serve: max_tokens, default 64)",
        "no_raw": "--artifact: skip the raw-backend measurement",
        "out": "--compare / --serve: where to write the JSON and PNG (default bench-compare.* / bench-serve.json)",
    },
)
@cli
def bench(c, artifact=None, compare=None, serve=None, clients="1,4,8", requests=4, endpoint="chat",
          api_key_env=None, reps=3, new_tokens=None, no_raw=False, out=None):
    """Measure speed: one artifact (--artifact), one model's artifacts side by side (--compare),
    or a running server under load (--serve)."""
    from edgeport.core.errors import EdgeportError

    chosen = [x for x in (artifact, compare, serve) if x]
    if len(chosen) != 1:
        raise EdgeportError("give exactly one of --artifact DIR, --compare DIR [--compare DIR …], --serve URL")
    # every option checked before anything is measured (one line, exit 2)
    reps = number("reps", reps, least=1)
    new_tokens = None if new_tokens is None else number("new_tokens", new_tokens, least=1)
    if artifact:
        existing("artifact", artifact)
    for item in compare or []:
        for d in item.split(","):
            if d:
                existing("compare", d)
    if out and not Path(out).resolve().parent.is_dir():
        raise EdgeportError(f"--out {out}: no such directory {Path(out).resolve().parent}")
    if serve:
        from urllib.parse import urlsplit

        u = urlsplit(serve)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise EdgeportError(f"--serve takes a server's URL such as http://127.0.0.1:8000, not {serve!r}")
        try:
            u.port  # noqa: B018 - raises on a port out of range
        except ValueError:
            raise EdgeportError(f"--serve {serve}: the port is not a number from 1 to 65535") from None
        if endpoint not in ("chat", "completions"):
            raise EdgeportError(f"--endpoint takes chat or completions, not {endpoint!r}")
        requests = number("requests", requests, least=1)
        levels = [number("clients", x, least=1) for x in str(clients).split(",")]
    if artifact or compare:  # measured in this process; bench.png needs matplotlib
        from edgeport.core.extras import require

        for d in [artifact] if artifact else [d for item in compare for d in item.split(",") if d]:
            require_runtime_of(d, "bench")
        if compare:  # the reference (transformers) is the first row
            require(("torch", "transformers"), "bench --compare")
        require("matplotlib", "bench")
    quiet_libs()
    if artifact:
        from edgeport.benchmarking.artifact import bench as run_bench
        from edgeport.benchmarking.artifact import save

        report = run_bench(Path(artifact), reps=int(reps), new_tokens=int(new_tokens or 32), with_raw=not no_raw)
        save(Path(artifact), report)
        print_bench(report)
        print(f"wrote {Path(artifact) / 'bench.json'}, {Path(artifact) / 'bench.png'}")
    elif compare:

        from edgeport.benchmarking.compare import compare as run_compare
        from edgeport.benchmarking.compare import table
        from edgeport.benchmarking.plots import compare_figure

        dirs = [Path(p) for item in compare for p in item.split(",") if p]
        result = run_compare(dirs, reps=int(reps), new_tokens=int(new_tokens or 32))
        stdout().print(table(result))
        stem = Path(out or "bench-compare")
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        compare_figure(result, stem.with_suffix(".png"))
        print(f"wrote {stem.with_suffix('.json')}, {stem.with_suffix('.png')}")
    else:
        from edgeport.benchmarking.serve_load import load

        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            raise EdgeportError(f"{api_key_env} is not set")
        try:
            result = load(serve, levels, requests, new_tokens or 64, key, endpoint)
        except Exception as e:  # httpx's connection errors, a server that is not OpenAI-compatible
            raise EdgeportError(f"{serve}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        print_serve(result)
        Path(out or "bench-serve.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out or 'bench-serve.json'}")


def print_bench(report: dict) -> None:
    from rich.table import Table

    m = report["machine"]
    t = Table(title=f"{report['artifact']['target']} / {report['artifact']['runtime']} on {m['cpu']}, "
                    f"{m['threads']} threads, median (min–max) of {report['reps']}")
    for col in ("prompt", "TTFT ms", "prefill tok/s", "decode tok/s", "raw prefill", "raw decode",
                "decode ratio", "TTFT overhead ms"):
        t.add_column(col, justify="right")
    for w in report["workloads"]:
        r, q = w.get("raw", {}), w.get("ratio", {})
        f = lambda d, s=1: f"{d['median'] * s:.1f} ({d['min'] * s:.1f}–{d['max'] * s:.1f})"
        t.add_row(f"{w['name']} ({w['prompt_tokens']})", f(w["ttft_s"], 1000), f(w["prefill_tps"]),
                  f(w["decode_tps"]), f"{r['prefill_tps']:.1f}" if r else "-", f"{r['decode_tps']:.1f}" if r else "-",
                  f"{q['decode']:.3f}" if q else "-", f"{q['ttft_overhead_ms']:+.1f}" if q else "-")
    stdout().print(t)
    stdout().print(f"peak RSS {report['peak_rss_mib']:.0f} MiB (edgeport process)"
                  + (f", raw backend {max(w['raw']['peak_rss_mib'] for w in report['workloads']):.0f} MiB"
                     if all('raw' in w for w in report["workloads"]) else ""), highlight=False)


def print_serve(result: dict) -> None:
    from rich.table import Table

    t = Table(title=f"{result['url']} ({result['model']}), {result['endpoint']}, max_tokens {result['max_tokens']}")
    for col in ("clients", "requests", "errors", "tok/s", "TTFT p50/p99 ms", "first answer p50 ms",
                "ITL p50/p99 ms", "TPOT p50 ms", "e2e p50/p90/p99 ms"):
        t.add_column(col, justify="right")
    g = lambda s, k: "-" if s[k] is None else f"{s[k]:.1f}"
    for r in result["runs"]:
        t.add_row(str(r["clients"]), str(r["requests"]), str(r["errors"]), f"{r['throughput_tps']:.1f}",
                  f"{g(r['ttft_ms'], 'p50')}/{g(r['ttft_ms'], 'p99')}", g(r["ttfat_ms"], "p50"),
                  f"{g(r['itl_ms'], 'p50')}/{g(r['itl_ms'], 'p99')}", g(r["tpot_ms"], "p50"),
                  f"{g(r['e2e_ms'], 'p50')}/{g(r['e2e_ms'], 'p90')}/{g(r['e2e_ms'], 'p99')}")
    stdout().print(t)
