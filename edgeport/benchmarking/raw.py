"""The same workload through the raw backend, so the wrapper's cost is a ratio: llama.cpp's
own `llama-bench` for GGUF (pp = prefill, tg at depth = decode after the prompt, as llama.cpp
users read them), onnxruntime-genai's own generation loop for ONNX. Each runs in a child
process; its peak RSS comes from wait4."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

from edgeport.core.errors import RuntimeUnavailable
from edgeport.core.llama_tools import repack_args, tool

# A forked child's peak RSS counts the parent's pages at fork time (Linux saves the old mm's
# high-water mark at exec; vfork shares it), so a big parent inflates every child it measures.
# Children are started from this small shim (`python -S`, a few MB), which reports the child's
# own rusage: the figure is the child's peak plus at most the shim's size.
_SHIM = """
import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
_, status, ru = os.wait4(pid, 0)
sys.stderr.write(f"\\n@@peak_rss_kib={ru.ru_maxrss}\\n")
sys.exit(os.waitstatus_to_exitcode(status))
"""


def _run(cmd: list[str], stdin: str | None = None) -> tuple[str, float]:
    """(stdout, peak RSS MiB) of one child process."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.run([sys.executable, "-S", "-c", _SHIM, *cmd], input=(stdin or "").encode(),
                           stdout=out, stderr=err, check=False)
        out.seek(0)
        err.seek(0)
        text, etext = out.read().decode(), err.read().decode()
    etext, _, rss = etext.rpartition("\n@@peak_rss_kib=")
    if p.returncode:
        tail = (etext or text).strip().splitlines()[-1:] or [f"exit {p.returncode}"]
        raise RuntimeUnavailable(f"{Path(cmd[0]).name} failed: {tail[0][:200]}")
    return text, int(rss.strip() or 0) / 1024


def llama_bench(gguf: Path, prompt_tokens: int, new_tokens: int, reps: int, threads: int) -> dict:
    """pp<prompt_tokens> and tg<new_tokens> at depth <prompt_tokens>, llama-bench's JSON."""
    exe = tool("llama-bench")
    base = [str(exe), "-m", str(gguf), "-r", str(reps), "-t", str(threads), "-o", "json", *repack_args("llama-bench")]
    pp_out, pp_rss = _run([*base, "-p", str(prompt_tokens), "-n", "0"])
    tg_out, tg_rss = _run([*base, "-p", "0", "-n", str(new_tokens), "-d", str(prompt_tokens)])
    pp, tg = json.loads(pp_out)[0], json.loads(tg_out)[0]
    return {"backend": "llama-bench", "prefill_tps": pp["avg_ts"], "prefill_tps_stddev": pp["stddev_ts"],
            "decode_tps": tg["avg_ts"], "decode_tps_stddev": tg["stddev_ts"],
            "ttft_s": prompt_tokens / pp["avg_ts"], "peak_rss_mib": max(pp_rss, tg_rss),
            "build": pp.get("build_commit"), "threads": pp.get("n_threads")}


_GENAI = textwrap.dedent("""
    import json, sys, time
    import numpy as np
    import onnxruntime_genai as og
    a = json.load(sys.stdin)
    model = og.Model(a["dir"])
    rows = []
    for _ in range(a["warmup"] + a["reps"]):
        p = og.GeneratorParams(model)
        p.set_search_options(max_length=len(a["ids"]) + a["new"] + 1, do_sample=False)
        g = og.Generator(model, p)
        t0 = time.perf_counter()
        g.append_tokens(np.asarray(a["ids"], np.int32))
        g.get_next_tokens()
        t1 = time.perf_counter()
        for _ in range(a["new"] - 1):
            g.generate_next_token()
        t2 = time.perf_counter()
        rows.append([t1 - t0, t2 - t1])
        del g
    print(json.dumps(rows[a["warmup"]:]))
""")


def genai(model_dir: Path, ids: list[int], new_tokens: int, reps: int, warmup: int = 1) -> dict:
    """onnxruntime-genai's own greedy loop: append the prompt, then generate_next_token."""
    import statistics

    out, rss = _run([sys.executable, "-c", _GENAI],
                    json.dumps({"dir": str(model_dir), "ids": ids, "new": new_tokens, "reps": reps, "warmup": warmup}))
    rows = json.loads(out)
    ttft = statistics.median(r[0] for r in rows)
    decode = statistics.median((new_tokens - 1) / r[1] for r in rows)
    return {"backend": "onnxruntime-genai", "ttft_s": ttft, "prefill_tps": len(ids) / ttft,
            "decode_tps": decode, "peak_rss_mib": rss}
