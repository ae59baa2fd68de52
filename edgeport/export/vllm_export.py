"""vLLM target exporter: a Hugging Face MXFP4 checkpoint in openai/gpt-oss-20b's layout,
served with `vllm serve DIR --quantization mxfp4`.

vLLM's `mxfp4` method quantizes MoE experts only (its linear layers stay unquantized), so
the target takes gpt-oss (MoE) and refuses dense models, naming targets that fit.
Parity runs on CPU through transformers' own MXFP4 loader (the artifact read back the way
transformers reads openai/gpt-oss-20b), since vLLM needs a CUDA GPU.
"""

from __future__ import annotations

from pathlib import Path

from edgeport.core.progress import step

from .formats import ExporterBase
from .hf_mxfp4 import write_mxfp4_checkpoint
from .jobs import Built, Job


class VLLMExporter(ExporterBase):
    runtime = "vllm"

    def unquantized(self, job: Job, work: Path) -> None:
        return None  # parity compares the source (transformers) with the artifact (transformers' MXFP4 loader)

    def export(self, job: Job, out: Path, work: Path) -> Built:
        variant = "mxfp4-passthrough" if job.src.is_mxfp4 else "bf16-to-mxfp4"
        what = ("copying MXFP4 experts bit-exact (resharding only)" if job.src.is_mxfp4
                else "quantizing experts to MXFP4 (OCP rule, round-to-nearest-even)")
        with step(f"writing HF MXFP4 checkpoint: {what}"):
            formats = write_mxfp4_checkpoint(job.src, out, progress=job.progress)
        counts: dict[str, int] = {}
        for f in formats.values():
            counts[f] = counts.get(f, 0) + 1
        opts = dict(job.profile.runtime_options)
        serve = (f"vllm serve {{artifact}} --quantization mxfp4 --tensor-parallel-size "
                 f"{opts.get('tensor_parallel_size', 1)} --max-model-len {opts.get('max_model_len', 8192)}")
        return Built(
            # parity on a CPU machine reads the artifact with transformers' MXFP4 loader
            runtime={"name": self.runtime, "model_file": ".", "options": opts, "serve": serve,
                     "parity_runtime": "transformers"},
            quantization={"requested": job.quantization, "variant": variant,
                          "applied": {"scheme": "mxfp4", "counts": counts},
                          "per_tensor": formats},
            parity_inputs={"quantized": out}, variant=variant,
            messages=[f"serve with: {serve}"],
        )
