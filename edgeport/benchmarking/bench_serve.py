"""What edgeport's OpenAI front costs, and what llama-server buys over llama-cpp-python's server.

One GGUF artifact, the same load (benchmarking/serve_load.py: N concurrent streaming clients,
greedy, `/v1/completions` so that every server answers the same raw prompt;
`/v1/chat/completions` with --endpoint chat):

- front:        `python -m edgeport.serving` (our front) over llama-server with --parallel slots
- llama-server: the llama-server the front started (serving.engines.llama_server_command),
                clients talking to it directly, asked for the sampling the front asks it for
                (the whole vocabulary); the load alternates between the two round by round, so
                drift over the run falls on both alike (--separate: llama-server alone as its own
                process after the front, the earlier way)
- llama_cpp.server: llama-cpp-python's server (`pip install 'llama-cpp-python[server]'`,
                the `bench` extra) on the same file, with the same context per request

    python -m edgeport.benchmarking.bench_serve --artifact artifacts/tiny-llama/cpu [--clients 1,4,8]
        [--requests 4] [--rounds 6] [--max-tokens 64] [--parallel 8] [--ctx 512] [--visible 64]
        [--out bench-serve-compare.json]

--visible N biases N plain-word tokens in every request to every server: a random-weight
checkpoint (the scale benchmark's) then answers in text, so first-token times are seen.
Prints one table (aggregate output tok/s, TTFT p50/p99 per server and concurrency) and the
ratios the serving issue sets goals for: front ÷ llama-server throughput (goal ≥ 0.97),
front − llama-server TTFT p50 (goal ≤ 5 ms), front ÷ llama_cpp.server at 4 clients (goal ≥ 2.5).
On AMX CPUs repacking is off in all three (#20824), as everywhere in edgeport.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from edgeport.benchmarking.procmem import status_kib, tree
from edgeport.benchmarking.serve_load import load, paired
from edgeport.core.llama_tools import tool
from edgeport.core.manifest import load as read_manifest
from edgeport.serving.engines import WHOLE_VOCABULARY, free_port, llama_server_command

REPO = Path(__file__).resolve().parent.parent

# llama_cpp.server loads the model through llama_cpp.Llama: run it under the same
# extra-buffer-types switch edgeport's runtime uses (core/llama_log.py).
SHIM = """
import sys
from edgeport.core.llama_log import extra_bufts_enabled, model_params
import llama_cpp
from llama_cpp.server.__main__ import main
sys.argv = ["llama_cpp.server", *sys.argv[1:]]
with model_params(llama_cpp, extra_bufts_enabled()):
    main()
"""


def _wait(url: str, proc: subprocess.Popen, path: str, timeout: float = 900) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited with {proc.returncode} while starting (see its log)")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(f"{url}{path}", timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise SystemExit(f"{url} did not become ready in {timeout:.0f} s")


def peak_memory(pid: int) -> dict:
    """The process tree's peak resident memory so far: VmHWM summed over its processes (each one's
    own high-water mark; an upper bound of the tree's peak), and its RssAnon now (weights the
    engine maps from the GGUF are file-backed, not anonymous)."""
    pids = tree(pid)
    return {"peak_rss_bytes": 1024 * sum(status_kib(p, "VmHWM") for p in pids),
            "rss_anon_bytes": 1024 * sum(status_kib(p, "RssAnon") for p in pids)}


@contextlib.contextmanager
def _started(cmd: list[str], ready_path: str, port: int, log: Path, memory: dict | None = None,
             pid: list | None = None):
    """The server, ready; `memory` gets its peak_memory() when the block ends, `pid` its process id."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, cwd=REPO,
                                start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    if pid is not None:
        pid.append(proc.pid)
    try:
        _wait(url, proc, ready_path)
        yield url
        if memory is not None:
            memory.update(peak_memory(proc.pid))
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def child_llama_server(pid: int) -> tuple[int, str]:
    """The llama-server the front at `pid` started: its pid and URL (from its command line)."""
    for p in tree(pid)[1:]:
        try:
            argv = Path(f"/proc/{p}/cmdline").read_bytes().decode().split("\0")
        except OSError:
            continue
        if Path(argv[0]).name == "llama-server" and "--port" in argv:
            return p, f"http://127.0.0.1:{argv[argv.index('--port') + 1]}"
    raise SystemExit("the front's llama-server was not found among its child processes")


def servers(artifact: Path, gguf: Path, parallel: int, ctx: int, threads: int | None) -> dict:
    def front(port: int) -> tuple[list[str], str]:
        return ([sys.executable, "-m", "edgeport.serving", "--artifact", str(artifact), "--port", str(port),
                 "--parallel", str(parallel), "--queue", "256", "--ctx", str(ctx)]
                + (["--threads", str(threads)] if threads else []),
                "/health")

    def alone(port: int) -> tuple[list[str], str]:
        return llama_server_command(tool("llama-server"), gguf, port, ctx, parallel, threads), "/health"

    def lcpp(port: int) -> tuple[list[str], str]:
        cmd = [sys.executable, "-c", SHIM.format(repo=str(REPO)), "--model", str(gguf), "--host", "127.0.0.1",
               "--port", str(port), "--n_ctx", str(ctx)]
        return cmd + (["--n_threads", str(threads)] if threads else []), "/v1/models"

    return {"front": front, "llama-server": alone, "llama_cpp.server": lcpp}, free_port


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--artifact", type=Path, required=True, help="a GGUF artifact directory (edgeport export)")
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--requests", type=int, default=4, help="requests per client (default 4)")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--parallel", type=int, default=8, help="llama-server slots (default 8)")
    ap.add_argument("--ctx", type=int, default=512, help="context per request (default 512)")
    ap.add_argument("--threads", type=int, help="CPU threads for the engines (default: llama.cpp's)")
    ap.add_argument("--endpoint", choices=["completions", "chat"], default="completions")
    ap.add_argument("--rounds", type=int, default=6,
                    help="front vs llama-server: rounds alternated between the two (default 6)")
    ap.add_argument("--separate", action="store_true",
                    help="run llama-server alone as its own process after the front instead of alternating "
                         "the load between the front and the llama-server it started")
    ap.add_argument("--only", nargs="*", help="server names to run (front, llama-server, llama_cpp.server)")
    ap.add_argument("--visible", type=int, default=0, metavar="N",
                    help="bias N plain-word tokens of the vocabulary (+30 logit) in every request, all servers: "
                         "a random-weight model's output is then text, so first-token times and token gaps are "
                         "seen (without it most of its tokens are byte pieces or specials no server streams)")
    ap.add_argument("--out", type=Path, default=Path("bench-serve-compare.json"))
    a = ap.parse_args()


    manifest = read_manifest(a.artifact)
    ggufs = [f["path"] for f in manifest["files"] if f["path"].endswith(".gguf") and "imatrix" not in f["path"]]
    if manifest.get("format") != "gguf" or not ggufs:
        raise SystemExit(f"{a.artifact}: not a GGUF artifact")
    gguf = a.artifact / ggufs[0]
    levels = [int(x) for x in a.clients.split(",")]
    kinds, free_port = servers(a.artifact, gguf, a.parallel, a.ctx, a.threads)
    bias = visible_bias(gguf, a.visible) if a.visible else {}
    # llama-server alone is asked for the sampling the front asks it for (OpenAI's: the whole vocabulary)
    same = {**WHOLE_VOCABULARY, "top_p": 1.0}
    result = {"artifact": str(a.artifact), "gguf": gguf.name, "endpoint": a.endpoint, "max_tokens": a.max_tokens,
              "requests_per_client": a.requests, "parallel": a.parallel, "ctx": a.ctx, "cpus": os.cpu_count(),
              "visible_tokens_biased": len(bias), "llama_server_sampling": same, "servers": {}}
    logs = Path(tempfile.mkdtemp(prefix="edgeport-bench-serve-"))
    chosen = [name for name in kinds if not a.only or name in a.only]
    if not a.separate and {"front", "llama-server"} <= set(chosen):
        chosen.remove("llama-server")
        _paired(kinds["front"], free_port(), logs, levels, a, bias, same, result)
        chosen.remove("front")
    for name in chosen:
        make = kinds[name]
        port = free_port()
        cmd, ready = make(port)
        print(f"== {name}: starting (log {logs / name}.log)", flush=True)
        memory: dict = {}
        with _started(cmd, ready, port, logs / f"{name}.log", memory) as url:
            extra = _fields(name, bias, same)
            load(url, [1], 1, 8, None, a.endpoint, extra)  # warm up: first-request allocations out of the figures
            r = load(url, levels, a.requests, a.max_tokens, None, a.endpoint, extra)
        result["servers"][name] = r["runs"]
        result.setdefault("memory", {})[name] = memory
        _print_runs(memory, r["runs"])
    result["ratios"] = ratios(result["servers"])
    a.out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(result)
    print(f"wrote {a.out}")
    shutil.rmtree(logs, ignore_errors=True)  # the servers' logs, kept only when a run fails


def _print_runs(memory: dict, runs: list[dict]) -> None:
    print(f"   peak RSS {memory.get('peak_rss_bytes', 0) / 2**20:.0f} MiB (anonymous now "
          f"{memory.get('rss_anon_bytes', 0) / 2**20:.0f} MiB)", flush=True)
    for run in runs:
        print(f"   {run['clients']} clients: {run['throughput_tps']:.1f} tok/s, TTFT p50 "
              f"{run['ttft_ms']['p50']:.1f} ms p99 {run['ttft_ms']['p99']:.1f} ms, errors {run['errors']}",
              flush=True)


def _fields(name: str, bias: dict, same: dict) -> dict:
    """The request fields a server's load adds: the --visible bias (every server), and for llama-server
    reached directly the sampling the front asks it for."""
    return {**({"logit_bias": bias} if bias else {}), **(same if name == "llama-server" else {})}


def _paired(make, port: int, logs: Path, levels: list[int], a, bias: dict, same: dict, result: dict) -> None:
    """The front and its own llama-server, reached directly, the load alternated between them round
    by round (serve_load.paired): one engine process, so the ratio is the front's cost alone."""
    cmd, ready = make(port)
    print(f"== front and its llama-server, alternated: starting (log {logs / 'front.log'})", flush=True)
    memory, pid = {}, []
    with _started(cmd, ready, port, logs / "front.log", memory, pid) as url:
        child, child_url = child_llama_server(pid[0])
        targets = {name: (u, _fields(name, bias, same)) for name, u in (("front", url), ("llama-server", child_url))}
        for u, x in targets.values():  # warm up: first-request allocations out of the figures
            load(u, [1], 1, 8, None, a.endpoint, x)
        runs = paired(targets, levels, a.rounds, a.requests, a.max_tokens, a.endpoint)
        engine = peak_memory(child)
    result["method"] = (f"paired: the front and the llama-server it started, alternated for {a.rounds} rounds "
                        f"of {a.requests} request(s) per client at each concurrency")
    result["servers"].update(runs)
    result.setdefault("memory", {}).update({"front": memory, "llama-server": engine})
    for name in ("front", "llama-server"):
        print(f"== {name}", flush=True)
        _print_runs(result["memory"][name], runs[name])


BIAS = 30.0


def visible_bias(gguf: Path, n: int) -> dict[str, float]:
    """{token id: +BIAS} for n tokens that are a space and a short lowercase word (byte-level BPE's
    'Ġword'), spread over the vocabulary."""
    import re

    import gguf as gguf_py

    field = gguf_py.GGUFReader(gguf).fields["tokenizer.ggml.tokens"]
    words = [i for i, part in enumerate(field.data)
             if re.fullmatch(rb"\xc4\xa0[a-z]{3,8}", bytes(field.parts[part]))]
    if len(words) < n:
        raise SystemExit(f"{gguf.name}: only {len(words)} plain-word tokens for --visible {n}")
    step = len(words) / n
    return {str(words[int(k * step)]): BIAS for k in range(n)}


def ratios(servers: dict) -> list[dict]:
    by = {name: {r["clients"]: r for r in runs} for name, runs in servers.items()}
    out = []
    for n, f in by.get("front", {}).items():
        row = {"clients": n}
        if (ls := by.get("llama-server", {}).get(n)) and ls["throughput_tps"]:
            row["front_over_llama_server_tps"] = f["throughput_tps"] / ls["throughput_tps"]
            row["front_minus_llama_server_ttft_p50_ms"] = f["ttft_ms"]["p50"] - ls["ttft_ms"]["p50"]
        if (lc := by.get("llama_cpp.server", {}).get(n)) and lc["throughput_tps"]:
            row["front_over_llama_cpp_server_tps"] = f["throughput_tps"] / lc["throughput_tps"]
        out.append(row)
    return out


def print_table(result: dict) -> None:
    print(f"\n{result['gguf']}, {result['endpoint']}, max_tokens {result['max_tokens']}, "
          f"{result['requests_per_client']} requests per client, {result['parallel']} slots, {result['cpus']} CPUs")
    print("| server | clients | errors | tok/s | TTFT p50 ms | TTFT p99 ms |")
    print("|---|---|---|---|---|---|")
    for name, runs in result["servers"].items():
        for r in runs:
            print(f"| {name} | {r['clients']} | {r['errors']} | {r['throughput_tps']:.1f} | "
                  f"{r['ttft_ms']['p50']:.1f} | {r['ttft_ms']['p99']:.1f} |")
    for row in result["ratios"]:
        parts = [f"{row['clients']} clients:"]
        if "front_over_llama_server_tps" in row:
            parts.append(f"front/llama-server tok/s {row['front_over_llama_server_tps']:.3f} (goal >= 0.97), "
                         f"TTFT p50 {row['front_minus_llama_server_ttft_p50_ms']:+.1f} ms (goal <= 5)")
        if "front_over_llama_cpp_server_tps" in row:
            parts.append(f"front/llama_cpp.server tok/s {row['front_over_llama_cpp_server_tps']:.2f}"
                         + (" (goal >= 2.5)" if row["clients"] == 4 else ""))
        print(" ".join(parts))


if __name__ == "__main__":
    main()
