"""GGUF target exporter: HF -> GGUF F16 (MXFP4 experts kept) -> llama.cpp's quantizer."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import gguf

from edgeport.core import manifest as mf
from edgeport.core.architectures import Architecture, tensor_pattern
from edgeport.core.errors import QuantizationError, TargetError
from edgeport.core.progress import console, step
from edgeport.core.quant import IMATRIX_DEFAULT, IQUANTS, SCHEMES
from edgeport.core.source import sha256_file
from edgeport.publishing import ollama

from .formats import ExporterBase
from .gguf_convert import write_gguf
from .gguf_quantize import llama_cpp_versions, quantize, summarize, tensor_types
from .imatrix import (
    CHUNK,
    DEFAULT_BUDGET_TOKENS,
    IMatrix,
    budget_chunks,
    cache_dir,
    cache_key,
    cache_lookup,
    cache_store,
    compute,
    load_calibration,
    read_given,
    tensor_layout_digest,
)
from .imatrix import FILE_NAME as IMATRIX_FILE
from .jobs import Built, Job


class GGUFExporter(ExporterBase):
    """HF -> GGUF (F16, MXFP4 experts kept) -> llama.cpp quantizer (Q4_K_M by default)."""

    runtime = "llama.cpp"

    def expert_pattern(self, arch: Architecture) -> str | None:
        return tensor_pattern(arch.expert_tensors)

    def variant(self, job: Job) -> str | None:
        if not job.arch.expert_tensors:
            return None
        if job.src.is_mxfp4:
            return "mxfp4-source"
        choice = job.policy.get("bf16_experts", "kquant")
        if choice not in ("mxfp4", "kquant"):
            raise TargetError(f"bf16_experts must be mxfp4 or kquant, not {choice!r}")
        return "bf16-experts-" + choice

    def unquantized(self, job: Job, work: Path) -> Path:
        path = work / f"{job.src.name}-{job.profile.unquantized}.gguf"
        write_gguf(job.src, job.arch, path, file_type=job.profile.unquantized, progress=job.progress)
        return path

    def imatrix_wanted(self, job: Job) -> bool:
        """Policy `imatrix` (False: --no-imatrix), `calibration` (a user's file) and `imatrix_file`
        (--imatrix: a matrix already made) against the scheme: on by default from Q4_K_M down,
        required by the i-quants, refused where the scheme takes none. Checked before any work,
        so a contradiction costs nothing."""
        scheme, on, calibration = job.quantization, job.policy.get("imatrix"), job.policy.get("calibration")
        given, budget = job.policy.get("imatrix_file"), job.policy.get("imatrix_tokens")
        if budget is not None:
            if budget < 0:
                raise QuantizationError(f"--imatrix-tokens takes a number of tokens >= 0, not {budget}")
            if given or on is False or scheme not in IMATRIX_DEFAULT:
                raise QuantizationError("--imatrix-tokens sets how much calibration text a computed importance matrix "
                                        "runs; it does not apply with " + ("--imatrix" if given else "--no-imatrix"
                                        if on is False else f"{scheme}, quantized without one"))
            budget_chunks(budget)
        if given and on is False:
            raise QuantizationError("--imatrix gives an importance matrix, which --no-imatrix turns off; "
                                    "give one or the other")
        if given and calibration:
            raise QuantizationError("--calibration computes the importance matrix that --imatrix gives "
                                    "ready-made; give one or the other")
        if given and scheme not in IMATRIX_DEFAULT:
            raise QuantizationError(f"{scheme} is quantized without an importance matrix; --imatrix applies "
                                    f"to {', '.join(IMATRIX_DEFAULT)}")
        if on is False:
            if scheme in IQUANTS:
                raise QuantizationError(f"{scheme} is an i-quant and needs an importance matrix, which --no-imatrix "
                                        "turns off; drop --no-imatrix, or pick a K-quant (Q4_K_M, Q3_K_M, Q2_K)")
            if calibration:
                raise QuantizationError("--calibration feeds the importance matrix, which --no-imatrix turns off; "
                                        "give one or the other")
            return False
        if scheme not in IMATRIX_DEFAULT:
            if calibration:
                raise QuantizationError(f"{scheme} is quantized without an importance matrix; --calibration applies "
                                        f"to {', '.join(IMATRIX_DEFAULT)}")
            return False
        return True

    def export(self, job: Job, out: Path, work: Path) -> Built:
        scheme = job.quantization
        if scheme not in SCHEMES:
            raise QuantizationError(f"unknown GGUF quantization {scheme!r}; known: {', '.join(SCHEMES)}")
        wanted, given = self.imatrix_wanted(job), job.policy.get("imatrix_file")
        # a user's matrix is read (format errors) before any work, fitted to the model after conversion
        user = read_given(given)[0] if wanted and given else None
        calibration = load_calibration(job.policy.get("calibration")) if wanted and not given else None
        with step(f"converting {job.src.name} to GGUF {job.profile.unquantized}"):
            f16 = self.unquantized(job, work)
        keep, quant_input, pattern = {}, f16, self.expert_pattern(job.arch)
        variant = self.variant(job)
        if ((variant == "mxfp4-source" and job.policy.get("keep_mxfp4_experts", True))
                or variant == "bf16-experts-mxfp4"):
            keep[pattern] = gguf.GGMLQuantizationType.MXFP4
        imatrix, origin = None, None
        if user is not None:
            imatrix, origin = use_given(user, Path(given), f16, out / IMATRIX_FILE)
        elif calibration is not None:  # what is kept as it is needs no matrix: not measured
            imatrix, origin = cached_imatrix(job, f16, calibration, out / IMATRIX_FILE,
                                             budget_chunks(job.policy.get("imatrix_tokens", DEFAULT_BUDGET_TOKENS)),
                                             skip="|".join(keep) or None)
        if variant == "bf16-experts-mxfp4":
            quant_input = work / f"{job.src.name}-F16-experts-MXFP4.gguf"
            with step("quantizing experts to MXFP4 (OCP rule, round-to-nearest-even)"):
                write_gguf(job.src, job.arch, quant_input, file_type=job.profile.unquantized,
                           experts_to_mxfp4=True, progress=job.progress)
        final = out / f"{job.src.name}-{scheme}.gguf"
        with step(f"quantizing with llama.cpp to {scheme}" + (" with the importance matrix" if imatrix else "")
                  + (" (experts kept MXFP4)" if keep else "")):
            quantize(quant_input, final, scheme, keep=keep or None, imatrix=imatrix)
        write_side_files(job, out, final.name)
        types = tensor_types(final)
        summary = summarize(types, scheme)
        if keep:
            _verify_kept(quant_input, final, pattern)
        msgs = []
        if summary["fallbacks"]:
            msgs.append(f"{scheme} requested, but {len(summary['fallbacks'])} of {len(types)} tensors hold "
                        f"another type because their rows are not multiples of 256: "
                        + ", ".join(f"{t}×{n}" for t, n in _count(summary["fallbacks"]).items()))
        if keep:
            n = sum(1 for t in types if re.match(pattern, t.name))
            msgs.append(f"{n} expert tensors kept in MXFP4 (bit-exact with the "
                        f"{'source' if variant == 'mxfp4-source' else 'MXFP4 quantizer'}), "
                        f"not {summary['main_type']}"
                        + ("; the importance matrix neither applies to them nor measures them" if imatrix else ""))
        return Built(
            runtime={"name": self.runtime, "model_file": final.name, "options": job.profile.runtime_options},
            quantization={"requested": scheme, "variant": variant,
                          "kept": {p: t.name for p, t in keep.items()}, "applied": summary,
                          "imatrix": imatrix_record(imatrix, calibration, out, job, origin),
                          "per_tensor": {t.name: t.type for t in types}},
            parity_inputs={"unquantized": f16, "quantized": final},
            variant=variant, tools=llama_cpp_versions(), messages=msgs,
        )


def imatrix_key_parts(job: Job, model: Path, calibration, max_chunks: int | None = None,
                      skip: str | None = None) -> dict:
    """What determines the importance matrix's bytes: the source's content (the digest the
    manifest records), the unquantized GGUF it runs (its type and tensor layout: which weights
    are measured, at what sizes; not its temp path), the calibration text, the chunk size and
    budget, the weights left unmeasured (`skip`: those the quantizer keeps as they are), and the
    llama.cpp build that runs it (version, ggml, the CPU features its kernels use)."""
    tools = llama_cpp_versions()
    return {"source": mf.source_digest(job.src.checksums()), "unquantized": job.profile.unquantized,
            "tensors": tensor_layout_digest(model), "calibration": calibration.sha256, "chunk_size": CHUNK,
            "max_chunks": max_chunks, "skip": skip,
            "llama.cpp": {k: tools.get(k) for k in ("llama-cpp-python", "ggml", "llama.cpp_system_info")}}


def cached_imatrix(job: Job, model: Path, calibration, dest: Path, max_chunks: int | None = None,
                   skip: str | None = None) -> tuple[IMatrix, dict]:
    """The importance matrix of `model` on the calibration text, from the cache when this
    (source, calibration, chunks, llama.cpp) was measured before, else computed and cached;
    written to `dest` (it ships in the artifact). Returns it and how it was obtained."""
    parts = imatrix_key_parts(job, model, calibration, max_chunks, skip)
    key = cache_key(parts)
    hit = cache_lookup(key)
    if hit is not None:
        path, meta = hit
        shutil.copyfile(path, dest)
        imatrix = IMatrix.read(dest)
        imatrix.tokens = imatrix.chunk_count * imatrix.chunk_size
        imatrix.seconds = meta.get("seconds")
        console.print(f"importance matrix: reused from the cache ({imatrix.chunk_count} chunks of "
                      f"{calibration.name}, computed in {meta.get('seconds')} s; key {key[:12]})", highlight=False)
        return imatrix, {"origin": "cache", "cached": True, "cache_key": key}
    imatrix = compute_imatrix(job, model, calibration, dest, max_chunks, skip)
    stored = cache_store(key, dest, {"key": parts, "seconds": imatrix.seconds, "chunks": imatrix.chunk_count,
                                     "model": job.src.name, "dataset": calibration.name})
    if stored is None:
        console.print(f"[yellow]note:[/yellow] cannot write the importance-matrix cache {cache_dir()}; "
                      "the next export computes it again", highlight=False)
    return imatrix, {"origin": "computed", "cached": False, "cache_key": key}


def use_given(user: IMatrix, given: Path, model: Path, dest: Path) -> tuple[IMatrix, dict]:
    """`--imatrix FILE`: fitted to `model` (a misfit is a one-line error before anything is
    quantized) and shipped as imatrix.gguf: a GGUF file byte for byte, a legacy .dat converted
    as llama-imatrix converts it. The quantizer gets the file as `llama-quantize --imatrix FILE`
    reads it. Recorded by file name and sha256, never its path."""
    user.check_fits(model, given.name)
    if user.legacy:
        user.as_gguf().write(dest)
    else:
        shutil.copyfile(given, dest)
    console.print(f"importance matrix: {given.name} (given; {len(user.sums)} entries, {user.chunk_count} chunks)",
                  highlight=False)
    return user, {"origin": "given", "cached": False,
                  "given": {"name": given.name, "sha256": sha256_file(given), "format": "dat" if user.legacy
                            else "gguf", "converted": "legacy .dat to GGUF as llama-imatrix --in-file does "
                            "(sums and counts × 512)" if user.legacy else None}}


def compute_imatrix(job: Job, model: Path, calibration, dest: Path, max_chunks: int | None = None,
                    skip: str | None = None) -> IMatrix:
    """The importance matrix of `model` (the unquantized GGUF) on the calibration text, written
    to `dest` (it ships in the artifact), with progress."""
    state: dict = {"task": None, "tenth": -1}

    def on_chunk(done: int, total: int) -> None:
        if state["task"] is None:
            state["task"] = job.progress.task(f"importance matrix: {total} chunks", total=total)
        state["task"].advance(1)
        if not console.is_terminal and (tenth := done * 10 // total) > state["tenth"]:
            state["tenth"] = tenth
            console.print(f"  importance matrix: {done}/{total} chunks", highlight=False)

    with step(f"importance matrix: {job.src.name} on {calibration.name} (chunks of 512 tokens)"):
        imatrix = compute(model, calibration, on_chunk=on_chunk, max_chunks=max_chunks, skip=skip)
        imatrix.write(dest)
    console.print(f"importance matrix: {imatrix.chunk_count} chunks, {imatrix.tokens} tokens of {calibration.name}, "
                  f"{len(imatrix.sums)} weights, {imatrix.seconds:.1f} s", highlight=False)
    return imatrix


def imatrix_record(imatrix: IMatrix | None, calibration, out: Path, job: Job, origin: dict | None = None) -> dict:
    """The manifest's account of the importance matrix: the file and its sha256, where it came
    from (computed now, reused from the cache, or given by the user), the dataset (name, sha256,
    whether it is the shipped default), chunks and tokens; or why there is none."""
    if imatrix is None:
        why = ("--no-imatrix" if job.policy.get("imatrix") is False
               else f"{job.quantization} is quantized without one (applied from Q4_K_M down)")
        return {"used": False, "reason": why}
    origin = origin or {"origin": "computed", "cached": False}
    note = ("token_embd (a row lookup) and output (left out by llama-imatrix's default) are "
            "quantized without it, as in llama.cpp's own imatrix pipeline")
    if origin["origin"] == "given":
        dataset = imatrix.datasets[0] if imatrix.datasets else None
        return {"used": True, "file": IMATRIX_FILE, "sha256": sha256_file(out / IMATRIX_FILE), **origin,
                "provided_by": "the user (--imatrix)",
                # llama-imatrix records the calibration file as given on its command line: its name only
                "dataset": {"name": Path(dataset.replace("\\", "/")).name if dataset else None},
                "chunks": imatrix.chunk_count, "chunk_size": imatrix.as_gguf().chunk_size,
                "entries": len(imatrix.sums), "experts_unreached": imatrix.as_gguf().unreached(), "note": note}
    return {"used": True, "file": IMATRIX_FILE, "sha256": sha256_file(out / IMATRIX_FILE), **origin,
            "dataset": calibration.record(), "chunks": imatrix.chunk_count, "chunk_size": imatrix.chunk_size,
            "tokens": imatrix.tokens, "entries": len(imatrix.sums), "seconds": imatrix.seconds,
            "experts_unreached": imatrix.unreached(),
            "computed_by": "llama.cpp in-process (the binding's eval callback), as llama-imatrix collects it",
            "note": note}


LICENSE_NAMES = ("LICENSE", "LICENSE.md", "LICENSE.txt")


def write_side_files(job: Job, out: Path, gguf_name: str) -> list[str]:
    """What runs the GGUF besides llama.cpp: its Jinja chat template (Docker Model Runner's
    chat-template layer), the source's license, and Ollama's Modelfile / template / params."""
    written = []
    if tmpl := job.src.chat_template:
        (out / "chat_template.jinja").write_text(tmpl)
        written.append("chat_template.jinja")
    license_text = None
    if lic := next((job.src.root / n for n in LICENSE_NAMES if (job.src.root / n).is_file()), None):
        license_text = lic.read_text(errors="replace")
        (out / "LICENSE").write_text(license_text)
        written.append("LICENSE")
    return written + ollama.write(out, gguf_name, tmpl, license_text)


def _count(items: list[dict]) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i["type"]] = out.get(i["type"], 0) + 1
    return out


def _verify_kept(before: Path, after: Path, pattern: str) -> None:
    """The tensors we asked llama.cpp to keep must come out byte-identical."""
    a = {t.name: t for t in gguf.GGUFReader(before).tensors if re.match(pattern, t.name)}
    b = {t.name: t for t in gguf.GGUFReader(after).tensors if re.match(pattern, t.name)}
    for name, t in a.items():
        if name not in b or b[name].tensor_type != t.tensor_type or bytes(b[name].data) != bytes(t.data):
            raise QuantizationError(f"{name}: llama.cpp did not keep the MXFP4 expert tensor bit-exact")
