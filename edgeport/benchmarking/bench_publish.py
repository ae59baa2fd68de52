"""Push and pull a multi-GB GGUF artifact through a real local registry (Debian's
docker-registry, auth on) and a file:// OCI layout: throughput and the peak RSS of each
`edgeport push` / `edgeport pull` process (goal: under 300 MB whatever the artifact's size).

The artifact is synthetic: a valid GGUF of random F16 tensors (its header is what Docker Model
Runner's config reads) with a manifest listing its files and no parity report, so it is pushed
with --force, as the output says."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from edgeport.benchmarking.registry import PASSWORD, USER, LocalRegistry
from edgeport.core import manifest as mf


def make_artifact(out: Path, gib: float) -> Path:
    """A GGUF of ~`gib` GiB written tensor by tensor (256 MiB each), and its manifest."""
    import gguf
    import numpy as np


    if (out / mf.NAME).is_file():
        return out
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    shape, n = (8192, 16384), max(1, round(gib * 2**30 / (8192 * 16384 * 2)))
    path = tmp / "synthetic-F16.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(n)
    w.add_context_length(4096)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_F16)
    for i in range(n):
        w.add_tensor_info(f"blk.{i}.ffn_up.weight", shape, np.dtype(np.float16), shape[0] * shape[1] * 2)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    rng = np.random.default_rng(0)
    for _ in range(n):
        w.write_tensor_data(rng.standard_normal(shape, dtype=np.float32).astype(np.float16))
    w.close()
    m = {"schema": mf.SCHEMA, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
         "source": {"model": "synthetic", "path": None, "revision": None, "files": {}},
         "architecture": "llama", "target": "cpu", "format": "gguf",
         "runtime": {"name": "llama.cpp", "model_file": path.name}, "model": {},
         "quantization": {"requested": "F16", "applied": {"scheme": "F16"}}, "tools": mf.tool_versions(),
         "parity": None, "note": "synthetic transfer-benchmark artifact: random tensors, no model behind it"}
    mf.seal(tmp, m)  # hashes every file into the manifest and writes it
    os.replace(tmp, out)
    return out


def measured(cmd: list[str], env: dict) -> dict:
    """Wall time and peak RSS of one command (its own rusage, via wait4)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read().decode()
    _, status, ru = os.wait4(p.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out}")
    return {"seconds": round(time.perf_counter() - t, 2), "peak_rss_mib": round(ru.ru_maxrss / 1024, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gib", type=float, default=4.25, help="artifact size (default 4.25 GiB)")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/edgeport-bench-publish"))
    ap.add_argument("--keep", action="store_true", help="keep the synthetic artifact for the next run")
    ap.add_argument("--make-only", action="store_true", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.make_only:
        make_artifact(a.workdir / "artifact", a.gib)
        return


    a.workdir.mkdir(parents=True, exist_ok=True)
    # in a child: this process must stay small, since a forked child's peak RSS counts the parent's
    subprocess.run([sys.executable, __file__, "--make-only", "--gib", str(a.gib), "--workdir", str(a.workdir)],
                   check=True)
    art = a.workdir / "artifact"
    size = sum(p.stat().st_size for p in art.iterdir())
    env = dict(os.environ, EDGEPORT_REGISTRY_USER=USER, EDGEPORT_REGISTRY_PASSWORD=PASSWORD)
    cli = [sys.executable, "-m", "edgeport"]
    results = {"artifact_bytes": size}
    try:
        with LocalRegistry(a.workdir) as reg:
            uri = f"oci://{reg.host}/bench/synthetic:v1"
            results["registry_push"] = measured([*cli, "push", "--artifact", str(art), "--to", uri,
                                                 "--insecure", "--force"], env)
            results["registry_pull"] = measured([*cli, "pull", "--from", uri, "--out",
                                                 str(a.workdir / "pulled"), "--insecure"], env)
            shutil.rmtree(a.workdir / "pulled")
        layout = f"file://{a.workdir / 'layout'}:v1"
        results["layout_push"] = measured([*cli, "push", "--artifact", str(art), "--to", layout, "--force"], env)
        results["layout_pull"] = measured([*cli, "pull", "--from", layout, "--out", str(a.workdir / "pulled")], env)
    finally:
        shutil.rmtree(a.workdir / "pulled", ignore_errors=True)
        shutil.rmtree(a.workdir / "layout", ignore_errors=True)
        if not a.keep:
            shutil.rmtree(art, ignore_errors=True)
    for v in results.values():
        if isinstance(v, dict):
            v["MB_per_s"] = round(size / 1e6 / v["seconds"], 1)
    print(json.dumps(results, indent=2))
    worst = max(v["peak_rss_mib"] for v in results.values() if isinstance(v, dict))
    print(f"peak RSS {worst} MiB (goal < 300 MB): {'ok' if worst * 2**20 < 300e6 else 'OVER'}")


if __name__ == "__main__":
    main()
