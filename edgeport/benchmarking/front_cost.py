"""What the OpenAI front costs per streamed token, in CPU time: the figure that decides its
overhead on a device, where the front and the engine share the same few cores.

Starts `python -m edgeport.serving` on a GGUF artifact (the front, which starts llama-server as
its child), drives N concurrent streaming clients (benchmarking/serve_load.py), and reads both
processes' CPU time (user + system, /proc) before and after: microseconds of front CPU per token
beside llama-server's. CPU time, not wall time, so the figure holds on a busy machine too.

    python -m edgeport.benchmarking.front_cost --artifact DIR [--clients 4] [--requests 8]
        [--max-tokens 128] [--endpoint chat|completions] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from edgeport.benchmarking.serve_load import load
from edgeport.serving.engines import free_port

TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of one process (its own threads, not its children)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(x) for x in text]
    return out


def measure(artifact: Path, clients: int, requests: int, max_tokens: int, endpoint: str) -> dict:
    port = free_port()
    ready = Path(tempfile.mkdtemp(prefix="edgeport-front-cost-")) / "ready"
    log = ready.with_name("front.log").open("w")
    proc = subprocess.Popen([sys.executable, "-m", "edgeport.serving", "--artifact", str(artifact), "--port",
                             str(port), "--parallel", str(clients), "--queue", "256", "--ready-file", str(ready)],
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while not ready.exists():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the front did not start:\n{ready.with_name('front.log').read_text()[-2000:]}")
            time.sleep(0.2)
        httpx.get(f"{url}/health", timeout=10).raise_for_status()
        (engine,) = children(proc.pid)
        load(url, [1], 1, 8, None, endpoint)  # warm up
        front0, engine0, t0 = cpu_seconds(proc.pid), cpu_seconds(engine), time.monotonic()
        r = load(url, [clients], requests, max_tokens, None, endpoint)
        front1, engine1, t1 = cpu_seconds(proc.pid), cpu_seconds(engine), time.monotonic()
    finally:
        proc.terminate()
        proc.wait(30)
    (run,) = r["runs"]
    tokens = run["output_tokens"]
    return {"clients": clients, "requests": clients * requests, "tokens": tokens, "wall_s": t1 - t0,
            "front_cpu_s": front1 - front0, "engine_cpu_s": engine1 - engine0,
            "front_us_per_token": 1e6 * (front1 - front0) / max(tokens, 1),
            "engine_us_per_token": 1e6 * (engine1 - engine0) / max(tokens, 1),
            "front_share": (front1 - front0) / max((front1 - front0) + (engine1 - engine0), 1e-9),
            "throughput_tps": run["throughput_tps"], "errors": run["errors"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", type=Path, required=True)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--requests", type=int, default=8, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--endpoint", choices=["chat", "completions"], default="chat")
    ap.add_argument("--json", type=Path)
    a = ap.parse_args()
    res = measure(a.artifact, a.clients, a.requests, a.max_tokens, a.endpoint)
    print(f"{res['tokens']} tokens, {a.clients} clients, {a.endpoint}: front {res['front_us_per_token']:.0f} µs CPU "
          f"per token, llama-server {res['engine_us_per_token']:.0f} µs; the front's share of the CPU "
          f"{100 * res['front_share']:.1f} %")
    if a.json:
        a.json.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
