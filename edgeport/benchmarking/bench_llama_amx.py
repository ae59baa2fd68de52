"""llama.cpp on AMX CPUs: speed of the options, each in its own process (a crash is data).

For each GGUF type and extra-buffer-type setting: prompt processing and generation speed
on a GGUF made from the bundled tiny gpt-oss (or --gguf FILE), or the signal it died of.

    python -m edgeport.benchmarking.bench_llama_amx [--types F16,Q8_0,Q4_K_M] [--tokens 512]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from edgeport.core.architectures import for_config
from edgeport.core.llama_log import cpu_has_amx
from edgeport.core.source import Source
from edgeport.export.gguf_convert import write_gguf
from edgeport.export.gguf_quantize import quantize
from edgeport.models import MODELS

ROOT = Path(__file__).resolve().parent.parent

CHILD = """
import json, sys, time
from edgeport.runtimes.llamacpp import LlamaCppRuntime
rt = LlamaCppRuntime({path!r}, n_ctx=2048)
ids = [(i * 7919) % 1000 + 10 for i in range({n})]
rt.logits(ids[:8])
t = time.perf_counter(); rt.logits(ids); pp = {n} / (time.perf_counter() - t)
t = time.perf_counter(); out = rt.greedy(ids[:16], 64); tg = 64 / (time.perf_counter() - t)
print(json.dumps({{"pp_tok_s": pp, "tg_tok_s": tg}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--types", default="F16,Q8_0,Q4_K_M")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--model", default=str(MODELS / "tiny-llama"))
    a = ap.parse_args()

    print(f"CPU has AMX: {cpu_has_amx()}")
    with tempfile.TemporaryDirectory() as tmp:
        src = Source.open(a.model)
        f16 = Path(tmp) / "f16.gguf"
        write_gguf(src, for_config(src.config), f16)
        for t in a.types.split(","):
            path = f16
            if t != "F16":
                path = Path(tmp) / f"{t}.gguf"
                quantize(f16, path, t)
            for extra in ("1", "0"):
                r = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), path=str(path), n=a.tokens)],
                                   capture_output=True, text=True, env={"EDGEPORT_LLAMA_EXTRA_BUFTS": extra,
                                                                        "PATH": "/usr/bin:/bin"})
                res = json.loads(r.stdout.strip().splitlines()[-1]) if r.returncode == 0 else \
                    {"crashed": f"exit {r.returncode}" + (" (SIGSEGV)" if r.returncode == -11 else "")}
                print(json.dumps({"type": t, "extra_bufts": extra == "1", **res}), flush=True)


if __name__ == "__main__":
    main()
