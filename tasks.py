"""The checkout's commands (Invoke): every `edgeport` command (`invoke export …` is `edgeport export …`)
plus the dev chores: test, lint, bench-export, bench-requant. `invoke --list`; `invoke --help export`."""

from __future__ import annotations

import sys

from invoke import Collection, task

from edgeport.cli import TASKS, models


@task(help={"layers": "comma-separated layer counts (default 2,4)",
            "with_llama_cpp": "also time llama.cpp's own converter on the same input",
            "workdir": "where synthetic checkpoints go (needs ~0.6 GB per layer)"})
def bench_export(c, layers="2,4", with_llama_cpp=False, workdir="/tmp/edgeport-bench"):
    """Benchmark: convert synthetic gpt-oss-20b-sized MXFP4 checkpoints; peak RSS and time."""
    args = f"--layers {layers} --workdir {workdir}" + (" --with-llama-cpp" if with_llama_cpp else "")
    c.run(f"{sys.executable} -m edgeport.benchmarking.bench_export {args}", pty=False)


@task(help={"layers": "comma-separated layer counts (default 1,2,4)",
            "workdir": "where synthetic checkpoints go (~1.7 GB per layer + 2.3 GB)"})
def bench_requant(c, layers="1,2,4", workdir="/tmp/edgeport-bench-requant"):
    """Benchmark: BF16 gpt-oss-20b-sized layers -> MXFP4 checkpoint; time per layer, peak RSS."""
    c.run(f"{sys.executable} -m edgeport.benchmarking.bench_requant --layers {layers} --workdir {workdir}", pty=False)


@task(help={"slow": "also run the slow suites (llama.cpp converter oracle, the wheel installs)"})
def test(c, slow=False):
    """Run the test suite (the README's test command)."""
    models(c)
    c.run(f"{sys.executable} -m pytest -q" + (" -m 'slow or not slow'" if slow else ""), pty=False)


@task
def lint(c):
    """ruff check."""
    c.run(f"{sys.executable} -m ruff check .")


namespace = Collection(*TASKS, test, lint, bench_export, bench_requant)
