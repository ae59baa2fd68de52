"""Benchmark: HF -> GGUF conversion of synthetic checkpoints with gpt-oss-20b's real
dimensions and MXFP4 layout (random values), for several layer counts.

Prints wall time and peak RSS of each conversion (a fresh process each, so peaks do not
mix), next to llama.cpp's own converter on the same input with --with-llama-cpp. Peak RSS
must not grow with the layer count: conversion streams one chunk at a time.

    python -m edgeport.benchmarking.bench_export --layers 2,4,24 --with-llama-cpp
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from edgeport.benchmarking.llama_cpp_converter import converter_command, converter_script
from edgeport.benchmarking.synthetic import build_in_subprocess


def ours_command(model: Path, out: Path) -> list[str]:
    code = (f"import sys; "
            "from pathlib import Path\nfrom edgeport.core.source import Source\n"
            "from edgeport.core.architectures import for_config\n"
                            "from edgeport.export.gguf_convert import write_gguf\n"
            f"s = Source.open({str(model)!r}); write_gguf(s, for_config(s.config), Path({str(out)!r}))")
    return [sys.executable, "-c", code]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", default="2,4")
    ap.add_argument("--workdir", default="/tmp/edgeport-bench")
    ap.add_argument("--with-llama-cpp", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep synthetic checkpoints and outputs")
    a = ap.parse_args()
    work = Path(a.workdir)
    rows = []
    for n in [int(x) for x in a.layers.split(",")]:
        model = build_in_subprocess(work / f"gpt-oss-20b-synthetic-{n}L", n, "mxfp4")
        size = sum(p.stat().st_size for p in model.glob("*.safetensors")) / 2**30
        # one child process per measurement: RUSAGE_CHILDREN's max is over all children so far,
        # so run each in its own python to get its own peak
        for who, cmd in [("edgeport", ours_command(model, work / f"ours-{n}.gguf"))] + (
                [("llama.cpp", None)] if a.with_llama_cpp else []):
            if who == "llama.cpp":

                cmd = converter_command(converter_script(), model, work / f"theirs-{n}.gguf", "GptOssForCausalLM",
                                        outtype="auto")
            wrapper = [sys.executable, "-c",
                       "import resource, subprocess, sys, json, time; t=time.perf_counter(); "
                       "r=subprocess.run(sys.argv[1:]); "
                       "print(json.dumps([r.returncode, time.perf_counter()-t, "
                       "resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss]))", *cmd]
            r = subprocess.run(wrapper, capture_output=True, text=True)
            rc, wall, rss_kb = json.loads(r.stdout.strip().splitlines()[-1])
            if rc != 0:
                raise SystemExit(f"{who} failed on {n} layers:\n{r.stderr[-2000:]}")
            out = work / (f"ours-{n}.gguf" if who == "edgeport" else f"theirs-{n}.gguf")
            rows.append((n, size, who, wall, rss_kb / 2**20, out.stat().st_size / 2**30))
            print(f"{n:3d} layers  {size:6.2f} GiB in  {who:10s}  {wall:7.1f} s  peak RSS {rss_kb / 2**20:5.2f} GiB"
                  f"  out {out.stat().st_size / 2**30:6.2f} GiB", flush=True)
            if not a.keep:
                out.unlink()
        if not a.keep:
            shutil.rmtree(model)
    print(json.dumps([dict(zip(("layers", "in_gib", "tool", "seconds", "peak_rss_gib", "out_gib"), r, strict=True))
                      for r in rows]))


if __name__ == "__main__":
    main()
