"""GGUF target exporter: HF -> GGUF F16 (MXFP4 experts kept) -> llama.cpp's quantizer."""

from __future__ import annotations

import re
from pathlib import Path

import gguf

from .architectures import Architecture, tensor_pattern
from .errors import QuantizationError, TargetError
from .gguf_convert import write_gguf
from .gguf_quantize import SCHEMES, llama_cpp_versions, quantize, summarize, tensor_types
from .jobs import Built, Job
from .progress import step


class GGUFExporter:
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

    def export(self, job: Job, out: Path, work: Path) -> Built:
        scheme = job.quantization
        if scheme not in SCHEMES:
            raise QuantizationError(f"unknown GGUF quantization {scheme!r}; known: {', '.join(SCHEMES)}")
        with step(f"converting {job.src.name} to GGUF {job.profile.unquantized}"):
            f16 = self.unquantized(job, work)
        keep, quant_input, pattern = {}, f16, self.expert_pattern(job.arch)
        variant = self.variant(job)
        if variant == "mxfp4-source" and job.policy.get("keep_mxfp4_experts", True):
            keep[pattern] = gguf.GGMLQuantizationType.MXFP4
        elif variant == "bf16-experts-mxfp4":
            quant_input = work / f"{job.src.name}-F16-experts-MXFP4.gguf"
            with step("quantizing experts to MXFP4 (OCP rule, round-to-nearest-even)"):
                write_gguf(job.src, job.arch, quant_input, file_type=job.profile.unquantized,
                           experts_to_mxfp4=True, progress=job.progress)
            keep[pattern] = gguf.GGMLQuantizationType.MXFP4
        final = out / f"{job.src.name}-{scheme}.gguf"
        with step(f"quantizing with llama.cpp to {scheme}"
                  + (" (experts kept MXFP4)" if keep else "")):
            quantize(quant_input, final, scheme, keep=keep or None)
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
                        f"not {summary['main_type']}")
        return Built(
            runtime={"name": self.runtime, "model_file": final.name, "options": job.profile.runtime_options},
            quantization={"requested": scheme, "variant": variant,
                          "kept": {p: t.name for p, t in keep.items()}, "applied": summary,
                          "per_tensor": {t.name: t.type for t in types}},
            parity_inputs={"unquantized": f16, "quantized": final},
            variant=variant, tools=llama_cpp_versions(), messages=msgs,
        )


LICENSE_NAMES = ("LICENSE", "LICENSE.md", "LICENSE.txt")


def write_side_files(job: Job, out: Path, gguf_name: str) -> list[str]:
    """What runs the GGUF besides llama.cpp: its Jinja chat template (Docker Model Runner's
    chat-template layer), the source's license, and Ollama's Modelfile / template / params."""
    from publishing import ollama

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
