"""The user's whole path at gpt-oss-20b's size, measured, beside llama.cpp's own pipeline.

On a seeded synthetic checkpoint with openai/gpt-oss-20b's exact dimensions (benchmarking/
synthetic.py; `--layers 24` is the real model's depth, fewer layers scale it down) or on any
checkpoint (`--model DIR`), one run measures:

- `edgeport export --target cpu` as a user runs it (importance matrix and parity on): wall time,
  peak anonymous memory and peak total RSS of the whole process tree, peak disk beyond the source;
- a re-export to another quantization (what the importance-matrix cache saves);
- llama.cpp's own pipeline on the same checkpoint and calibration text: `convert_hf_to_gguf.py` →
  `llama-imatrix` → `llama-quantize --imatrix`, measured the same way;
- `edgeport plan` for this machine's memory beside the measured GGUF bytes and llama-server's RSS;
- `edgeport serve` under 1/4/8 streaming clients beside the llama-server under it, reached directly,
  the load alternated between the two (benchmarking/bench_serve.py);
- `edgeport push` / `pull` through a file:// layout.

With --memory-limit 16 the export, serve, publish and re-export steps each run in a 16 GiB memory
cgroup (benchmarking/cage.py: page cache counted, no swap): the proof that they fit a 16 GB machine
is that they completed there; each step records the cgroup's peak charge and OOM kills.

Writes one JSON (and a figure with --figure). Every figure is measured here; nothing is assumed.

    python -m edgeport.benchmarking.scale [--layers 24] [--model DIR] [--workdir /tmp/edgeport-scale]
        [--clients 1,4,8] [--max-tokens 32] [--memory-limit 16] [--skip serve,llama.cpp,...] [--json scale.json]
        [--figure scale.png]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from edgeport.benchmarking.bench_serve import _started
from edgeport.benchmarking.cage import CageUnavailable, MemoryCage
from edgeport.benchmarking.llama_cpp_converter import converter_command, converter_script
from edgeport.benchmarking.procmem import status_kib, tree
from edgeport.benchmarking.synthetic import build_in_subprocess
from edgeport.core.llama_tools import repack_args, tool
from edgeport.export.imatrix import CHUNK, DEFAULT_CALIBRATION
from edgeport.serving.engines import free_port, llama_server_command

PEAK_PROMPT_TOKENS = 1536  # three full micro-batches of llama-server's 512
STEPS = ("export", "llama.cpp", "plan", "memory", "serve", "publish", "reexport")


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def _du(paths: list[Path]) -> int:
    total = 0
    for root in paths:
        if root.is_file():  # a watched file, not a directory (os.walk yields nothing for it)
            total += root.stat().st_blocks * 512
            continue
        for dirpath, _, files in os.walk(root):
            for f in files:
                try:
                    total += os.lstat(os.path.join(dirpath, f)).st_blocks * 512  # allocated, not apparent
                except OSError:
                    pass
    return total


@dataclass
class Measured:
    seconds: float = 0.0
    peak_anon_bytes: int = 0  # sum over the process tree of RssAnon, at its highest sample
    peak_rss_bytes: int = 0  # the same for VmRSS (memory-mapped weights included)
    peak_disk_bytes: int = 0  # allocated bytes under the watched directories, at their highest
    returncode: int = 0
    log_tail: str = ""
    extra: dict = field(default_factory=dict)
    # every TIMELINE_S: [seconds, anonymous GiB, RSS GiB, disk GiB, the log's last line]: where in
    # the run each peak happened
    timeline: list = field(default_factory=list)
    cage: dict | None = None  # run in a memory cgroup: its limit, peak charge and OOM kills


TIMELINE_S = 5.0


def run_measured(cmd: list[str], *, watch: list[Path], env: dict | None = None, cwd: Path | None = None,
                 log: Path, cage_bytes: int | None = None) -> Measured:
    """Run `cmd`, sampling its process tree's memory and `watch`'s disk use every 0.2 s; with
    `cage_bytes`, in a memory cgroup of that size (benchmarking/cage.py), its report in `cage`."""
    m = Measured()
    cage = MemoryCage(cage_bytes, f"edgeport-scale-{os.getpid()}-{log.stem}") if cage_bytes else None
    t0 = time.monotonic()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                stdin=subprocess.DEVNULL, preexec_fn=cage.enter if cage else None)
        stop = threading.Event()

        def sample() -> None:
            window = [0, 0, 0]  # the highest of each since the last timeline point
            last = 0.0
            while not stop.is_set():
                pids = tree(proc.pid)
                now = [1024 * sum(status_kib(p, "RssAnon") for p in pids),
                       1024 * sum(status_kib(p, "VmRSS") for p in pids), _du(watch)]
                m.peak_anon_bytes = max(m.peak_anon_bytes, now[0])
                m.peak_rss_bytes = max(m.peak_rss_bytes, now[1])
                m.peak_disk_bytes = max(m.peak_disk_bytes, now[2])
                window = [max(a, b) for a, b in zip(window, now, strict=True)]
                if (t := time.monotonic() - t0) - last >= TIMELINE_S:
                    m.timeline.append([round(t, 1), *(round(v / 2**30, 3) for v in window), _last_line(log)])
                    window, last = [0, 0, 0], t
                stop.wait(0.2)

        th = threading.Thread(target=sample, daemon=True)
        th.start()
        m.returncode = proc.wait()
        stop.set()
        th.join()
    m.seconds = time.monotonic() - t0
    if cage:
        m.cage = cage.report()
        cage.close()
    m.log_tail = log.read_text(errors="replace")[-1500:]
    return m


def _last_line(log: Path) -> str:
    try:
        with open(log, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - 400))
            lines = [x for x in f.read().decode(errors="replace").replace("\r", "\n").splitlines() if x.strip()]
    except OSError:
        return ""
    return lines[-1].strip()[:100] if lines else ""


def _gib(n: float) -> str:
    return f"{n / 2**30:.2f} GiB"


def calibration_text(dest: Path) -> Path:
    """The bundled calibration set as the plain text llama-imatrix reads."""
    lines = [json.loads(x)["text"] for x in DEFAULT_CALIBRATION.read_text().splitlines() if x.strip()]
    dest.write_text("\n\n".join(lines))
    return dest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=24, help="synthetic gpt-oss-20b layers (24 = full size)")
    ap.add_argument("--model", type=Path, help="measure this checkpoint instead of a synthetic one")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgeport-scale"))
    ap.add_argument("--clients", default="1,4,8")
    ap.add_argument("--requests", type=int, default=1, help="requests per client and round when serving")
    ap.add_argument("--rounds", type=int, default=8, help="rounds alternated between the front and llama-server")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--device", default="laptop-16gb-cpu", help="the device profile `plan` is asked about")
    ap.add_argument("--memory-limit", type=float, metavar="GIB",
                    help="run the export, serve, publish and re-export steps each in a memory cgroup of this "
                         "size (page cache included, no swap): e.g. 16 for a 16 GB machine")
    ap.add_argument("--skip", default="", help=f"comma-separated steps to leave out: {', '.join(STEPS)}")
    ap.add_argument("--json", type=Path, default=Path("scale.json"))
    ap.add_argument("--resume", action="store_true", help="keep the steps already in --json and run the others")
    ap.add_argument("--figure", type=Path)
    a = ap.parse_args()
    skip = {s for s in a.skip.split(",") if s}
    if bad := skip - set(STEPS):
        raise SystemExit(f"--skip: unknown steps {', '.join(sorted(bad))}; steps: {', '.join(STEPS)}")
    cage = int(a.memory_limit * 2**30) if a.memory_limit else None
    if cage:
        try:
            MemoryCage(cage, f"edgeport-scale-{os.getpid()}-probe").close()
        except CageUnavailable as e:
            raise SystemExit(f"--memory-limit: {e}") from None
    work = a.workdir
    work.mkdir(parents=True, exist_ok=True)
    model = a.model or build_in_subprocess(work / f"gpt-oss-20b-synthetic-{a.layers}L", a.layers, "mxfp4")
    source_bytes = sum(p.stat().st_size for p in model.glob("*.safetensors"))
    res: dict = {"machine": {"cpu": cpu_name(), "cores": os.cpu_count(),
                             "memory_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)},
                 "model": model.name, "layers": None if a.model else a.layers, "source_bytes": source_bytes,
                 "memory_limit_bytes": cage, "steps": {}}
    if a.resume and a.json.is_file():  # a run cut short: keep what it measured, run the rest
        res["steps"] = json.loads(a.json.read_text()).get("steps", {})
        skip |= set(res["steps"])
        print(f"resuming: {', '.join(res['steps'])} already measured in {a.json}", flush=True)

    def save() -> None:
        a.json.write_text(json.dumps(res, indent=2) + "\n")
    edgeport = [sys.executable, "-m", "edgeport"]
    tmp = work / "tmp"  # the exports' temp dir, watched for disk
    # the exports' caches (importance matrix, reference): cold for the first export, kept for
    # the re-export (what they save is what it measures); watched for disk with the rest
    caches = work / "cache"
    if not a.resume:
        shutil.rmtree(caches, ignore_errors=True)
    env = {**os.environ, "TMPDIR": str(tmp), "EDGEPORT_IMATRIX_CACHE": str(caches / "imatrix"),
           "EDGEPORT_REFERENCE_CACHE": str(caches / "reference")}

    def export(name: str, out: Path, *extra: str) -> Measured:
        """`out` sits alone in its own directory: the export stages beside it (.artifact.partial-*),
        and the disk watched is that directory and TMPDIR."""
        shutil.rmtree(out.parent, ignore_errors=True)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        out.parent.mkdir(parents=True)
        m = run_measured([*edgeport, "export", "--target", "cpu", "--model", str(model), "--out", str(out), *extra],
                         watch=[tmp, out.parent, caches], env=env, log=work / f"{name}.log", cage_bytes=cage)
        if m.returncode:
            raise SystemExit(f"{name} failed (exit {m.returncode}):\n{m.log_tail}")
        manifest = json.loads((out / "manifest.json").read_text())
        m.extra = {"artifact_bytes": sum(f["bytes"] for f in manifest["files"]),
                   "imatrix": {k: manifest["quantization"]["imatrix"].get(k) for k in ("used", "seconds", "chunks",
                                                                                         "cached")},
                   "parity_passed": manifest["parity"]["passed"],
                   "parity_seconds": manifest["parity"].get("seconds")}
        print(f"{name}: {m.seconds:.0f} s, peak anon {_gib(m.peak_anon_bytes)}, peak RSS {_gib(m.peak_rss_bytes)}, "
              f"peak disk beyond the source {_gib(m.peak_disk_bytes)}"
              + (f", memory cgroup peak {_gib(m.cage['peak_charged_bytes'])} of {_gib(cage)}" if m.cage else ""),
              flush=True)
        return m

    art = work / "export" / "artifact"
    if "export" not in skip:
        res["steps"]["export"] = vars(export("export", art))
        save()

    if "llama.cpp" not in skip:
        theirs: dict = {}
        f16, imat, q = work / "llama.cpp-f16.gguf", work / "llama.cpp-imatrix.gguf", work / "llama.cpp-Q4_K_M.gguf"
        text = calibration_text(work / "calibration.txt")
        arch = json.loads((model / "config.json").read_text())["architectures"][0]
        chunks = (res["steps"].get("export", {}).get("extra", {}).get("imatrix") or {}).get("chunks")
        for name, cmd in (
                ("convert", converter_command(converter_script(), model, f16, arch, outtype="auto")),
                # the same budget as ours: our export's chunk count (all of the text otherwise), no perplexity
                ("imatrix", [str(tool("llama-imatrix")), "-m", str(f16), "-f", str(text), "-o", str(imat),
                             "-c", str(CHUNK), "--no-ppl", *(["--chunks", str(chunks)] if chunks else []),
                             *repack_args("llama-imatrix")]),
                # MXFP4 experts kept as they are, as ours (llama-quantize refuses to requantize MXFP4)
                ("quantize", [str(tool("llama-quantize")), "--imatrix", str(imat),
                              *[a for t in ("gate", "up", "down") for a in ("--tensor-type", f"ffn_{t}_exps=mxfp4")],
                              str(f16), str(q), "Q4_K_M"])):
            m = run_measured(cmd, watch=[work / "llama.cpp-f16.gguf", imat, q], log=work / f"llama.cpp-{name}.log")
            if m.returncode:
                raise SystemExit(f"llama.cpp {name} failed (exit {m.returncode}):\n{m.log_tail}")
            theirs[name] = vars(m)
            print(f"llama.cpp {name}: {m.seconds:.0f} s, peak anon {_gib(m.peak_anon_bytes)}", flush=True)
        res["steps"]["llama.cpp"] = theirs
        save()
        for f in (f16, imat, q):
            f.unlink(missing_ok=True)

    if "plan" not in skip and art.exists():
        r = subprocess.run([*edgeport, "plan", "--device", a.device, "--model", str(model), "--target", "cpu",
                            "--json"], capture_output=True, text=True)
        res["steps"]["plan"] = json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr[-500:]}
        save()

    if "memory" not in skip and art.exists():
        res["steps"]["memory"] = server_memory(edgeport, model, art, a.device, work)
        save()

    if "serve" not in skip and art.exists():
        # the front and its own llama-server, the load alternated between them; a random-weight
        # model's tokens biased to plain words, so that first-token times are seen (bench_serve.py)
        m = run_measured([sys.executable, "-m", "edgeport.benchmarking.bench_serve", "--artifact", str(art),
                          "--clients", a.clients, "--requests", str(a.requests), "--rounds", str(a.rounds),
                          "--max-tokens", str(a.max_tokens), "--endpoint", "completions", "--visible", "64",
                          "--only", "front", "llama-server",
                          "--parallel", str(max(int(c) for c in a.clients.split(","))),
                          "--out", str(work / "serve.json")], watch=[], log=work / "serve.log", cage_bytes=cage)
        res["steps"]["serve"] = ({**json.loads((work / "serve.json").read_text()), "cage": m.cage}
                                 if m.returncode == 0 else {"error": m.log_tail, "cage": m.cage})
        save()

    if "publish" not in skip and art.exists():
        layout = work / "layout"
        shutil.rmtree(layout, ignore_errors=True)
        push = run_measured([*edgeport, "push", "--artifact", str(art), "--to", f"file://{layout}:v1"],
                            watch=[layout], log=work / "push.log", cage_bytes=cage)
        pulled = work / "pulled"
        shutil.rmtree(pulled, ignore_errors=True)
        pull = run_measured([*edgeport, "pull", "--from", f"file://{layout}:v1", "--out", str(pulled)],
                            watch=[pulled], log=work / "pull.log", cage_bytes=cage)
        res["steps"]["publish"] = {"push": vars(push), "pull": vars(pull)}
        save()
        shutil.rmtree(layout, ignore_errors=True)
        shutil.rmtree(pulled, ignore_errors=True)

    # last: the least it can show is what the cache saves
    if "reexport" not in skip:
        # another scheme that takes the importance matrix (Q5_K_M and up are quantized without one)
        res["steps"]["reexport"] = vars(export("reexport", work / "reexport" / "artifact", "--quantization", "Q3_K_M"))
        save()
        shutil.rmtree(work / "reexport", ignore_errors=True)

    res["goals"] = goals(res)
    a.json.write_text(json.dumps(res, indent=2) + "\n")
    print(markdown(res))
    print(f"wrote {a.json}")
    if a.figure:
        figure(res, a.figure)


def _gguf(art: Path) -> Path:
    manifest = json.loads((art / "manifest.json").read_text())
    return art / manifest["runtime"]["model_file"]


def server_memory(edgeport: list[str], model: Path, art: Path, device: str, work: Path, ctx: int = 4096) -> dict:
    """llama-server's peak RSS at `ctx` (one sequence; the command the front runs) while it
    serves a prompt of PEAK_PROMPT_TOKENS (several full 512-token micro-batches: the compute
    buffer the plan counts is touched only by a full one, and a short prompt leaves most of it
    untouched), beside what `plan --llama-server` predicts for the same context, and the
    GGUF's bytes beside the plan's."""
    import httpx

    gguf = _gguf(art)
    r = subprocess.run([*edgeport, "plan", "--device", device, "--model", str(model), "--target", "cpu",
                        "--llama-server", "--context", str(ctx), "--concurrency", "1", "--json"],
                       capture_output=True, text=True)
    if r.returncode:
        return {"error": r.stderr[-500:]}
    plan = json.loads(r.stdout)
    port = free_port()
    memory: dict = {}
    with _started(llama_server_command(tool("llama-server"), gguf, port, ctx, 1, None), "/health", port,
                  work / "llama-server-memory.log", memory) as url:
        text = "\n\n".join(json.loads(x)["text"] for x in DEFAULT_CALIBRATION.read_text().splitlines() if x.strip())
        ids = httpx.post(f"{url}/tokenize", json={"content": text}, timeout=600).json()["tokens"][:PEAK_PROMPT_TOKENS]
        httpx.post(f"{url}/completion", json={"prompt": ids, "n_predict": 16, "cache_prompt": False},
                   timeout=1800).raise_for_status()
    memory["prompt_tokens"] = len(ids)
    need = plan["pools"]["ram"]["need_bytes"]
    out = {"ctx": ctx, "gguf_bytes": gguf.stat().st_size, "plan_file_bytes": plan["weights"]["file_bytes"],
           "plan_need_bytes": need, "plan_parts": plan["pools"]["ram"]["parts"],
           "llama_server_peak_rss_bytes": memory.get("peak_rss_bytes"), "prompt_tokens": memory["prompt_tokens"]}
    out["file_error"] = out["plan_file_bytes"] / out["gguf_bytes"] - 1
    out["rss_error"] = need / out["llama_server_peak_rss_bytes"] - 1 if out["llama_server_peak_rss_bytes"] else None
    print(f"memory: GGUF {_gib(out['gguf_bytes'])} (plan {out['file_error']:+.2%}), llama-server peak RSS at ctx "
          f"{ctx} {_gib(out['llama_server_peak_rss_bytes'] or 0)} (plan {_gib(need)})", flush=True)
    return out


def goals(res: dict) -> list[dict]:
    """#21's goals, each with the number measured in this run (None where its step did not run)."""
    st = res["steps"]
    ex, re_, lc = st.get("export"), st.get("reexport"), st.get("llama.cpp")
    mem, serve = st.get("memory") or {}, st.get("serve") or {}
    rows = []

    def row(measure: str, value, goal: str, met) -> None:
        rows.append({"measure": measure, "value": value, "goal": goal, "met": met})

    if ex:
        row("default cpu export, parity on: minutes", ex["seconds"] / 60, "<= 45", ex["seconds"] <= 45 * 60)
        row("export peak anonymous memory: GiB", ex["peak_anon_bytes"] / 2**30, "<= 4",
            ex["peak_anon_bytes"] <= 4 * 2**30)
        row("export peak RSS incl. mapped weights: GiB", ex["peak_rss_bytes"] / 2**30, "reported", None)
        art = ex["extra"]["artifact_bytes"]
        row("export peak disk beyond the source ÷ artifact", ex["peak_disk_bytes"] / art, "<= 1.2",
            ex["peak_disk_bytes"] <= 1.2 * art)
    if ex and lc:
        theirs = sum(s["seconds"] for s in lc.values())
        row("export time ÷ llama.cpp convert+imatrix+quantize", ex["seconds"] / theirs, "<= 0.8",
            ex["seconds"] <= 0.8 * theirs)
        their_anon = max(s["peak_anon_bytes"] for s in lc.values())
        row("export peak anonymous ÷ llama.cpp's", ex["peak_anon_bytes"] / their_anon, "<= 0.5",
            ex["peak_anon_bytes"] <= 0.5 * their_anon)
    if ex and re_:
        row("re-export (imatrix cached) ÷ first export", re_["seconds"] / ex["seconds"], "<= 0.3",
            re_["seconds"] <= 0.3 * ex["seconds"])
    if mem.get("gguf_bytes"):
        row("plan vs measured GGUF bytes", mem["file_error"], "within ±3 %", abs(mem["file_error"]) <= 0.03)
    if mem.get("rss_error") is not None:
        row(f"plan vs llama-server peak RSS at ctx {mem['ctx']}", mem["rss_error"], "within ±3 %",
            abs(mem["rss_error"]) <= 0.03)
    for r in serve.get("ratios", []):
        if "front_over_llama_server_tps" in r:
            row(f"front ÷ llama-server decode, {r['clients']} clients", r["front_over_llama_server_tps"], ">= 0.97",
                r["front_over_llama_server_tps"] >= 0.97)
            row(f"front − llama-server TTFT p50, {r['clients']} clients: ms", r["front_minus_llama_server_ttft_p50_ms"],
                "<= 5", r["front_minus_llama_server_ttft_p50_ms"] <= 5)
    if limit := res.get("memory_limit_bytes"):
        caged = {"export": ex, "serve": serve, "re-export": re_, **(st.get("publish") or {})}
        for name, step in caged.items():
            if step and step.get("cage"):
                c = step["cage"]
                ok = not step.get("error") and step.get("returncode", 0) == 0 and c["oom_kills"] == 0
                row(f"{name} in a {limit / 2**30:g} GiB memory cgroup: peak charge GiB",
                    c["peak_charged_bytes"] / 2**30, "completes, no OOM kill", ok)
    return rows


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [f"{res['model']} ({res['source_bytes'] / 2**30:.1f} GiB source) on {m['cpu']}, {m['cores']} cores, "
             f"{m['memory_gib']} GiB", "", "| measure | measured | goal | met |", "|---|---|---|---|"]
    for g in res["goals"]:
        v = g["value"]
        shown = f"{v:+.2%}" if "±" in g["goal"] else f"{v:.2f}" if isinstance(v, float) else str(v)
        lines.append(f"| {g['measure']} | {shown} | {g['goal']} | "
                     f"{'—' if g['met'] is None else 'yes' if g['met'] else '**no**'} |")
    return "\n".join(lines)


def figure(res: dict, path: Path) -> None:
    """Wall time and peak memory, edgeport's export beside llama.cpp's three steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = res["steps"]
    rows = []
    if "export" in steps:
        rows.append(("edgeport export", steps["export"]["seconds"], steps["export"]["peak_anon_bytes"],
                     steps["export"]["peak_rss_bytes"]))
    if "reexport" in steps:
        rows.append(("edgeport re-export", steps["reexport"]["seconds"], steps["reexport"]["peak_anon_bytes"],
                     steps["reexport"]["peak_rss_bytes"]))
    if "llama.cpp" in steps:
        t = steps["llama.cpp"]
        rows.append(("llama.cpp convert+imatrix+quantize", sum(s["seconds"] for s in t.values()),
                     max(s["peak_anon_bytes"] for s in t.values()), max(s["peak_rss_bytes"] for s in t.values())))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 3.5))
    names = [r[0] for r in rows]
    ax1.barh(names, [r[1] / 60 for r in rows])
    ax1.set_xlabel("minutes")
    ax2.barh(names, [r[3] / 2**30 for r in rows], label="RSS (mapped weights included)")
    ax2.barh(names, [r[2] / 2**30 for r in rows], label="anonymous")
    ax2.set_xlabel("peak GiB")
    ax2.legend(fontsize=7)
    fig.suptitle(f"{res['model']} on {res['machine']['cpu']}, {res['machine']['cores']} cores", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
