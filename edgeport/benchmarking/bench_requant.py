"""Benchmark: re-quantize a synthetic BF16 gpt-oss (a fine-tune's shape) with gpt-oss-20b's
dimensions (hidden 2880, 32 experts) to the MXFP4 checkpoint layout, for several layer
counts; prints wall time, time per layer and peak RSS (each run in its own process).

Peak RSS must not grow with the layer count: experts are quantized one at a time and each
layer is its own shard, so a 24-layer 20B fine-tune fits a 16 GB machine.

    python -m edgeport.benchmarking.bench_requant --layers 1,2,4
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from edgeport.benchmarking.synthetic import build_in_subprocess  # noqa: E402

CHILD = """
import json, resource, sys, time
from pathlib import Path
from edgeport.core.source import Source
from edgeport.export.hf_mxfp4 import write_mxfp4_checkpoint
t = time.perf_counter()
write_mxfp4_checkpoint(Source.open({model!r}), Path({out!r}))
print(json.dumps([time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss]))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="1,2,4")
    ap.add_argument("--workdir", default="/tmp/edgeport-bench-requant")
    a = ap.parse_args()
    work = Path(a.workdir)
    rows = []
    for n in [int(x) for x in a.layers.split(",")]:
        model = build_in_subprocess(work / f"bf16-{n}L", n, "bf16")
        out = work / f"mxfp4-{n}L"
        shutil.rmtree(out, ignore_errors=True)
        r = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), model=str(model), out=str(out))],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(r.stderr[-2000:])
        wall, rss_kb = json.loads(r.stdout.strip().splitlines()[-1])
        size = sum(p.stat().st_size for p in out.glob("*.safetensors")) / 2**30
        rows.append({"layers": n, "seconds": wall, "seconds_per_layer": wall / n,
                     "peak_rss_gib": rss_kb / 2**20, "out_gib": size})
        print(f"{n:3d} layers  {wall:7.1f} s  ({wall / n:5.1f} s/layer incl. embeddings)  "
              f"peak RSS {rss_kb / 2**20:5.2f} GiB  out {size:5.2f} GiB", flush=True)
        shutil.rmtree(out)
        shutil.rmtree(model)
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
