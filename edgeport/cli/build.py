"""Commands that make and check artifacts: export, parity, models, toolenvs, tools."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from invoke import Exit, task

from .common import DEFAULT_MODEL, MXFP4_MODEL, cli, model_path, quiet_libs


@task
def models(c, force=False):
    """Build the MXFP4 variant of the bundled tiny gpt-oss (deterministic, < 1 s).

    The trained tiny checkpoints themselves ship with edgeport (edgeport/models/build_tiny.py made them).
    """
    from edgeport.core.atomic import staging
    from edgeport.core.extras import require
    from edgeport.core.source import Source
    from edgeport.export.hf_mxfp4 import write_mxfp4_checkpoint
    from edgeport.models import bundled

    out = bundled(MXFP4_MODEL)
    if out.exists() and not force:
        print(f"{out} exists")
        return
    require("torch", "models")
    with staging(out, force=True) as tmp:  # replaces the whole directory: no stale shards
        write_mxfp4_checkpoint(Source.open(bundled(DEFAULT_MODEL)), tmp)
    print(f"wrote {out}")


def _require_for_export(target: str) -> None:
    """export converts with torch and transformers, then proves the artifact with its runtime."""
    from edgeport import targets
    from edgeport.core.errors import TargetError
    from edgeport.core.extras import FORMAT_MODULES, require

    require(("torch", "transformers"), "export")
    try:
        fmt = targets.load(target).format
    except TargetError:
        return  # the pipeline names the unknown target
    require(FORMAT_MODULES.get(fmt, ()), f"export --target {target}")


@task(help={
    "target": "cpu | apple | vllm | onnx | jetson (one profile per file in edgeport/targets/)",
    "model": f"HF checkpoint directory, hub id, or a bundled checkpoint: tiny-gpt-oss, tiny-llama, "
             f"tiny-gpt-oss-mxfp4 (default: {DEFAULT_MODEL}, the bundled trained tiny gpt-oss); "
             "a local directory of that name wins",
    "out": "artifact directory (default: artifacts/<model>/<target>/)",
    "revision": "hub revision (branch, tag or commit) when --model is a hub id",
    "quantization": "override the target's scheme: gguf Q8_0, Q6_K, Q5_K_M, Q4_K_M (default), Q3_K_M, Q2_K, IQ4_XS, "
                    "IQ3_M, IQ2_M, MXFP4_MOE; onnx int8, int4, fp32",
    "calibration": "gguf: text for the importance matrix (UTF-8 text, or .jsonl lines with a \"text\" field; default: "
                   "the shipped export/data/calibration.jsonl); recorded in the manifest",
    "imatrix": "gguf: use this importance matrix instead of computing one: llama.cpp's imatrix.gguf or legacy .dat "
               "(llama-imatrix's output, e.g. one published for the same model); checked against the model's "
               "tensors, shipped as imatrix.gguf, recorded by name and sha256",
    "imatrix_tokens": "gguf: calibration tokens the importance matrix runs (whole 512-token chunks; default "
                      "4096, chosen from the measured quality-vs-budget curve in the README; 0: the whole set)",
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
    "bf16_experts": "gpt-oss from BF16 on GGUF targets: mxfp4 (default, see edgeport/targets/cpu.toml) or kquant",
})
@cli
def export(c, target="cpu", model=DEFAULT_MODEL, out=None, revision=None, quantization=None,
           no_parity=False, force=False, keep_failed=False, allow_pickle=False, trust_remote_code=False,
           bf16_experts=None, precision=None, ep=None, fallback=False, jetpack=None, device=None,
           calibration=None, no_imatrix=False, imatrix=None, imatrix_tokens=None):
    """Export a Hugging Face checkpoint for a target, then prove it with the parity gate.

    Builds in a temporary directory next to --out and moves it into place only when
    complete (and parity passed). Writes the model file, manifest.json and parity.json.
    """
    from edgeport.models import bundled

    _require_for_export(target)
    quiet_libs()
    from edgeport.core.progress import console
    from edgeport.export.pipeline import export as run_export

    model = model_path(model)
    if Path(model).resolve() == bundled(MXFP4_MODEL).resolve() and not Path(model).exists():
        models(c)
    if precision and quantization and precision != quantization:
        raise Exit("edgeport: error: --precision and --quantization disagree; give one", code=2)
    policy = {k: v for k, v in (("bf16_experts", bf16_experts), ("ep", ep), ("jetpack", jetpack),
                                ("device", device), ("calibration", calibration), ("imatrix_file", imatrix)) if v}
    if no_imatrix:
        policy["imatrix"] = False
    if imatrix_tokens is not None:
        try:
            policy["imatrix_tokens"] = int(imatrix_tokens)
        except ValueError:
            raise Exit(f"edgeport: error: --imatrix-tokens takes a whole number of tokens, not {imatrix_tokens!r}",
                       code=2) from None
    path, m = run_export(model, target, Path(out) if out else None, parity=not no_parity, force=force,
                         keep_failed=keep_failed, revision=revision, quantization=precision or quantization,
                         allow_pickle=allow_pickle, trust_remote_code=trust_remote_code, policy=policy or None,
                         fallback=fallback)
    model_file = m["runtime"]["model_file"]
    size = sum(f["bytes"] for f in m["files"]
               if model_file == "." or f["path"] == model_file or f["path"].startswith(model_file + "/"))
    console.print(f"[bold]artifact:[/bold] {path / model_file} ({size / 2**20:.1f} MiB, "
                  f"{m['quantization']['requested']})", highlight=False)


@task(help={"artifact": "an artifact directory made by `edgeport export`",
            "device_output": "jetson: the device_output.json the kit's run.sh wrote on the device; "
                             "compares the device's own output with the reference (device_parity.json)",
            "source": "the source checkpoint (directory or hub id); default: the hub id the manifest names, or the "
                      "local directory this machine exported it from (found by the source's content digest)"})
@cli
def parity(c, artifact, device_output=None, source=None):
    """Re-run the parity gate on an artifact against its source; writes parity.json.

    With --device-output: compare what the Jetson produced (run.sh) with the reference instead,
    judged by the target's [parity.device.<runtime>] thresholds. Exits 1 when any judged stage
    (or, for Edge-LLM kits, the bit-for-bit check of llm/) fails, or the device output cannot be
    judged (truncated, fields missing).
    """
    from edgeport.core.extras import require

    from .common import require_runtime_of

    require(("torch", "transformers"), "parity")  # the reference runs in transformers
    if not device_output:
        require_runtime_of(artifact, "parity")
    quiet_libs()
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
    "setup": "create (or check) one tool environment now, e.g. onnxruntime-genai",
    "clear": "remove one tool environment (every pinned version of it)",
    "clear_all": "remove all tool environments",
})
@cli
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


@task(help={"build": "build the tools now if they are not built yet (about 10 minutes on 2 cores, once)",
            "force": "rebuild them even if they are built"})
@cli
def tools(c, build=False, force=False):
    """llama.cpp's command-line tools (llama-server, llama-bench, llama-imatrix, llama-quantize).

    Built from the llama.cpp in the pinned llama-cpp-python sdist (the commit our quantizer and
    runtime use) on first use, then reused, in ~/.cache/edgeport/llama.cpp-tools/<version>.
    """
    from edgeport.core import llama_tools as lt

    if build or force:
        lt.build(force=force)
    info, where = lt.installed(), lt.tools_dir()
    state = "built" if info else "not built yet (edgeport tools --build)"
    print(f"llama.cpp tools for llama-cpp-python {lt.version()}: {state}")
    for name in lt.TOOLS:
        print(f"  {name:<15} {where / name}")
    if info:
        print(f"  {info['version_output'].splitlines()[0]}, built in {info['build_seconds'] / 60:.1f} min "
              f"({where / 'build.json'})")
