"""What llama.cpp itself allocates: KV cache, compute and model buffers, read from its log.

Two ways in: a real GGUF, or a *skeleton* of a planned one - the exact tensor layout and
metadata the exporter would write, data left as a sparse hole - loaded with llama.cpp's
`no_alloc` (metadata only, allocations simulated). The skeleton lets the tests ask llama.cpp
about gpt-oss-20b/120b at any context without 13-65 GB of weights. Needs llama-cpp-python.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

import gguf
import numpy as np

from edgeport.core.llama_log import LlamaLog, require_llama_cpp
from edgeport.export.gguf_convert import write_hparams, write_tokenizer
from edgeport.models import bundled

from . import PlanError
from .gguf_size import ALIGN, GGUFTensor, quantized_layout
from .model import ModelSpec

MIB = 2**20


@dataclass
class Allocation:
    kv_bytes: int  # sum of "llama_kv_cache: size = ..." lines (all caches: full and SWA)
    kv_cells: list[tuple[int, int]]  # (cells, layers) per cache
    compute_bytes: dict[str, int]  # backend -> compute buffer
    model_bytes: dict[str, int]  # buffer type -> model buffer
    output_bytes: int
    log: str


_KV = re.compile(r"llama_kv_cache: size = +([\d.]+) MiB \( *(\d+) cells, +(\d+) layers")
_COMPUTE = re.compile(r"sched_reserve: +(\S+) compute buffer size = +([\d.]+) MiB")
_MODEL = re.compile(r"load_tensors: +(\S+) model buffer size = +([\d.]+) MiB")
_OUTPUT = re.compile(r"(\S+) +output buffer size = +([\d.]+) MiB")


def parse(log: str) -> Allocation:
    kv = [(int(c), int(n), float(s)) for s, c, n in _KV.findall(log)]
    return Allocation(
        kv_bytes=round(sum(s for _, _, s in kv) * MIB), kv_cells=[(c, n) for c, n, _ in kv],
        compute_bytes={b: round(float(s) * MIB) for b, s in _COMPUTE.findall(log)},
        model_bytes={b: round(float(s) * MIB) for b, s in _MODEL.findall(log)},
        output_bytes=round(sum(float(s) for _, s in _OUTPUT.findall(log)) * MIB), log=log)


def allocate(path: Path, n_ctx: int, *, swa_full: bool = False, flash_attn: bool = False, n_ubatch: int = 512,
             n_batch: int = 512, n_seq: int = 1, no_alloc: bool = False) -> Allocation:
    """Load `path` and create a context the way runtimes/llamacpp.py does (llama-cpp-python's
    defaults: swa_full as given, flash attention off, one sequence); return llama.cpp's figures."""
    lc = require_llama_cpp()
    mp = lc.llama_model_default_params()
    mp.no_alloc, mp.use_extra_bufts = no_alloc, False
    if no_alloc:  # the memory-fit pass maps nothing: no mmap either
        mp.load_mode = lc.LLAMA_LOAD_MODE_NONE
    cp = lc.llama_context_default_params()
    cp.n_ctx, cp.n_batch, cp.n_ubatch, cp.n_seq_max, cp.swa_full = n_ctx, n_batch, n_ubatch, n_seq, swa_full
    cp.flash_attn_type = lc.LLAMA_FLASH_ATTN_TYPE_ENABLED if flash_attn else lc.LLAMA_FLASH_ATTN_TYPE_DISABLED
    with LlamaLog() as log:
        model = lc.llama_model_load_from_file(str(path).encode(), mp)
        if not model:
            raise RuntimeError(f"llama.cpp could not load {path}: {log.reason()}")
        try:
            ctx = lc.llama_init_from_model(model, cp)
            if not ctx:
                raise RuntimeError(f"llama.cpp could not create a context: {log.reason()}")
            lc.llama_free(ctx)
        finally:
            lc.llama_model_free(model)
    return parse(log.text)


class _Shim:
    """The few Source attributes export/gguf_convert.py's metadata writers read."""

    def __init__(self, spec: ModelSpec, root: Path):
        self.config, self.name, self.root = spec.config, spec.name, root
        self._json = lambda n: json.loads((root / n).read_text()) if (root / n).is_file() else {}
        t = root / "chat_template.jinja"
        self.chat_template = t.read_text() if t.is_file() else None

    def json_file(self, name: str) -> dict:
        return self._json(name)


def skeleton_gguf(spec: ModelSpec, path: Path, scheme: str = "Q4_K_M", experts: str = "mxfp4",
                  tokenizer_dir: Path | None = None) -> list[GGUFTensor]:
    """Write the planned GGUF's header, metadata and tensor infos; the data is a sparse hole
    (the file has its full size, no blocks on disk). For llama.cpp no_alloc loads only.
    Without `tokenizer_dir`, the tokenizer of the family's bundled demo model."""
    if tokenizer_dir is None and not spec.arch.demo_model:
        raise PlanError(f"no bundled {spec.arch.name} model to take a tokenizer from; pass tokenizer_dir")
    tokdir = tokenizer_dir or bundled(spec.arch.demo_model)
    tensors = quantized_layout(spec, scheme, experts)
    w = gguf.GGUFWriter(path, spec.arch.gguf_arch_name)
    src = _Shim(spec, tokdir)
    write_hparams(w, src, spec.arch, gguf.LlamaFileType.MOSTLY_Q4_K_M)
    write_tokenizer(w, src, spec.arch)
    for t in tensors:
        q = gguf.GGMLQuantizationType[t.type]
        block, size = gguf.GGML_QUANT_SIZES[q]
        byte_shape = (*reversed(t.shape[1:]), t.shape[0] // block * size)
        w.add_tensor_info(t.name, byte_shape, np.dtype(np.uint8), t.nbytes, raw_dtype=q)
    w.write_header_to_file(path)
    w.write_kv_data_to_file()
    w.write_ti_data_to_file()
    end = w.fout[0].tell()
    w.close()
    data = sum(t.nbytes + (-t.nbytes % ALIGN) for t in tensors)
    with open(path, "r+b") as f:  # pad the header to ALIGN, then a hole the size of the data
        f.truncate(end + (-end % ALIGN) + data)
    return tensors
