"""Write a gpt-oss checkpoint the way openai/gpt-oss-20b ships: experts as MXFP4
`*_blocks`/`*_scales`, everything else unchanged, `quantization_config.quant_method = "mxfp4"`,
sharded safetensors with `model.safetensors.index.json`.

Layout facts (transformers integrations/mxfp4.py, vLLM quantization/mxfp4.py):
`…experts.gate_up_proj_blocks` uint8 [E, 2I, H/32, 16] (gate/up interleaved along 2I),
`…gate_up_proj_scales` uint8 [E, 2I, H/32], `…down_proj_blocks` [E, H, I/32, 16],
`…down_proj_scales` [E, H, I/32]; element 2i in the low nibble; biases stay BF16.

An MXFP4 source passes through bit-exact (only resharded); a BF16/F32 source has its
experts quantized one expert at a time. Shards (one per decoder layer, one per big
embedding) are streamed to disk chunk by chunk: peak memory is one chunk or one expert.
"""

from __future__ import annotations

import json
import re
import shutil
from collections import defaultdict
from pathlib import Path

import numpy as np

from edgeport.core import mxfp4
from edgeport.core.errors import QuantizationError
from edgeport.core.progress import Progress
from edgeport.core.source import Source, iter_rows

from . import safetensors_stream
from .safetensors_stream import ITEMSIZE, StreamTensor

MODULES_NOT_CONVERTED = ["model.layers.*.self_attn", "model.layers.*.mlp.router",
                         "model.embed_tokens", "lm_head"]
EXPERT_WEIGHTS = (".mlp.experts.gate_up_proj", ".mlp.experts.down_proj")
SIDE_FILES = ("generation_config.json", "tokenizer.json", "tokenizer_config.json", "chat_template.jinja",
              "special_tokens_map.json")
_LAYER = re.compile(r"^model\.layers\.(\d+)\.")
_BIG = 256 * 2**20


def shard_plan(src: Source) -> list[list[str]]:
    """Tensor names per shard: one shard per layer, big embeddings alone, the rest together."""
    layers: dict[int, list[str]] = defaultdict(list)
    alone, rest = [], []
    for name in src.tensors:
        if m := _LAYER.match(name):
            layers[int(m.group(1))].append(name)
        elif src.entry(name).nbytes > _BIG:
            alone.append([name])
        else:
            rest.append(name)
    return [sorted(v) for _, v in sorted(layers.items())] + alone + ([sorted(rest)] if rest else [])


def _raw_tensor(src: Source, name: str) -> StreamTensor:
    e = src.entry(name)
    row_bytes = int(np.prod(e.shape[1:], dtype=np.int64)) * ITEMSIZE[e.dtype] if len(e.shape) > 1 else 1
    rows = e.shape[0] if e.shape else 1
    chunks = (lambda: (src.read_raw(name, r) for r in iter_rows(rows, row_bytes))) if len(e.shape) > 1 \
        else (lambda: iter([src.read_raw(name)]))
    return StreamTensor(name, e.dtype, e.shape, chunks)


def _expert_tensors(src: Source, name: str) -> list[StreamTensor]:
    """[E, in, out] float weights -> `_blocks` [E, out, in/32, 16] and `_scales` [E, out, in/32],
    quantized one expert at a time; the scales (1/16 of the blocks' size) are kept from the
    blocks pass and written right after them."""
    e, n_in, n_out = src.entry(name).shape
    scales: list[np.ndarray] = []

    def blocks():
        for i in range(e):
            b, s = mxfp4.quantize(np.ascontiguousarray(src.read_f32(name, slice(i, i + 1))[0].T))
            scales.append(s)
            yield b

    g = n_in // mxfp4.BLOCK
    return [StreamTensor(name + "_blocks", "U8", (e, n_out, g, 16), blocks),
            StreamTensor(name + "_scales", "U8", (e, n_out, g), lambda: iter(scales))]


def write_mxfp4_checkpoint(src: Source, out: Path, *, progress: Progress | None = None) -> dict:
    """Write the checkpoint into `out`; returns {tensor name: stored format}. Progress advances
    by the source bytes each finished shard consumed."""
    for name in src.tensors:
        if name.endswith(EXPERT_WEIGHTS) and not src.is_mxfp4 and src.entry(name).shape[1] % mxfp4.BLOCK:
            raise QuantizationError(f"{name}: rows of {src.entry(name).shape[1]} cannot take MXFP4 "
                                    f"(needs multiples of {mxfp4.BLOCK})")
    out.mkdir(parents=True, exist_ok=True)
    plan = shard_plan(src)
    task = progress.task(f"writing {out.name}", sum(e.nbytes for e in src.tensors.values())) if progress else None
    weight_map, formats, total = {}, {}, 0
    for k, names in enumerate(plan):
        tensors: list[StreamTensor] = []
        for name in names:
            if name.endswith(EXPERT_WEIGHTS) and not src.is_mxfp4:
                tensors += _expert_tensors(src, name)
                formats[name] = "mxfp4"
            else:
                tensors.append(_raw_tensor(src, name))
                formats[name] = "mxfp4" if name.endswith(("_blocks", "_scales")) else src.entry(name).dtype.lower()
        fname = f"model-{k + 1:05d}-of-{len(plan):05d}.safetensors"
        total += safetensors_stream.write(out / fname, tensors, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys((t.name for t in tensors), fname))
        if task:
            task.advance(sum(src.entry(n).nbytes for n in names))
    (out / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")
    cfg = dict(src.config)
    if not src.is_mxfp4:
        cfg["quantization_config"] = {"quant_method": "mxfp4", "modules_to_not_convert": MODULES_NOT_CONVERTED}
    (out / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    for f in SIDE_FILES:
        if (src.root / f).is_file():
            shutil.copy2(src.root / f, out / f)
    return formats
