"""Quantization schemes as data: what each artifact format offers, read by the exporters that
make them (export/), the target profiles that name them (targets/) and the planner that sizes
them (planning/), so none of those imports another to learn a scheme's name.
"""

from __future__ import annotations

import gguf

Q = gguf.GGMLQuantizationType

# --- GGUF (llama.cpp's quantizer) ---------------------------------------------------------

# scheme -> (llama_ftype name in llama_cpp, the type the bulk of weights is meant to get)
SCHEMES: dict[str, tuple[str, Q]] = {
    "Q4_K_M": ("LLAMA_FTYPE_MOSTLY_Q4_K_M", Q.Q4_K),
    "Q5_K_M": ("LLAMA_FTYPE_MOSTLY_Q5_K_M", Q.Q5_K),
    "Q6_K": ("LLAMA_FTYPE_MOSTLY_Q6_K", Q.Q6_K),
    "Q8_0": ("LLAMA_FTYPE_MOSTLY_Q8_0", Q.Q8_0),
    "MXFP4_MOE": ("LLAMA_FTYPE_MOSTLY_MXFP4_MOE", Q.MXFP4),
    "Q3_K_M": ("LLAMA_FTYPE_MOSTLY_Q3_K_M", Q.Q3_K),
    "Q2_K": ("LLAMA_FTYPE_MOSTLY_Q2_K", Q.Q2_K),
    "IQ4_XS": ("LLAMA_FTYPE_MOSTLY_IQ4_XS", Q.IQ4_XS),
    "IQ3_M": ("LLAMA_FTYPE_MOSTLY_IQ3_M", Q.IQ3_S),
    "IQ2_M": ("LLAMA_FTYPE_MOSTLY_IQ2_M", Q.IQ2_S),
}
# an importance matrix by default from Q4_K_M down (where it measurably lowers the error, README);
# i-quants are refused without one (llama.cpp itself requires it for IQ2_*, and their codebooks
# are fitted with it in mind)
IMATRIX_DEFAULT = ("Q4_K_M", "Q3_K_M", "Q2_K", "IQ4_XS", "IQ3_M", "IQ2_M")
IQUANTS = ("IQ4_XS", "IQ3_M", "IQ2_M")
# llama.cpp's fallbacks for rows that a 256-block type cannot take (llama-quant.cpp)
K_FALLBACKS: dict[Q, Q] = {Q.Q4_K: Q.Q5_0, Q.Q5_K: Q.Q5_1, Q.Q6_K: Q.Q8_0, Q.Q2_K: Q.Q4_0, Q.Q3_K: Q.Q4_0,
                           Q.IQ4_XS: Q.IQ4_NL, Q.IQ3_S: Q.IQ4_NL, Q.IQ2_S: Q.IQ4_NL}

# --- ONNX (onnxruntime / onnxruntime-genai) -------------------------------------------------

# execution provider -> graph kind: onnxruntime-genai's builder, or optimum's Q/DQ graph
GRAPH_FOR_EP = {"cpu": "genai", "cuda": "genai", "tensorrt": "qdq"}
PRECISIONS = {"genai": ("int8", "int4", "fp32"), "qdq": ("int8", "fp32")}


def onnx_variants() -> tuple[str, ...]:
    """<graph kind>-<precision>[-mxfp4-experts], as export/onnx_export.py names its variants."""
    return tuple(f"{k}-{p}{e}" for k, ps in PRECISIONS.items() for p in ps for e in ("", "-mxfp4-experts"))
