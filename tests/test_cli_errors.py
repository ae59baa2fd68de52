"""Every user mistake on serve, run, chat, plan, push, pull, deploy and bench ends in one line on stderr and
exit 2, never a traceback: non-numbers, numbers out of range, missing files, bad URIs, unknown
words, unknown flags, missing options. Each is caught before any model loads, so the whole table
runs in seconds (the commands run as real subprocesses: `invoke …` in the checkout, the `edgeport` console
script, and `python -m edgeport.serving …`). And `edgeport COMMAND --help` answers for every command."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.conftest import ROOT

INVOKE = [sys.executable, "-m", "invoke"]
EDGEPORT = [str(Path(sys.executable).parent / "edgeport")]  # the console script (pip install -e .)
G20 = "edgeport/planning/configs/gpt-oss-20b.json"
SERVING = [sys.executable, "-m", "edgeport.serving"]
MISSING = "/nonexistent/edgeport-artifact"
UNSET = "EDGEPORT_TEST_UNSET_VARIABLE"

# (id, command line, a word the one line must name); {dir}: an existing directory that is no
# artifact, {art}: a directory with a manifest.json (what is checked before anything loads)
CASES = [
    # invoke serve
    ("serve-port-word", [*INVOKE, "serve", "--artifact", "{art}", "--port", "abc"], "--port"),
    ("serve-port-too-big", [*INVOKE, "serve", "--artifact", "{art}", "--port", "70000"], "--port"),
    ("serve-port-negative", [*INVOKE, "serve", "--artifact", "{art}", "--port=-1"], "--port"),
    ("serve-port-zero", [*INVOKE, "serve", "--artifact", "{art}", "--port", "0"], "--port"),
    ("serve-parallel-word", [*INVOKE, "serve", "--artifact", "{art}", "--parallel", "four"], "--parallel"),
    ("serve-parallel-zero", [*INVOKE, "serve", "--artifact", "{art}", "--parallel", "0"], "--parallel"),
    ("serve-parallel-negative", [*INVOKE, "serve", "--artifact", "{art}", "--parallel=-2"], "--parallel"),
    ("serve-queue-word", [*INVOKE, "serve", "--artifact", "{art}", "--queue", "lots"], "--queue"),
    ("serve-queue-negative", [*INVOKE, "serve", "--artifact", "{art}", "--queue=-1"], "--queue"),
    ("serve-ctx-word", [*INVOKE, "serve", "--artifact", "{art}", "--ctx", "abc"], "--ctx"),
    ("serve-ctx-too-small", [*INVOKE, "serve", "--artifact", "{art}", "--ctx", "8"], "--ctx"),
    ("serve-ctx-float", [*INVOKE, "serve", "--artifact", "{art}", "--ctx", "4096.5"], "--ctx"),
    ("serve-threads-word", [*INVOKE, "serve", "--artifact", "{art}", "--threads", "many"], "--threads"),
    ("serve-threads-zero", [*INVOKE, "serve", "--artifact", "{art}", "--threads", "0"], "--threads"),
    ("serve-host-bad", [*INVOKE, "serve", "--artifact", "{art}", "--host", "999.1.1.1", "--port", "8123"],
     "999.1.1.1"),
    ("serve-api-key-unset", [*INVOKE, "serve", "--artifact", "{art}", "--api-key-env", UNSET], UNSET),
    ("serve-artifact-missing", [*INVOKE, "serve", "--artifact", MISSING], MISSING),
    ("serve-artifact-not-one", [*INVOKE, "serve", "--artifact", "{dir}"], "not an edgeport artifact"),
    ("serve-no-artifact", [*INVOKE, "serve"], "artifact"),
    ("serve-unknown-flag", [*INVOKE, "serve", "--artifact", "{art}", "--bogus", "1"], "--bogus"),
    ("serve-flag-without-value", [*INVOKE, "serve", "--artifact", "{art}", "--port"], "--port"),
    # python -m edgeport.serving (no Invoke, on a device)
    ("m-serving-port-too-big", [*SERVING, "--artifact", "{art}", "--port", "70000"], "--port"),
    ("m-serving-port-word", [*SERVING, "--artifact", "{art}", "--port", "abc"], "--port"),
    ("m-serving-port-negative", [*SERVING, "--artifact", "{art}", "--port", "-1"], "--port"),
    ("m-serving-parallel-zero", [*SERVING, "--artifact", "{art}", "--parallel", "0"], "--parallel"),
    ("m-serving-queue-negative", [*SERVING, "--artifact", "{art}", "--queue", "-3"], "--queue"),
    ("m-serving-ctx-word", [*SERVING, "--artifact", "{art}", "--ctx", "abc"], "--ctx"),
    ("m-serving-threads-zero", [*SERVING, "--artifact", "{art}", "--threads", "0"], "--threads"),
    ("m-serving-host-bad", [*SERVING, "--artifact", "{art}", "--host", "999.1.1.1"], "999.1.1.1"),
    ("m-serving-artifact-missing", [*SERVING, "--artifact", MISSING], MISSING),
    ("m-serving-no-artifact", [*SERVING], "--artifact"),
    ("m-serving-unknown-flag", [*SERVING, "--artifact", "{art}", "--bogus"], "--bogus"),
    # invoke run
    ("run-max-new-tokens-word", [*INVOKE, "run", "--artifact", "{dir}", "--prompt", "x", "--max-new-tokens", "lots"],
     "--max-new-tokens"),
    ("run-max-new-tokens-zero", [*INVOKE, "run", "--artifact", "{dir}", "--prompt", "x", "--max-new-tokens", "0"],
     "--max-new-tokens"),
    ("run-max-new-tokens-negative", [*INVOKE, "run", "--artifact", "{dir}", "--prompt", "x", "--max-new-tokens=-3"],
     "--max-new-tokens"),
    ("run-temperature-word", [*INVOKE, "run", "--artifact", "{dir}", "--prompt", "x", "--temperature", "hot"],
     "--temperature"),
    ("run-temperature-negative", [*INVOKE, "run", "--artifact", "{dir}", "--prompt", "x", "--temperature=-1"],
     "--temperature"),
    ("run-temperature-nan", [*INVOKE, "run", "--artifact", "{dir}", "--prompt", "x", "--temperature", "nan"],
     "--temperature"),
    ("run-top-p-zero", [*INVOKE, "run", "--artifact", "{dir}", "--prompt", "x", "--top-p", "0"], "--top-p"),
    ("run-top-p-above-one", [*INVOKE, "run", "--artifact", "{dir}", "--prompt", "x", "--top-p", "1.5"], "--top-p"),
    ("run-top-p-word", [*INVOKE, "run", "--artifact", "{dir}", "--prompt", "x", "--top-p", "most"], "--top-p"),
    ("run-seed-word", [*INVOKE, "run", "--artifact", "{dir}", "--prompt", "x", "--seed", "abc"], "--seed"),
    ("run-seed-negative", [*INVOKE, "run", "--artifact", "{dir}", "--prompt", "x", "--seed=-1"], "--seed"),
    ("run-effort-unknown", [*INVOKE, "run", "--artifact", "{dir}", "--prompt", "x", "--chat", "--reasoning-effort",
                            "extreme"], "extreme"),
    ("run-artifact-missing", [*INVOKE, "run", "--artifact", MISSING, "--prompt", "x"], MISSING),
    ("run-no-prompt", [*INVOKE, "run", "--artifact", "{dir}"], "prompt"),
    # invoke chat
    ("chat-max-new-tokens-word", [*INVOKE, "chat", "--artifact", "{dir}", "--max-new-tokens", "abc"],
     "--max-new-tokens"),
    ("chat-max-new-tokens-zero", [*INVOKE, "chat", "--artifact", "{dir}", "--max-new-tokens", "0"],
     "--max-new-tokens"),
    ("chat-temperature-word", [*INVOKE, "chat", "--artifact", "{dir}", "--temperature", "warm"], "--temperature"),
    ("chat-temperature-negative", [*INVOKE, "chat", "--artifact", "{dir}", "--temperature=-0.5"], "--temperature"),
    ("chat-seed-word", [*INVOKE, "chat", "--artifact", "{dir}", "--seed", "x"], "--seed"),
    ("chat-seed-negative", [*INVOKE, "chat", "--artifact", "{dir}", "--seed=-7"], "--seed"),
    ("chat-effort-unknown", [*INVOKE, "chat", "--artifact", "{dir}", "--reasoning-effort", "bogus"], "bogus"),
    ("chat-artifact-missing", [*INVOKE, "chat", "--artifact", MISSING], MISSING),
    # invoke plan
    ("plan-device-unknown", [*INVOKE, "plan", "--device", "toaster", "--model", G20],
     "toaster"),
    ("plan-model-missing", [*INVOKE, "plan", "--device", "rtx-4090", "--model", MISSING], MISSING),
    ("plan-target-unknown", [*INVOKE, "plan", "--device", "rtx-4090", "--model", G20,
                             "--target", "abacus"], "abacus"),
    ("plan-context-word", [*INVOKE, "plan", "--device", "rtx-4090", "--model", G20,
                           "--context", "long"], "--context"),
    ("plan-context-zero", [*INVOKE, "plan", "--device", "rtx-4090", "--model", G20,
                           "--context", "0"], "--context"),
    ("plan-concurrency-word", [*INVOKE, "plan", "--device", "rtx-4090", "--model",
                               G20, "--concurrency", "two"], "--concurrency"),
    ("plan-concurrency-negative", [*INVOKE, "plan", "--device", "rtx-4090", "--model",
                                   G20, "--concurrency=-2"], "--concurrency"),
    ("plan-quantization-unknown", [*INVOKE, "plan", "--device", "rtx-4090", "--model",
                                   G20, "--target", "cpu", "--quantization", "Q9_Z"],
     "Q9_Z"),
    ("plan-no-device", [*INVOKE, "plan", "--model", G20], "device"),
    # invoke push
    ("push-artifact-missing", [*INVOKE, "push", "--artifact", MISSING, "--to", "file:///tmp/x"], MISSING),
    ("push-uri-scheme", [*INVOKE, "push", "--artifact", "{art}", "--to", "ftp://host/repo"], "ftp://host/repo"),
    ("push-uri-no-scheme", [*INVOKE, "push", "--artifact", "{art}", "--to", "just-a-name"], "just-a-name"),
    ("push-uri-oci-empty", [*INVOKE, "push", "--artifact", "{art}", "--to", "oci://"], "oci://"),
    ("push-uri-hf-empty", [*INVOKE, "push", "--artifact", "{art}", "--to", "hf://"], "hf://"),
    # invoke pull
    ("pull-uri-scheme", [*INVOKE, "pull", "--from", "ftp://host/repo", "--out", "{new}"], "ftp://host/repo"),
    ("pull-uri-oci-empty", [*INVOKE, "pull", "--from", "oci://", "--out", "{new}"], "oci://"),
    ("pull-uri-hf-empty", [*INVOKE, "pull", "--from", "hf://", "--out", "{new}"], "hf://"),
    ("pull-layout-missing", [*INVOKE, "pull", "--from", f"file://{MISSING}", "--out", "{new}"], MISSING),
    ("pull-uri-oci-port", [*INVOKE, "pull", "--from", "oci://localhost:99999/repo:tag", "--out", "{new}"], "registry"),
    ("pull-no-out", [*INVOKE, "pull", "--from", "file:///tmp/x"], "out"),
    # invoke deploy
    ("deploy-image-tag-only", [*INVOKE, "deploy", "--artifact", "{art}", "--to", "kserve", "--device", "1x-l4",
                               "--modelcar", "oci://127.0.0.1:1/m:v1", "--image", "ghcr.io/ggml-org/llama.cpp:server",
                               "--out", "{new}"], "llama.cpp:server"),
    ("deploy-to-unknown", [*INVOKE, "deploy", "--artifact", "{art}", "--to", "helm", "--device", "1x-l4",
                           "--modelcar", "oci://127.0.0.1:1/m:v1", "--out", "{new}"], "helm"),
    ("deploy-replicas-zero", [*INVOKE, "deploy", "--artifact", "{art}", "--to", "kserve", "--device", "1x-l4",
                              "--modelcar", "oci://127.0.0.1:1/m:v1", "--replicas", "0", "--out", "{new}"],
     "--replicas"),
    ("deploy-no-modelcar", [*INVOKE, "deploy", "--artifact", "{art}", "--to", "kserve", "--device", "1x-l4"],
     "modelcar"),
    # invoke bench
    ("bench-nothing", [*INVOKE, "bench"], "--artifact"),
    ("bench-artifact-missing", [*INVOKE, "bench", "--artifact", MISSING], MISSING),
    ("bench-compare-missing", [*INVOKE, "bench", "--compare", f"{{art}},{MISSING}"], MISSING),
    ("bench-reps-word", [*INVOKE, "bench", "--artifact", "{art}", "--reps", "few"], "--reps"),
    ("bench-reps-zero", [*INVOKE, "bench", "--artifact", "{art}", "--reps", "0"], "--reps"),
    ("bench-new-tokens-zero", [*INVOKE, "bench", "--artifact", "{art}", "--new-tokens", "0"], "--new-tokens"),
    ("bench-new-tokens-word", [*INVOKE, "bench", "--artifact", "{art}", "--new-tokens", "x"], "--new-tokens"),
    ("bench-serve-not-url", [*INVOKE, "bench", "--serve", "localhost8000"], "localhost8000"),
    ("bench-serve-port", [*INVOKE, "bench", "--serve", "http://127.0.0.1:99999"], "99999"),
    ("bench-clients-words", [*INVOKE, "bench", "--serve", "http://127.0.0.1:9", "--clients", "a,b"], "--clients"),
    ("bench-clients-zero", [*INVOKE, "bench", "--serve", "http://127.0.0.1:9", "--clients", "1,0"], "--clients"),
    ("bench-requests-word", [*INVOKE, "bench", "--serve", "http://127.0.0.1:9", "--requests", "x"], "--requests"),
    ("bench-requests-negative", [*INVOKE, "bench", "--serve", "http://127.0.0.1:9", "--requests=-1"], "--requests"),
    ("bench-endpoint-unknown", [*INVOKE, "bench", "--serve", "http://127.0.0.1:9", "--endpoint", "embeddings"],
     "embeddings"),
    ("bench-api-key-unset", [*INVOKE, "bench", "--serve", "http://127.0.0.1:9", "--api-key-env", UNSET], UNSET),
    ("bench-out-dir-missing", [*INVOKE, "bench", "--serve", "http://127.0.0.1:9", "--out", f"{MISSING}/x.json"],
     MISSING),
    # the `edgeport` command itself: the same tasks, the same one line
    ("edgeport-serve-port-word", [*EDGEPORT, "serve", "--artifact", "{art}", "--port", "abc"], "--port"),
    ("edgeport-serve-ctx-too-small", [*EDGEPORT, "serve", "--artifact", "{art}", "--ctx", "8"], "--ctx"),
    ("edgeport-serve-no-artifact", [*EDGEPORT, "serve"], "artifact"),
    ("edgeport-serve-unknown-flag", [*EDGEPORT, "serve", "--artifact", "{art}", "--bogus", "1"], "--bogus"),
    ("edgeport-run-temperature-nan", [*EDGEPORT, "run", "--artifact", "{dir}", "--prompt", "x", "--temperature",
                                      "nan"], "--temperature"),
    ("edgeport-run-no-prompt", [*EDGEPORT, "run", "--artifact", "{dir}"], "prompt"),
    ("edgeport-chat-effort-unknown", [*EDGEPORT, "chat", "--artifact", "{dir}", "--reasoning-effort", "bogus"],
     "bogus"),
    ("edgeport-plan-device-unknown", [*EDGEPORT, "plan", "--device", "toaster", "--model", "gpt-oss-20b"],
     "toaster"),
    ("edgeport-plan-context-zero", [*EDGEPORT, "plan", "--device", "rtx-4090", "--model", G20, "--context", "0"],
     "--context"),
    ("edgeport-push-uri-scheme", [*EDGEPORT, "push", "--artifact", "{art}", "--to", "ftp://host/repo"],
     "ftp://host/repo"),
    ("edgeport-pull-layout-missing", [*EDGEPORT, "pull", "--from", f"file://{MISSING}", "--out", "{new}"], MISSING),
    ("edgeport-bench-nothing", [*EDGEPORT, "bench"], "--artifact"),
    ("edgeport-bench-serve-not-url", [*EDGEPORT, "bench", "--serve", "localhost8000"], "localhost8000"),
    ("edgeport-export-target-unknown", [*EDGEPORT, "export", "--target", "toaster", "--out", "{new}"], "toaster"),
    ("edgeport-unknown-command", [*EDGEPORT, "exprot"], "exprot"),
]


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every case, four at a time (each is a short-lived process)."""
    root = tmp_path_factory.mktemp("cli")
    (root / "plain").mkdir()
    (root / "art").mkdir()
    (root / "art" / "manifest.json").write_text(json.dumps({"format": "gguf"}))
    subst = {"{dir}": str(root / "plain"), "{art}": str(root / "art"), "{new}": str(root / "new")}
    env = {k: v for k, v in os.environ.items() if k != UNSET}

    def fill(x: str) -> str:
        for k, v in subst.items():
            x = x.replace(k, v)
        return x

    def one(case):
        name, argv, word = case
        r = subprocess.run([fill(a) for a in argv], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env,
                           stdin=subprocess.DEVNULL)
        return name, (r, fill(word))

    with ThreadPoolExecutor(4) as pool:
        return dict(pool.map(one, CASES))


@pytest.mark.parametrize("name", [c[0] for c in CASES])
def test_user_mistake_is_one_line_and_exit_2(results, name):
    r, word = results[name]
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, f"exit {r.returncode}, stderr:\n{r.stderr[-2000:]}"
    assert lines[0].startswith("edgeport: error: ") and word in lines[0], lines[0]


# every command, and options its --help must name (what a user looks for first)
HELP = {
    "export": ["--target", "--model", "--out", "--quantization", "bundled"],
    "parity": ["--artifact", "--device-output", "--source"],
    "run": ["--artifact", "--prompt", "--chat", "--max-new-tokens"],
    "chat": ["--artifact", "--reasoning-effort", "--max-new-tokens"],
    "serve": ["--artifact", "--host", "--port", "--parallel", "--queue", "--ctx", "--api-key-env", "--threads"],
    "show": ["--artifact", "--json"],
    "bench": ["--artifact", "--compare", "--serve", "--reps"],
    "plan": ["--device", "--model", "--target", "--context", "gpt-oss-20b"],
    "push": ["--artifact", "--to", "--force"],
    "pull": ["--from", "--out", "--force"],
    "deploy": ["--artifact", "--from", "--to", "--device", "--modelcar", "--image", "--replicas", "--out"],
    "tools": ["--build", "--force"],
    "toolenvs": ["--setup", "--clear", "--clear-all"],
    "models": ["--force"],
}


def test_edgeport_lists_every_command():
    r = subprocess.run([*EDGEPORT, "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    listed = {line.split()[0] for line in r.stdout.split("Subcommands:")[1].splitlines()
              if line.startswith("  ") and not line.startswith("   ")}
    assert listed == set(HELP), listed
    bare = subprocess.run(EDGEPORT, capture_output=True, text=True, timeout=60)
    assert bare.returncode == 0 and bare.stdout == r.stdout
    version = subprocess.run([*EDGEPORT, "--version"], capture_output=True, text=True, timeout=60)
    assert version.returncode == 0 and version.stdout.startswith("edgeport "), version.stdout


@pytest.mark.parametrize("command", sorted(HELP))
def test_edgeport_command_help(command, tmp_path):
    """`edgeport COMMAND --help` (what people type) and `edgeport --help COMMAND` (Invoke's spelling)
    print the same help, from any directory, even with the command's required options missing."""
    r = subprocess.run([*EDGEPORT, command, "--help"], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and not r.stderr, r.stderr
    assert r.stdout.startswith(f"Usage: edgeport [--core-opts] {command} "), r.stdout[:200]
    missing = [o for o in HELP[command] if o not in r.stdout]
    assert not missing, f"`edgeport {command} --help` does not name {missing}:\n{r.stdout}"
    invoke_way = subprocess.run([*EDGEPORT, "--help", command], cwd=tmp_path, capture_output=True, text=True,
                                timeout=60)
    assert invoke_way.stdout == r.stdout


def test_serve_options_are_defined_once():
    """`edgeport serve` and `python -m edgeport.serving` offer the same options, from one table."""
    from edgeport.serving.options import OPTIONS

    task = subprocess.run([*EDGEPORT, "serve", "--help"], capture_output=True, text=True, timeout=60).stdout
    argparse_help = subprocess.run([*SERVING, "--help"], capture_output=True, text=True, timeout=60).stdout
    for o in OPTIONS:
        assert o.flag in task and o.flag in argparse_help, o.flag
        words = " ".join(o.help.split())
        assert words[:40] in " ".join(task.split()) and words[:40] in " ".join(argparse_help.split()), o.help
