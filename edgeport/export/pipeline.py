"""export -> run on the target's runtime -> compare with the reference, every time.

Formats plug in as exporter classes registered in export/formats.py (keyed by a profile's
`format`, imported on use); the pipeline around them (source checks, staging, manifest,
parity) is shared and asks the registry, never a format or runtime name.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from rich.markup import escape

from edgeport import targets
from edgeport.core import manifest as mf
from edgeport.core.architectures import config_value, for_config
from edgeport.core.atomic import staging, write_json
from edgeport.core.errors import ParityFailure, SourceError, TargetError
from edgeport.core.progress import Progress, console, step
from edgeport.core.source import Source, recall, remember
from edgeport.parity import gate
from edgeport.parity.device import compare
from edgeport.runtimes import load_runtime
from edgeport.runtimes.reference import ReferenceRuntime, model_info_from_hf
from edgeport.runtimes.streamed import StreamedReferenceRuntime, reference_cache
from edgeport.targets import FallbackAvailable

from . import formats
from .jobs import Job


def _job(model: str, target: str, *, revision=None, quantization=None, allow_pickle=False,
         trust_remote_code=False, progress=None, policy: dict | None = None) -> Job:
    profile = targets.load(target)
    src = Source.open(model, revision, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    arch = for_config(src.config)
    policy = {**profile.policy(arch.name), **(policy or {})}
    formats.check_options(profile.format, target, policy)
    return Job(src, arch, profile, policy, quantization or profile.quantization, progress or Progress())


def model_info(src: Source) -> dict:
    return asdict(model_info_from_hf(src))


def default_out(model: str, target: str) -> Path:
    return Path("artifacts") / Path(str(model).rstrip("/")).name / target


def export(model: str, target: str = "cpu", out: Path | None = None, *, parity: bool = True,
           force: bool = False, keep_failed: bool = False, fallback: bool = False,
           fallback_of: dict | None = None, **kw) -> tuple[Path, dict]:
    """`fallback`: where the target cannot build this architecture but names a target whose
    artifact runs on the same device (gpt-oss on jetson -> vllm), build that one instead and
    say so in the output and manifest; without it such a request is an error."""
    try:
        job = _job(model, target, **kw)
    except FallbackAvailable as e:
        if not fallback:
            raise
        console.print(f"[yellow]fallback:[/yellow] {e.reason} Producing the --target {e.target} artifact.",
                      highlight=False)
        out = Path(out) if out else default_out(model, target)
        kw.pop("policy", None)  # the requested target's options do not apply to the other one
        return export(model, e.target, out, parity=parity, force=force, keep_failed=keep_failed,
                      fallback_of={"requested_target": target, "produced_target": e.target,
                                   "reason": e.reason}, **kw)
    out = Path(out) if out else default_out(model, target)
    exporter = formats.exporter(job.profile.format, target)
    if not job.src.from_hub:
        remember(mf.source_digest(job.src.checksums()), job.src.root)
    with job.progress, staging(out, force) as tmp:
        work = tmp / ".work"
        work.mkdir()
        built = exporter.export(job, tmp, work)
        if fallback_of:
            built.messages.append(f"--target {fallback_of['requested_target']} cannot build "
                                  f"{job.arch.name}; this is the --target {target} artifact")
        if "serve" in built.runtime:  # exporters write into a temp dir; name the final one
            built.runtime["serve"] = built.runtime["serve"].replace("{artifact}", str(out))
        built.messages = [m.replace("{artifact}", str(out)) for m in built.messages]
        for m in built.messages:
            console.print(f"[yellow]note:[/yellow] {m}", highlight=False)
        manifest = mf.build(src=job.src, arch=job.arch.name, target=target, fmt=job.profile.format,
                            runtime=built.runtime, quantization=built.quantization, root=tmp,
                            model=model_info(job.src), tools=built.tools)
        if fallback_of:
            manifest["fallback"] = fallback_of
        report = None
        if parity:
            report = run_parity(job, built.runtime, built.parity_inputs, built.variant, root=tmp)
            write_json(tmp / "parity.json", report)
            manifest["parity"] = report
        _rmtree(work)
        mf.seal(tmp, manifest)
        if report is not None and not report["passed"] and not keep_failed:
            raise ParityFailure(f"parity failed ({_failures(report)}); nothing was written to {out} "
                                "(--keep-failed keeps the artifact)")
    return out, manifest


def _rmtree(p: Path) -> None:
    shutil.rmtree(p, ignore_errors=True)


def _failures(report: dict) -> str:
    judged = dict(report["stages"])
    if ac := report.get("artifact_check"):
        judged["artifact_check"] = ac
    return "; ".join(f"{s}: {', '.join(r['failures'])}" for s, r in judged.items() if not r["passed"])


def parity_notes(job: Job) -> list[str]:
    notes = []
    rp = config_value(job.src.config, "rope_parameters") or {}
    if (job.profile.runtime == "llama.cpp" and job.arch.rope_scaling and rp.get("rope_type") == "yarn"
            and rp.get("truncate") is False):
        notes.append(job.arch.notes.get("yarn_truncate", "YaRN truncate=false"))
    return notes


def run_parity(job: Job, runtime: dict, inputs: dict[str, Path], variant: str | None, *, root: Path) -> dict:
    """Load the reference and each input with the artifact's runtime (or the runtime its
    manifest names for parity on this machine, `runtime["parity_runtime"]`, with
    `parity_options` where `{root}` is the artifact directory) and run the gate. A report
    whose candidate is the simulated runtime (a device engine's quantization in torch) says so."""
    if variant is not None and variant not in targets.variants(job.profile.format):
        raise TargetError(f"exporter reported variant {variant!r}, not in targets.variants({job.profile.format!r}) "
                          "(threshold overrides are validated against that list)")

    cfg = job.profile.parity
    rts = {}
    try:
        with step("parity: loading the reference (transformers, streamed) and the artifact's runtime"):
            # transformers' own layers run one at a time from the safetensors: bounded memory at any
            # size, and equal to the whole-model ReferenceRuntime (tests/test_streamed_reference.py)
            rts["reference"] = StreamedReferenceRuntime(
                job.src.root, cache=reference_cache(mf.source_digest(job.src.checksums())))
            name = runtime.get("parity_runtime") or runtime["name"]
            if name == runtime["name"]:
                options = runtime.get("options", {})
            else:
                options = {k: v.replace("{root}", str(root)) if isinstance(v, str) else v
                           for k, v in runtime.get("parity_options", {}).items()}
            for role, path in inputs.items():
                rts[role] = load_runtime(name, path, rts["reference"].info, options)
        with step("parity: scoring the eval set"):
            report = gate.run(rts, job.profile.thresholds(job.arch.name, variant, job.quantization),
                              max_tokens=cfg.get("max_tokens", 512),
                              greedy_tokens=cfg.get("greedy_tokens", 16),
                              sliding_window=job.src.config.get("sliding_window"),
                              notes=parity_notes(job))
    finally:
        for r in rts.values():
            r.close()
    exporter = formats.exporter(job.profile.format, job.profile.name)
    if (check := exporter.artifact_check(job, runtime, inputs, root)) is not None:
        report["artifact_check"] = check
        report["passed"] = report["passed"] and check["passed"]
    report["variant"] = variant
    report["mode"] = "simulated" if name == "simulated" else "measured"
    if report["mode"] == "simulated":
        report["notes"].insert(0, "SIMULATED: the candidate is the artifact's quantization computed in torch on "
                                  "CPU, not the device engine (edgeport parity --device-output compares the device's "
                                  "output)")
    console.print(gate.table(report))
    if line := gate.drift_line(report):
        console.print(line, highlight=False)
    if ac := report.get("artifact_check"):
        console.print(f"artifact check ({ac['compares']}, {ac['tensors']} tensors): " + (
            "[green]pass[/green]" if ac["passed"] else "[red]FAIL[/red] " + escape("; ".join(ac["failures"][:3]))),
            highlight=False)
    for n in report["notes"]:
        console.print(f"[yellow]note:[/yellow] {n}", highlight=False)
    return report


def parity_for_artifact(artifact: Path, source: str | Path | None = None) -> dict:
    """Re-run the gate on an existing artifact; rebuilds the unquantized file from the source.

    A pass proves the files as they are now, so it re-seals the manifest; a failure is recorded
    only while every file still matches the manifest (else it is reported and nothing written)."""
    m = mf.load(artifact)
    opts = m["runtime"].get("options", {})
    policy = {k: opts[k] for k in ("ep", "jetpack", "device") if k in opts}  # the artifact's own choices
    job = _job(source_location(m, source), m["target"], revision=m["source"].get("revision"),
               quantization=m["quantization"]["requested"], policy=policy or None)
    _check_source_unchanged(job.src, m)
    exporter = formats.exporter(job.profile.format, job.profile.name)
    with tempfile.TemporaryDirectory(prefix="edgeport-parity-", dir=artifact.parent) as work, job.progress:
        rt = m["runtime"]
        scored = rt.get("parity_model", rt["model_file"])  # None: the source itself (an FP16 engine's weights)
        inputs = {"quantized": artifact / scored if scored is not None else job.src.root}
        with step("rebuilding the unquantized model for the fidelity stage"):
            if (unq := exporter.unquantized(job, Path(work))) is not None:
                inputs["unquantized"] = unq
        report = run_parity(job, rt, inputs, m["quantization"].get("variant"), root=artifact)
    if report["passed"]:
        write_json(artifact / "parity.json", report)
        m["parity"] = report
        mf.seal(artifact, m)
    else:
        try:
            mf.record(artifact, {"parity": report}, {"parity.json": lambda p: write_json(p, report)})
        except mf.ManifestMismatch as e:
            console.print(f"[yellow]note:[/yellow] the failure is not recorded (nor parity.json written): {e}",
                          highlight=False)
    return report


def device_parity(artifact: Path, device_output: Path, source: str | Path | None = None) -> dict:
    """Compare a Jetson kit's device_output.json with the reference; stored as device_parity.json
    and in the manifest, which is not re-sealed (refused if a file no longer matches it)."""
    m = mf.verify(artifact, skip={"device_parity.json"})
    src = Source.open(source_location(m, source), m["source"].get("revision"))
    _check_source_unchanged(src, m)
    with step("device parity: the reference against the device's output"), ReferenceRuntime(src.root) as ref:
        report = compare(artifact, device_output, ref, targets.device_thresholds_for(m))
    mf.record(artifact, {"device_parity": {k: v for k, v in report.items() if k != "prompts"}},
              {"device_parity.json": lambda p: write_json(p, report)})
    return report


def source_location(m: dict, given: str | Path | None = None) -> str:
    """Where to find an artifact's source: `given` (--source), the hub id it was exported from,
    or the local directory this machine remembers for its content digest (the manifest carries
    no path); the recorded checksums still have to match."""
    src = m["source"]
    if given:
        return str(given)
    if src.get("hub"):
        return src["model"]
    if src.get("path") and Path(src["path"]).is_dir():  # manifests written before paths were left out
        return src["path"]
    if src.get("digest") and (root := recall(src["digest"])) is not None:
        return str(root)
    if "hub" not in src:  # an older manifest: the model as it was named
        return src["model"]
    raise SourceError(f"the source this artifact was exported from ({src['model']}, {src.get('digest', '')[:19]}…) "
                      "is not known on this machine; pass --source DIR")


def _check_source_unchanged(src: Source, m: dict) -> None:
    recorded = {k: v["sha256"] for k, v in m["source"]["files"].items()}
    if {k: v["sha256"] for k, v in src.checksums().items()} != recorded:
        raise SourceError(f"the source at {src.root} no longer matches the manifest's checksums")
