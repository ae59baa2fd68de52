"""K-quants through llama.cpp's own quantizer (gguf-py cannot make them), and an honest
account of what each tensor actually got.

llama.cpp silently falls back when a row length does not divide a type's block (q4_K
needs multiples of 256: gpt-oss-20b's 2880 gets q5_0 instead); `tensor_types` reads the
finished file so the manifest says what is there, not what was asked for.
"""

from __future__ import annotations

import ctypes
import os
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import gguf

from edgeport.core.errors import QuantizationError
from edgeport.core.llama_log import LlamaLog, require_llama_cpp
from edgeport.core.quant import K_FALLBACKS, SCHEMES

from .imatrix import IMatrix

Q = gguf.GGMLQuantizationType

_K_FOR_FALLBACK = {fb.name: k.name for k, fb in K_FALLBACKS.items() if k in (Q.Q4_K, Q.Q5_K, Q.Q6_K)}


def llama_cpp_versions() -> dict[str, str | None]:
    """llama-cpp-python's version and what can be known of the llama.cpp inside it (its
    sdist carries no git commit, so the ggml library version stands in)."""
    try:
        import llama_cpp
    except ImportError:
        return {"llama-cpp-python": None}
    libs = sorted((Path(llama_cpp.__file__).parent / "lib").glob("libggml-base.so.*.*.*"))
    ggml = libs[-1].name.removeprefix("libggml-base.so.") if libs else None
    return {"llama-cpp-python": llama_cpp.__version__, "ggml": ggml,
            "llama.cpp": f"vendored in llama-cpp-python {llama_cpp.__version__} (no commit id in its sdist)",
            "llama.cpp_system_info": llama_cpp.llama_print_system_info().decode(errors="replace").strip()}


def quantize(src: Path, dst: Path, scheme: str = "Q4_K_M", *, keep: dict[str, Q] | None = None,
             nthread: int = 0, imatrix: IMatrix | None = None, imatrix_file: str = "imatrix.gguf") -> str:
    """Quantize `src` GGUF to `dst` with llama.cpp. `keep` maps tensor-name regexes to a type
    they must get (llama.cpp's per-tensor overrides), e.g. MXFP4 experts kept bit-exact.
    `imatrix` goes to the quantizer normalized (sum ÷ count) with the `quantize.imatrix.*` keys
    llama-quantize writes (`imatrix_file` names the file there), so the result equals
    `llama-quantize --imatrix FILE`. Returns llama.cpp's log. On failure `dst` is removed and
    QuantizationError raised."""
    if scheme not in SCHEMES:
        raise QuantizationError(f"unknown GGUF quantization {scheme!r}; known: {', '.join(SCHEMES)}")
    lc = require_llama_cpp()
    params = lc.llama_model_quantize_default_params()
    params.ftype = getattr(lc, SCHEMES[scheme][0])
    params.nthread = nthread or (os.cpu_count() or 1)
    if keep:
        arr = (lc.llama_model_tensor_override * (len(keep) + 1))()
        patterns = [p.encode() for p in keep]  # keep the bytes alive for the call
        for i, (p, t) in enumerate(zip(patterns, keep.values(), strict=False)):
            arr[i].pattern, arr[i].type = p, int(t)
        arr[len(keep)].pattern = None
        params.tt_overrides = ctypes.cast(arr, ctypes.POINTER(lc.llama_model_tensor_override))
    if imatrix is not None:
        alive = _imatrix_params(lc, params, imatrix, imatrix_file)  # noqa: F841 (owns the C arrays)
    with LlamaLog() as log:
        rc = lc.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(params))
    if rc != 0:
        dst.unlink(missing_ok=True)  # llama.cpp leaves a partial file behind
        raise QuantizationError(f"llama.cpp could not quantize to {scheme}: {log.reason()}")
    return log.text


def _imatrix_params(lc, params, imatrix: IMatrix, file_name: str) -> list:
    """Fill `params.imatrix` (name/data/size entries, a null name last) and `params.kv_overrides`
    with llama-quantize's own keys; returns the objects that must outlive the call."""
    data = imatrix.normalized()
    arr = (lc.llama_model_imatrix_data * (len(data) + 1))()
    names = [n.encode() for n in data]
    for i, (n, v) in enumerate(zip(names, data.values(), strict=True)):
        arr[i].name, arr[i].data, arr[i].size = n, v.ctypes.data_as(ctypes.POINTER(ctypes.c_float)), v.size
    arr[len(data)].name = None
    params.imatrix = ctypes.cast(arr, ctypes.POINTER(lc.llama_model_imatrix_data))
    kvs = [("quantize.imatrix.file", file_name)]
    if imatrix.datasets:
        kvs.append(("quantize.imatrix.dataset", imatrix.datasets[0]))
    kvs.append(("quantize.imatrix.entries_count", len(data)))
    if imatrix.chunk_count > 0:
        kvs.append(("quantize.imatrix.chunks_count", imatrix.chunk_count))
    kv = (lc.llama_model_kv_override * (len(kvs) + 1))()
    for i, (k, v) in enumerate(kvs):
        kv[i].key = k.encode()
        if isinstance(v, str):
            kv[i].tag, kv[i].value.val_str = lc.LLAMA_KV_OVERRIDE_TYPE_STR, v.encode()[:127]
        else:
            kv[i].tag, kv[i].value.val_i64 = lc.LLAMA_KV_OVERRIDE_TYPE_INT, v
    kv[len(kvs)].key = b""
    params.kv_overrides = ctypes.cast(kv, ctypes.POINTER(lc.llama_model_kv_override))
    return [data, arr, names, kv]


@dataclass(frozen=True)
class TensorType:
    name: str
    type: str
    shape: tuple[int, ...]  # ggml order: ne0 (row length) first


def tensor_types(path: Path) -> list[TensorType]:
    r = gguf.GGUFReader(path)
    return [TensorType(t.name, t.tensor_type.name, tuple(int(x) for x in t.shape)) for t in r.tensors]


def summarize(types: list[TensorType], scheme: str) -> dict:
    """Counts per type, and which tensors did not get the scheme's main type, and why."""
    target = SCHEMES[scheme][1] if scheme in SCHEMES else None
    counts = Counter(t.type for t in types)
    fallbacks, other = [], []
    for t in types:
        if target is None or t.type in ("F32",) or t.type == target.name:
            continue
        wanted = _K_FOR_FALLBACK.get(t.type)
        if target.name.startswith("IQ") and t.type == Q.IQ4_NL.name:
            wanted = target.name  # i-quants all fall back to IQ4_NL
        if (target.name.endswith("_K") or target.name.startswith("IQ")) and t.shape[0] % 256 and wanted:
            fallbacks.append({"tensor": t.name, "type": t.type, "row": t.shape[0],
                              "reason": f"row length {t.shape[0]} is not a multiple of 256: "
                                        f"{wanted} fell back to {t.type}"})
        else:
            other.append({"tensor": t.name, "type": t.type})
    return {"scheme": scheme, "main_type": target.name if target else None, "counts": dict(counts),
            "fallbacks": fallbacks, "other_choices": other}
