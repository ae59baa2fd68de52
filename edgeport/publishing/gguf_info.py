"""What Docker Model Runner's config says about a GGUF, read the way it reads it: architecture,
parameter count, file type, context length and the header's key/value pairs as strings.
(model-runner pkg/distribution/format/gguf.go builds the same from gguf-parser-go.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np

# arrays longer than this (token lists, merges) are left out, as DMR's format/gguf.go does
_MAX_ARRAY = 50


def _value(field) -> str | None:
    """DMR writes every value as a string: integers %d, floats %f, arrays joined with ", "."""
    import gguf

    if field.types and field.types[0] == gguf.GGUFValueType.ARRAY:
        if len(field.data) > _MAX_ARRAY:
            return None
        return ", ".join(_scalar(field, i) for i in field.data)
    return _scalar(field, field.data[0])


def _scalar(field, idx: int) -> str:
    v = field.parts[idx]
    if field.types[-1].name == "STRING":
        return bytes(v).decode("utf-8", errors="replace")
    x = v.tolist()
    x = x[0] if isinstance(x, list) and len(x) == 1 else x
    if isinstance(x, bool):
        return str(x).lower()
    return f"{x:f}" if isinstance(x, float) else str(x)


def _human_params(n: int) -> str:
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def describe(path: Path) -> dict:
    import gguf

    r = gguf.GGUFReader(str(path))
    meta = {}
    for name, field in r.fields.items():
        if name.startswith("GGUF."):
            continue
        if (v := _value(field)) is not None:
            meta[name] = v
    arch = meta.get("general.architecture", "")
    ftype = r.fields.get("general.file_type")
    quant = gguf.LlamaFileType(int(ftype.parts[ftype.data[0]][0])).name.removeprefix("MOSTLY_") if ftype else ""
    params = int(sum(int(np.prod(t.shape)) for t in r.tensors))
    ctx = meta.get(f"{arch}.context_length", "")
    return {"architecture": arch, "quantization": quant, "parameters": _human_params(params),
            "context_size": int(ctx) if ctx and ctx.isdigit() else None, "metadata": meta}
