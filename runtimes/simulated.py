"""The reference model with a device engine's quantization applied in torch, on CPU.

TensorRT engines only build and run on the device, so the parity a CPU machine can give for
them is simulated: the same integer weights and scales the engine gets, the same activation
quantization, computed in fp32 by transformers' own model. Reports label it `simulated`;
`invoke parity` compares real device output when it is brought back.

Schemes:
- `w8a16` (TensorRT-LLM weight-only INT8): every decoder Linear's weight rounded to fp16,
  then symmetric per-output-channel int8 (scale = amax / 127), as TensorRT-LLM's
  `symmetric_quantize_last_axis_of_batched_matrix` does at build time; activations unquantized.
- `w8a8_sq` (Edge-LLM INT8 SmoothQuant): weights, per-channel weight scales, smoothing
  factors and static per-tensor activation scales read from the quantized checkpoint
  (export/smoothquant.py); each Linear computes
  `dq(q(x * smooth, s_x)) @ dq(W_int8, s_w).T`.
"""

from __future__ import annotations

from pathlib import Path

from .base import ModelInfo
from .reference import ReferenceRuntime

SCHEMES = ("w8a16", "w8a8_sq")


def int8_per_channel(w, torch):
    """Symmetric per-output-channel int8 of a [out, in] weight: (int8 values, fp32 scales)."""
    amax = w.abs().amax(dim=1, keepdim=True).float()
    scale = torch.where(amax > 0, amax / 127.0, torch.ones_like(amax))
    q = torch.clamp(torch.round(w.float() / scale), -127, 127).to(torch.int8)
    return q, scale.squeeze(1)


class SimulatedRuntime(ReferenceRuntime):
    name = "simulated"

    def __init__(self, root: str | Path, info: ModelInfo | None = None, *, scheme: str,
                 quantized: str | Path | None = None, **_ignored):
        if scheme not in SCHEMES:
            raise ValueError(f"unknown simulated scheme {scheme!r}; known: {', '.join(SCHEMES)}")
        super().__init__(root, info)
        self.scheme = scheme
        self.quantized_layers = 0
        if scheme == "w8a16":
            self._apply_w8a16()
        else:
            from export.smoothquant import apply_to_model

            if quantized is None:
                raise ValueError("w8a8_sq needs the quantized checkpoint (quantized=DIR)")
            self.quantized_layers = apply_to_model(self.model, Path(quantized), self.torch)
        self.name = f"simulated {scheme}"

    def _apply_w8a16(self) -> None:
        torch = self.torch
        with torch.no_grad():
            for mod in self.model.model.layers.modules():
                if isinstance(mod, torch.nn.Linear):
                    w = mod.weight.to(torch.float16)
                    q, s = int8_per_channel(w, torch)
                    mod.weight.copy_(q.float() * s[:, None])
                    self.quantized_layers += 1
