"""edgeport's commands (Invoke). `invoke --list`; `invoke --help export`."""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path

from invoke import Exit, task

ROOT = Path(__file__).resolve().parent
DEFAULT_MODEL = "edgeport/models/tiny-gpt-oss"
MXFP4_MODEL = "edgeport/models/tiny-gpt-oss-mxfp4"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def _cli(fn):
    """Expected failures print one line and exit 2; never a traceback. Ctrl-C and SIGTERM
    print one line and exit 128 + the signal (130, 143), as shells and CI runners expect."""
    @functools.wraps(fn)
    def wrapper(*a, **kw):
        from edgeport.core.atomic import interrupts, signal_of
        from edgeport.core.errors import EdgeportError

        try:
            with interrupts():
                return fn(*a, **kw)
        except EdgeportError as e:
            print(f"edgeport: error: {e}", file=sys.stderr)
            raise Exit(code=2) from None
        except KeyboardInterrupt as e:
            sig = signal_of(e)
            print(f"edgeport: interrupted ({sig.name}); nothing half-written was left behind", file=sys.stderr)
            raise Exit(code=128 + sig) from None
    return wrapper


def _one_line_usage_errors() -> None:
    """Invoke answers a malformed typed option (`--port abc`, `--temperature hot`) with a ValueError
    traceback, and its own parse errors (an unknown flag, a flag without its value, a missing
    --artifact) with exit 1. Every edgeport command answers a usage mistake with one line on stderr
    and exit 2, as `python -m edgeport.serving` (argparse) does: both become invoke's Exit(message, 2)."""
    import re

    from invoke.exceptions import ParseError
    from invoke.parser import Argument, Parser

    if getattr(Argument.set_value, "edgeport", False):
        return
    set_value, parse_argv = Argument.set_value, Parser.parse_argv

    def checked_set_value(self, value, cast=True):
        try:
            set_value(self, value, cast)
        except (TypeError, ValueError):
            kind = {int: "an integer", float: "a number"}.get(self.kind, getattr(self.kind, "__name__", "a value"))
            raise Exit(f"edgeport: error: --{self.name.replace('_', '-')} takes {kind}, not {value!r}",
                       code=2) from None

    def checked_parse_argv(self, argv):
        try:
            return parse_argv(self, argv)
        except ParseError as e:  # invoke names a flag by its repr: "<Argument: port (p) [int]>"
            msg = re.sub(r"<Argument: (\w+)[^>]*>", lambda m: "--" + m[1].replace("_", "-"), str(e))
            raise Exit(f"edgeport: error: {msg}", code=2) from None

    checked_set_value.edgeport = True
    Argument.set_value, Parser.parse_argv = checked_set_value, checked_parse_argv


_one_line_usage_errors()


def _number(option: str, value, kind=int, *, least=None, most=None, above=None):
    """An option's value as `kind`, in range; a user mistake is an EdgeportError (one line, exit 2).
    `least`/`most`: inclusive bounds; `above`: exclusive lower bound."""
    from edgeport.core.errors import EdgeportError

    name = f"--{option.replace('_', '-')}"
    try:
        v = kind(str(value).strip()) if not isinstance(value, kind) or isinstance(value, bool) else value
    except ValueError:
        raise EdgeportError(f"{name} takes {'an integer' if kind is int else 'a number'}, not {value!r}") from None
    if kind is float and v != v:  # NaN compares false with every bound
        raise EdgeportError(f"{name} takes a number, not {value!r}")
    if least is not None and v < least:
        raise EdgeportError(f"{name} must be at least {least}, not {value}")
    if above is not None and v <= above:
        raise EdgeportError(f"{name} must be more than {above}, not {value}")
    if most is not None and v > most:
        raise EdgeportError(f"{name} must be at most {most}, not {value}")
    return v


def _existing(option: str, path) -> Path:
    """A path the user named that must exist (an artifact, a model, a file)."""
    from edgeport.core.errors import EdgeportError

    p = Path(path)
    if not p.exists():
        raise EdgeportError(f"--{option.replace('_', '-')} {path}: no such file or directory")
    return p


def _generation_options(artifact, effort, max_new_tokens, temperature, seed) -> tuple[int, float, int]:
    """run's and chat's shared options, checked before anything loads: (max_new_tokens, temperature, seed)."""
    from edgeport.serving.chat import effort_or_error

    effort_or_error(effort)
    _existing("artifact", artifact)
    return (_number("max_new_tokens", max_new_tokens, least=1),
            _number("temperature", temperature, float, least=0.0, most=2.0),
            _number("seed", seed, least=0, most=2**32 - 1))


def _stdout():
    """A command's result (tables, summaries) goes to stdout; progress and errors to stderr."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 140)


def _quiet_libs():
    import logging

    import transformers

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    logging.getLogger("gguf").setLevel(logging.WARNING)


@task
def models(c, force=False):
    """Build the MXFP4 variant of the bundled tiny gpt-oss (deterministic, < 1 s).

    The trained tiny checkpoints themselves are committed (edgeport/models/build_tiny.py made them).
    """
    from edgeport.core.atomic import staging
    from edgeport.core.source import Source
    from edgeport.export.hf_mxfp4 import write_mxfp4_checkpoint

    out = ROOT / MXFP4_MODEL
    if out.exists() and not force:
        print(f"{MXFP4_MODEL} exists")
        return
    with staging(out, force=True) as tmp:  # replaces the whole directory: no stale shards
        write_mxfp4_checkpoint(Source.open(ROOT / DEFAULT_MODEL), tmp)
    print(f"wrote {MXFP4_MODEL}")


@task(help={
    "target": "cpu | apple | vllm | onnx | jetson (one profile per file in targets/)",
    "model": f"HF checkpoint directory or hub id (default: {DEFAULT_MODEL}, the bundled trained tiny gpt-oss)",
    "out": "artifact directory (default: artifacts/<model>/<target>/)",
    "revision": "hub revision (branch, tag or commit) when --model is a hub id",
    "quantization": "override the target's scheme: gguf Q8_0, Q6_K, Q5_K_M, Q4_K_M (default), Q3_K_M, Q2_K, IQ4_XS, "
                    "IQ3_M, IQ2_M, MXFP4_MOE; onnx int8, int4, fp32",
    "calibration": "gguf: text for the importance matrix (UTF-8 text, or .jsonl lines with a \"text\" field; default: "
                   "the shipped export/data/calibration.jsonl); recorded in the manifest",
    "no_imatrix": "gguf: quantize without an importance matrix (used by default from Q4_K_M down; the i-quants "
                  "IQ4_XS, IQ3_M, IQ2_M refuse to run without one)",
    "precision": "same as --quantization (the word ONNX and Jetson users say); jetson: int8 (W8A8 SmoothQuant), "
                 "int8-w8a16 (its int8 weights, fp16 activations), int4 (AWQ), fp16",
    "fallback": "where the target cannot build the model (gpt-oss on jetson), build the artifact that runs "
                "on that device instead (its manifest says so); without it such a request exits 2",
    "jetpack": "jetson: 7.2 (default: TensorRT Edge-LLM ONNX + kit) or 6 (TensorRT-LLM v0.12 W8A16 kit)",
    "device": "jetson: orin-agx-64gb (default), orin-agx-32gb, orin-nx-16gb, orin-nano-8gb (engine limits)",
    "ep": "onnx: execution provider cpu | cuda (onnxruntime-genai graphs) | tensorrt (standard-op INT8 Q/DQ)",
    "no_parity": "skip the parity gate (the manifest then says parity: null)",
    "force": "replace an existing artifact directory",
    "keep_failed": "keep the artifact even if parity fails (its manifest records the failure)",
    "allow_pickle": "read pickle .bin weights (torch weights_only loader); off by default",
    "trust_remote_code": "accept checkpoints whose config asks for custom code (never executed)",
    "bf16_experts": "gpt-oss from BF16 on GGUF targets: mxfp4 (default, see targets/cpu.toml) or kquant",
})
@_cli
def export(c, target="cpu", model=DEFAULT_MODEL, out=None, revision=None, quantization=None,
           no_parity=False, force=False, keep_failed=False, allow_pickle=False, trust_remote_code=False,
           bf16_experts=None, precision=None, ep=None, fallback=False, jetpack=None, device=None,
           calibration=None, no_imatrix=False):
    """Export a Hugging Face checkpoint for a target, then prove it with the parity gate.

    Builds in a temporary directory next to --out and moves it into place only when
    complete (and parity passed). Writes the model file, manifest.json and parity.json.
    """
    _quiet_libs()
    from edgeport.core.progress import console
    from edgeport.export.pipeline import export as run_export

    if model == MXFP4_MODEL and not (ROOT / MXFP4_MODEL).exists():
        models(c)
    if precision and quantization and precision != quantization:
        raise Exit("edgeport: error: --precision and --quantization disagree; give one", code=2)
    policy = {k: v for k, v in (("bf16_experts", bf16_experts), ("ep", ep), ("jetpack", jetpack),
                                ("device", device), ("calibration", calibration)) if v}
    if no_imatrix:
        policy["imatrix"] = False
    path, m = run_export(model, target, Path(out) if out else None, parity=not no_parity, force=force,
                         keep_failed=keep_failed, revision=revision, quantization=precision or quantization,
                         allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, policy=policy or None,
                         fallback=fallback)
    model_file = m["runtime"]["model_file"]
    size = sum(f["bytes"] for f in m["files"]
               if model_file == "." or f["path"] == model_file or f["path"].startswith(model_file + "/"))
    console.print(f"[bold]artifact:[/bold] {path / model_file} ({size / 2**20:.1f} MiB, "
                  f"{m['quantization']['requested']})", highlight=False)


@task(help={
    "setup": "create (or check) one tool environment now, e.g. onnxruntime-genai",
    "clear": "remove one tool environment (every pinned version of it)",
    "clear_all": "remove all tool environments",
})
@_cli
def toolenvs(c, setup=None, clear=None, clear_all=False):
    """List the pinned tool environments exporters run in (created on first use, then reused).

    They live in ~/.cache/edgeport/toolenvs (or $EDGEPORT_TOOLENVS); each directory name carries
    a hash of its pins, so a changed pin makes a fresh one.
    """
    from edgeport.core import toolenv

    if setup:
        toolenv.get(setup)
    if clear or clear_all:
        for p in toolenv.clear(None if clear_all else clear):
            print(f"removed {p}")
        return
    print(f"tool environments in {toolenv.root()}:")
    for e in toolenv.listing():
        state = "ready" if e["ready"] else "not created yet"
        print(f"  {e['name']:<18} {state:<16} {e['purpose']}\n  {'':<18} {e['path']}")


@task(help={"artifact": "an artifact directory made by `invoke export`",
            "device_output": "jetson: the device_output.json the kit's run.sh wrote on the device; "
                             "compares the device's own output with the reference (device_parity.json)",
            "source": "the source checkpoint (directory or hub id); default: the hub id the manifest names, or the "
                      "local directory this machine exported it from (found by the source's content digest)"})
@_cli
def parity(c, artifact, device_output=None, source=None):
    """Re-run the parity gate on an artifact against its source; writes parity.json.

    With --device-output: compare what the Jetson produced (run.sh) with the reference instead,
    judged by the target's [parity.device.<runtime>] thresholds. Exits 1 when any judged stage
    (or, for Edge-LLM kits, the bit-for-bit check of llm/) fails, or the device output cannot be
    judged (truncated, fields missing).
    """
    _quiet_libs()
    from edgeport.export.pipeline import device_parity, parity_for_artifact

    if device_output:
        report = device_parity(Path(artifact), Path(device_output), source)
        print(json.dumps({k: v for k, v in report.items() if k != "prompts"}, indent=2))
        if not report["passed"]:
            raise Exit(code=1)
        return
    report = parity_for_artifact(Path(artifact), source)
    if not report["passed"]:
        print("edgeport: parity failed", file=sys.stderr)
        raise Exit(code=1)


@task(help={
    "artifact": "artifact directory, HF checkpoint directory or .gguf file",
    "prompt": "the prompt text",
    "chat": "treat --prompt as a user chat message (harmony for gpt-oss, else the chat template); gpt-oss "
            "reasoning is shown after 'thinking:', apart from the answer after 'assistant:', as in invoke chat",
    "raw": "with --chat: print the model's raw output, harmony markers (<|channel|>…) and all",
    "reasoning_effort": "gpt-oss: low|medium|high (or fast|balanced|deep)",
    "max_new_tokens": "tokens to generate", "temperature": "0 = greedy", "top_p": "nucleus sampling, in (0, 1]",
    "seed": "sampling seed", "stop": "a stop string",
})
@_cli
def run(c, artifact, prompt, chat=False, reasoning_effort=None, max_new_tokens=64, temperature=0.0,
        top_p=1.0, seed=0, stop=None, raw=False):
    """Stream a completion from an artifact through its runtime."""
    max_new_tokens, temperature, seed = _generation_options(artifact, reasoning_effort, max_new_tokens,
                                                            temperature, seed)
    top_p = _number("top_p", top_p, float, above=0.0, most=1.0)
    _quiet_libs()
    from edgeport import runtimes
    from edgeport.serving.chat import Reply

    with runtimes.load(artifact) as rt:
        p = [{"role": "user", "content": prompt}] if chat else prompt
        pieces = rt.stream(p, max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                           seed=seed, stop=[stop] if stop else [], reasoning_effort=reasoning_effort)
        if chat and not raw:  # gpt-oss: reasoning apart from the answer, no harmony marker shown
            reply = Reply(sys.stdout, harmony=rt.info.chat_format == "harmony", label_plain=False)
            for piece in pieces:
                reply.feed(piece)
            reply.finish()
            return
        for piece in pieces:
            print(piece, end="", flush=True)
        print()


@task(help={
    "artifact": "an artifact directory made by `invoke export` (or `invoke pull`)",
    "host": "address to listen on (default 127.0.0.1; 0.0.0.0 for other machines)",
    "port": "port (default 8000)",
    "parallel": "requests generated at once: llama-server slots for GGUF (default 4); in-process runtimes "
                "(ONNX, TensorRT-LLM) serve 1",
    "queue": "requests that may wait beyond --parallel (default 16); more get 503 with Retry-After",
    "ctx": "context per request in tokens (default 4096, at most the model's)",
    "api_key_env": "name of an environment variable holding the key clients must send as a Bearer token",
    "threads": "CPU threads for llama-server",
})
@_cli
def serve(c, artifact, host="127.0.0.1", port=8000, parallel=None, queue=16, ctx=None, api_key_env=None,
          threads=None):
    """Serve an artifact over an OpenAI-compatible API: /v1/chat/completions (gpt-oss reasoning
    effort low|medium|high or fast|balanced|deep; reasoning in `reasoning_content`), /v1/completions,
    /v1/models, /health. Same as `python -m edgeport.serving` (for devices without Invoke)."""
    from edgeport.serving.server import serve as do_serve

    # every number checked before anything loads (serve() checks the ranges, the ports and the key)
    opt = lambda name, v: None if v is None else _number(name, v)
    port, queue = _number("port", port), _number("queue", queue)
    parallel, ctx, threads = opt("parallel", parallel), opt("ctx", ctx), opt("threads", threads)
    _quiet_libs()
    do_serve(Path(artifact), host=host, port=port, parallel=parallel, queue=queue, ctx=ctx, api_key_env=api_key_env,
             threads=threads)


@task(help={
    "artifact": "artifact directory, HF checkpoint directory or .gguf file",
    "reasoning_effort": "gpt-oss: low|medium|high (or fast|balanced|deep); /effort changes it in the chat",
    "max_new_tokens": "tokens per answer", "temperature": "0 = greedy", "seed": "sampling seed",
})
@_cli
def chat(c, artifact, reasoning_effort=None, max_new_tokens=256, temperature=0.0, seed=0):
    """Chat with an artifact in the terminal: multi-turn, streaming, gpt-oss reasoning shown
    apart from the answer. Commands: /effort low|medium|high, /reset, /exit (or Ctrl-D)."""
    from edgeport.serving.chat import chat as do_chat

    max_new_tokens, temperature, seed = _generation_options(artifact, reasoning_effort, max_new_tokens,
                                                            temperature, seed)
    _quiet_libs()
    do_chat(artifact, reasoning_effort=reasoning_effort, max_new_tokens=max_new_tokens, temperature=temperature,
            seed=seed)


URI_HELP = ("hf://org/name[@revision] (Hugging Face Hub; HF_TOKEN), oci://host[:port]/repo[:tag] (any OCI "
            "registry; EDGEPORT_REGISTRY_USER / EDGEPORT_REGISTRY_PASSWORD or `docker login`), or "
            "file:///path[:tag] (an OCI image layout directory; tag latest when omitted)")


@task(help={
    "artifact": "an artifact directory made by `invoke export`",
    "to": URI_HELP,
    "force": "push even if the artifact's parity failed or is missing, or its files no longer match its "
             "manifest (pull will then refuse what does not match)",
    "insecure": "oci://: plain HTTP (a lab registry without TLS)",
})
@_cli
def push(c, artifact, to, force=False, insecure=False):
    """Publish an artifact to a model registry: GGUF as Docker Model Runner models, the rest as
    CNCF ModelPack artifacts; on the Hub one commit with a model card. The OCI manifest (or the
    Hub commit) is written last: an interrupted push leaves no tag."""
    from edgeport.publishing.transfer import push as do_push

    print(f"pushed {do_push(Path(artifact), to, force=force, insecure=insecure)}")


@task(help={
    "from_": URI_HELP,
    "out": "directory to create (refused if it exists, unless --force)",
    "force": "replace --out if it exists",
    "insecure": "oci://: plain HTTP (a lab registry without TLS)",
})
@_cli
def pull(c, from_, out, force=False, insecure=False):
    """Fetch an artifact onto this machine. Every byte is checked against its digest and every
    file against the artifact's manifest.json before --out appears; a mismatch leaves nothing."""
    from edgeport.publishing.transfer import pull as do_pull

    path, pinned = do_pull(from_, Path(out), force=force, insecure=insecure)
    print(f"pulled {pinned} -> {path}")


@task(help={"build": "build the tools now if they are not built yet (about 10 minutes on 2 cores, once)",
            "force": "rebuild them even if they are built"})
@_cli
def tools(c, build=False, force=False):
    """llama.cpp's command-line tools (llama-server, llama-bench, llama-imatrix, llama-quantize).

    Built from the llama.cpp in the pinned llama-cpp-python sdist (the commit our quantizer and
    runtime use) on first use, then reused, in ~/.cache/edgeport/llama.cpp-tools/<version>.
    """
    from edgeport.core import llama_tools as lt

    if build or force:
        lt.build(force=force)
    info, where = lt.installed(), lt.tools_dir()
    state = "built" if info else "not built yet (invoke tools --build)"
    print(f"llama.cpp tools for llama-cpp-python {lt.version()}: {state}")
    for name in lt.TOOLS:
        print(f"  {name:<15} {where / name}")
    if info:
        print(f"  {info['version_output'].splitlines()[0]}, built in {info['build_seconds'] / 60:.1f} min "
              f"({where / 'build.json'})")


@task(help={
    "device": "a device profile in targets/devices.toml, e.g. rtx-4090, apple-m-32gb, orin-agx-64gb, 8x-h100-80gb",
    "model": ("model directory (config.json, tokenizer.json) or a config.json; "
              "e.g. edgeport/planning/configs/gpt-oss-20b.json"),
    "target": "cpu | apple | vllm | onnx | jetson (default: the device's recommended target)",
    "context": "tokens per sequence (default: the target's n_ctx / max_model_len)",
    "concurrency": "sequences held at once (each with --context tokens of KV cache)",
    "quantization": "the target's precision, e.g. Q4_K_M, Q8_0 (gguf); int8, int4 (onnx, jetson)",
    "llama_server": "GGUF: plan for llama-server/llama-cli defaults (flash attention, small SWA cache) instead of "
                    "edgeport's llama-cpp-python runtime",
    "json_": "print the plan as JSON (fields: README, Planning memory)",
})
@_cli
def plan(c, device, model, target=None, context=None, concurrency=1, quantization=None, llama_server=False,
         json_=False):
    """Will the model fit the device? Weights, KV cache and runtime buffers from config.json alone, and what to
    change when it does not fit (context, --n-cpu-moe, n_gpu_layers, tensor parallelism, target)."""
    from edgeport.planning.memory import plan as make_plan
    from edgeport.planning.report import render

    context = None if context is None else _number("context", context, least=1)
    concurrency = _number("concurrency", concurrency, least=1)
    p = make_plan(model, device, target=target, context=context, concurrency=concurrency,
                  quantization=quantization, llama_server=llama_server)
    if json_:
        print(json.dumps(p.to_json(), indent=2))
    else:
        render(p)


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


@task(help={"slow": "also run the slow suites (llama.cpp converter oracle)"})
def test(c, slow=False):
    """Run the test suite (the README's test command)."""
    models(c)
    c.run(f"{sys.executable} -m pytest -q" + (" -m 'slow or not slow'" if slow else ""), pty=False)


@task
def lint(c):
    """ruff check."""
    c.run(f"{sys.executable} -m ruff check .")


@task(help={"artifact": "artifact directory", "json_": "print the whole manifest as JSON instead"})
@_cli
def show(c, artifact, json_=False):
    """One screen about an artifact: model, target, size, quantization with fallbacks, parity
    per stage, bench figures if any, and how to run, serve and ship it."""
    from edgeport.benchmarking.summary import render
    from edgeport.core import manifest as mf

    m = mf.load(Path(artifact))
    if json_:
        print(json.dumps(m, indent=2))
        return
    _stdout().print(render(Path(artifact), m))


@task(
    iterable=["compare"],
    help={
        "artifact": "measure one artifact: TTFT, prefill and decode tokens/s, peak RSS at a short prompt and one "
                    "past the sliding window, through edgeport's runtime and its raw backend (llama-bench for "
                    "GGUF, onnxruntime-genai for ONNX); writes bench.json, bench.png and the manifest's bench",
        "compare": "artifacts of one model to compare (repeat --compare, or comma-separate): the table and "
                   "figure with the reference (transformers) as the first row",
        "serve": "URL of a running OpenAI-compatible server (e.g. http://127.0.0.1:8000): concurrent streaming load",
        "clients": "--serve: concurrency levels (default 1,4,8)",
        "requests": "--serve: requests per client (default 4)",
        "endpoint": "--serve: chat (default) or completions",
        "api_key_env": "--serve: environment variable holding the server's API key",
        "reps": "repetitions after one warmup (default 3)",
        "new_tokens": "tokens generated per run (default 32; --serve: max_tokens, default 64)",
        "no_raw": "--artifact: skip the raw-backend measurement",
        "out": "--compare / --serve: where to write the JSON and PNG (default bench-compare.* / bench-serve.json)",
    },
)
@_cli
def bench(c, artifact=None, compare=None, serve=None, clients="1,4,8", requests=4, endpoint="chat",
          api_key_env=None, reps=3, new_tokens=None, no_raw=False, out=None):
    """Measure speed: one artifact (--artifact), one model's artifacts side by side (--compare),
    or a running server under load (--serve)."""
    from edgeport.core.errors import EdgeportError

    chosen = [x for x in (artifact, compare, serve) if x]
    if len(chosen) != 1:
        raise EdgeportError("give exactly one of --artifact DIR, --compare DIR [--compare DIR …], --serve URL")
    # every option checked before anything is measured (one line, exit 2)
    reps = _number("reps", reps, least=1)
    new_tokens = None if new_tokens is None else _number("new_tokens", new_tokens, least=1)
    if artifact:
        _existing("artifact", artifact)
    for item in compare or []:
        for d in item.split(","):
            if d:
                _existing("compare", d)
    if out and not Path(out).resolve().parent.is_dir():
        raise EdgeportError(f"--out {out}: no such directory {Path(out).resolve().parent}")
    if serve:
        from urllib.parse import urlsplit

        u = urlsplit(serve)
        if u.scheme not in ("http", "https") or not u.hostname:
            raise EdgeportError(f"--serve takes a server's URL such as http://127.0.0.1:8000, not {serve!r}")
        try:
            u.port  # noqa: B018 - raises on a port out of range
        except ValueError:
            raise EdgeportError(f"--serve {serve}: the port is not a number from 1 to 65535") from None
        if endpoint not in ("chat", "completions"):
            raise EdgeportError(f"--endpoint takes chat or completions, not {endpoint!r}")
        requests = _number("requests", requests, least=1)
        levels = [_number("clients", x, least=1) for x in str(clients).split(",")]
    _quiet_libs()
    if artifact:
        from edgeport.benchmarking.artifact import bench as run_bench
        from edgeport.benchmarking.artifact import save

        report = run_bench(Path(artifact), reps=int(reps), new_tokens=int(new_tokens or 32), with_raw=not no_raw)
        save(Path(artifact), report)
        _print_bench(report)
        print(f"wrote {Path(artifact) / 'bench.json'}, {Path(artifact) / 'bench.png'}")
    elif compare:

        from edgeport.benchmarking.compare import compare as run_compare
        from edgeport.benchmarking.compare import table
        from edgeport.benchmarking.plots import compare_figure

        dirs = [Path(p) for item in compare for p in item.split(",") if p]
        result = run_compare(dirs, reps=int(reps), new_tokens=int(new_tokens or 32))
        _stdout().print(table(result))
        stem = Path(out or "bench-compare")
        stem.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")
        compare_figure(result, stem.with_suffix(".png"))
        print(f"wrote {stem.with_suffix('.json')}, {stem.with_suffix('.png')}")
    else:
        from edgeport.benchmarking.serve_load import load

        key = os.environ.get(api_key_env) if api_key_env else None
        if api_key_env and not key:
            raise EdgeportError(f"{api_key_env} is not set")
        try:
            result = load(serve, levels, requests, new_tokens or 64, key, endpoint)
        except Exception as e:  # httpx's connection errors, a server that is not OpenAI-compatible
            raise EdgeportError(f"{serve}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        _print_serve(result)
        Path(out or "bench-serve.json").write_text(json.dumps(result, indent=2) + "\n")
        print(f"wrote {out or 'bench-serve.json'}")


def _print_bench(report: dict) -> None:
    from rich.table import Table

    m = report["machine"]
    t = Table(title=f"{report['artifact']['target']} / {report['artifact']['runtime']} on {m['cpu']}, "
                    f"{m['threads']} threads, median (min–max) of {report['reps']}")
    for col in ("prompt", "TTFT ms", "prefill tok/s", "decode tok/s", "raw prefill", "raw decode",
                "decode ratio", "TTFT overhead ms"):
        t.add_column(col, justify="right")
    for w in report["workloads"]:
        r, q = w.get("raw", {}), w.get("ratio", {})
        f = lambda d, s=1: f"{d['median'] * s:.1f} ({d['min'] * s:.1f}–{d['max'] * s:.1f})"
        t.add_row(f"{w['name']} ({w['prompt_tokens']})", f(w["ttft_s"], 1000), f(w["prefill_tps"]),
                  f(w["decode_tps"]), f"{r['prefill_tps']:.1f}" if r else "-", f"{r['decode_tps']:.1f}" if r else "-",
                  f"{q['decode']:.3f}" if q else "-", f"{q['ttft_overhead_ms']:+.1f}" if q else "-")
    _stdout().print(t)
    _stdout().print(f"peak RSS {report['peak_rss_mib']:.0f} MiB (edgeport process)"
                  + (f", raw backend {max(w['raw']['peak_rss_mib'] for w in report['workloads']):.0f} MiB"
                     if all('raw' in w for w in report["workloads"]) else ""), highlight=False)


def _print_serve(result: dict) -> None:
    from rich.table import Table

    t = Table(title=f"{result['url']} ({result['model']}), {result['endpoint']}, max_tokens {result['max_tokens']}")
    for col in ("clients", "requests", "errors", "tok/s", "TTFT p50/p99 ms", "first answer p50 ms",
                "ITL p50/p99 ms", "TPOT p50 ms", "e2e p50/p90/p99 ms"):
        t.add_column(col, justify="right")
    g = lambda s, k: "-" if s[k] is None else f"{s[k]:.1f}"
    for r in result["runs"]:
        t.add_row(str(r["clients"]), str(r["requests"]), str(r["errors"]), f"{r['throughput_tps']:.1f}",
                  f"{g(r['ttft_ms'], 'p50')}/{g(r['ttft_ms'], 'p99')}", g(r["ttfat_ms"], "p50"),
                  f"{g(r['itl_ms'], 'p50')}/{g(r['itl_ms'], 'p99')}", g(r["tpot_ms"], "p50"),
                  f"{g(r['e2e_ms'], 'p50')}/{g(r['e2e_ms'], 'p90')}/{g(r['e2e_ms'], 'p99')}")
    _stdout().print(t)
