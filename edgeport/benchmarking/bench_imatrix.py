"""Benchmark: the importance-matrix step (in-process, export/imatrix.py) on synthetic checkpoints
with gpt-oss-20b's real dimensions (edgeport/benchmarking/synthetic.py, MXFP4 experts, random values), converted
to the GGUF the exporter feeds it. Each measurement runs in a fresh child process: wall time and
peak RSS of the imatrix step alone (the model file is mmapped, so RSS counts the pages it touches).
Per-layer cost is what scales to the full 24 layers.

    python -m edgeport.benchmarking.bench_imatrix --layers 1,2 --chunks 2
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

from edgeport.benchmarking.synthetic import build_in_subprocess  # noqa: E402

CHILD = """
import json, resource, sys, time
from pathlib import Path
from edgeport.export.imatrix import compute, load_calibration
t = time.perf_counter()
m = compute(Path({gguf!r}), load_calibration(), max_chunks={chunks})
print(json.dumps({{"seconds": time.perf_counter() - t, "chunks": m.chunk_count, "tokens": m.tokens,
                  "entries": len(m.sums), "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="1")
    ap.add_argument("--chunks", type=int, default=2)
    ap.add_argument("--workdir", default="/tmp/edgeport-bench-imatrix")
    a = ap.parse_args()
    work = Path(a.workdir)
    rows = []
    for n in [int(x) for x in a.layers.split(",")]:
        model = build_in_subprocess(work / f"gpt-oss-20b-synthetic-{n}L", n, "mxfp4")
        gguf = work / f"synthetic-{n}L-F16.gguf"
        if not gguf.exists():
            subprocess.run([sys.executable, "-c", f"import sys; "
                            "from pathlib import Path\nfrom edgeport.core.source import Source\n"
                            "from edgeport.core.architectures import for_config\n"
                            "from edgeport.export.gguf_convert import write_gguf\n"
                            f"s = Source.open({str(model)!r})\n"
                            f"write_gguf(s, for_config(s.config), Path({str(gguf)!r}))"],
                           check=True)
        r = subprocess.run([sys.executable, "-c", CHILD.format(root=str(ROOT), gguf=str(gguf), chunks=a.chunks)],
                           capture_output=True, text=True)
        if r.returncode != 0:
            raise SystemExit(f"imatrix failed on {n} layers:\n{r.stderr[-2000:]}")
        row = {"layers": n, "gguf_gib": gguf.stat().st_size / 2**30, **json.loads(r.stdout.strip().splitlines()[-1])}
        row["seconds_per_chunk"] = row["seconds"] / row["chunks"]
        rows.append(row)
        print(json.dumps(row), flush=True)
    print(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
