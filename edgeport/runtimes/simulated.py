"""A device engine's quantized model, computed in torch on CPU.

TensorRT engines only build and run on the device, so the parity a CPU machine can give for
them is simulated: the artifact's own integer weights and scales, the engine's activation
quantization, computed by transformers' model code in fp32 (with fp16 rounding where the
engine computes in fp16). Reports label it `simulated`; `edgeport parity --device-output`
compares what the device itself produced.

Three sources, detected from the directory given:
- a ModelOpt checkpoint (`hf_quant_config.json`, made by tensorrt-edgellm-quantize):
  `W8A8_SQ_PER_CHANNEL` linears compute `dq(q(fp16(x * smooth), s_x)) @ fp16(W_int8 * s_w).T`
  with static per-tensor activation scales (symmetric, round half to even, clamp [-128, 127]);
  `W4A16_AWQ` linears compute `fp16(x * smooth) @ fp16(unpack(W_int4) * s_group).T`;
- a plain HF checkpoint: its weights rounded to FP16 (an FP16 engine);
- a TensorRT-LLM checkpoint (`config.json` with `quantization.quant_algo == "W8A16"` and
  FP16 weights): the int8 weights trtllm-build will make, i.e. TensorRT-LLM's
  `symmetric_quantize`: per output channel scale = amax / 128 (stored fp16), weights
  round-half-away(w / scale) clamped to [-128, 127].
"""

from __future__ import annotations

import json
from pathlib import Path

from edgeport.core.kit_weights import to_hf_state_dict, unpack_int4_rows

from .base import ModelInfo, load_tokenizer
from .reference import TorchModelRuntime, model_info_from_hf


def trtllm_w8a16(w, torch):
    """TensorRT-LLM's weight-only int8 of an fp16 [out, in] weight: (int8, fp16 scales)."""
    w = w.to(torch.float16).float()
    scale = w.abs().amax(dim=1) / 128.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    x = w / safe[:, None]
    q = torch.sign(x) * torch.floor(x.abs() + 0.5)  # C's round(): half away from zero
    q = torch.where(scale[:, None] > 0, q, torch.zeros_like(q)).clamp(-128, 127).to(torch.int8)
    return q, scale.to(torch.float16)


def _make_linear_classes(torch):
    class W8A8SmoothQuant(torch.nn.Module):
        def __init__(self, w_int8, w_scale, smooth, in_scale, bias=None, activations=True):
            super().__init__()
            self.activations = activations  # False: the same weights with fp16 activations (diagnosis)
            w = (w_int8.float() * w_scale.float()[:, None]).to(torch.float16).float()
            self.register_buffer("w", w)
            self.register_buffer("smooth", smooth.to(torch.float16).float())
            self.in_scale = float(in_scale)
            self.bias = bias

        def forward(self, x):
            xs = (x * self.smooth).to(torch.float16).float()
            if self.activations:
                xs = (torch.clamp(torch.round(xs / self.in_scale), -128, 127) * self.in_scale).to(torch.float16).float()
            y = torch.nn.functional.linear(xs, self.w)
            return y if self.bias is None else y + self.bias

    class W4A16AWQ(torch.nn.Module):
        def __init__(self, w_int4, w_scale, smooth, bias=None):
            super().__init__()
            group = w_int4.shape[1] // w_scale.shape[1]
            # the engine's plugin holds the group scales in fp16 (export/edgellm.py::verify_graph)
            w = w_int4.float() * w_scale.to(torch.float16).float().repeat_interleave(group, dim=1)
            self.register_buffer("w", w.to(torch.float16).float())
            self.register_buffer("smooth", smooth.to(torch.float16).float())
            self.bias = bias

        def forward(self, x):
            y = torch.nn.functional.linear((x * self.smooth).to(torch.float16).float(), self.w)
            return y if self.bias is None else y + self.bias

    return W8A8SmoothQuant, W4A16AWQ


class SimulatedRuntime(TorchModelRuntime):
    name = "simulated"

    def __init__(self, path: str | Path, info: ModelInfo | None = None, *, hf_dir: str | Path | None = None,
                 quantize_activations: bool = True, **_ignored):
        import torch


        self.torch = torch
        path = Path(path)
        self.hf_dir = Path(hf_dir) if hf_dir else path  # config + tokenizer (HF names)
        super().__init__(info or model_info_from_hf(self.hf_dir))
        self.tok = load_tokenizer(self.hf_dir)
        self.quantized: dict[str, str] = {}
        self.quantize_activations = quantize_activations
        if (path / "hf_quant_config.json").is_file():
            self.scheme = json.loads((path / "hf_quant_config.json").read_text())["quantization"]["quant_algo"]
            self.model = self._from_modelopt(path)
        elif "mapping" in (cfg := json.loads((path / "config.json").read_text())):  # TensorRT-LLM's
            self.scheme = (cfg.get("quantization") or {}).get("quant_algo") or "FP16"
            self.model = self._from_trtllm(path)
        else:  # a plain HF checkpoint, deployed with FP16 weights
            self.scheme = "FP16"
            self.model = self._from_hf_fp16(path)
        self.model.eval()
        self.name = f"simulated {self.scheme}" + ("" if quantize_activations else ", fp16 activations")

    def _skeleton(self):
        from transformers import AutoConfig, AutoModelForCausalLM

        cfg = json.loads((self.hf_dir / "config.json").read_text())
        cfg.pop("quantization_config", None)
        config = AutoConfig.for_model(**cfg)
        return AutoModelForCausalLM.from_config(config, dtype=self.torch.float32)

    def _from_modelopt(self, path: Path):
        from safetensors import safe_open

        torch = self.torch
        W8, W4 = _make_linear_classes(torch)
        model = self._skeleton()
        tensors = {}
        for f in sorted(path.glob("*.safetensors")):
            with safe_open(str(f), "pt") as st:
                tensors.update({k: st.get_tensor(k) for k in st.keys()})
        plain: set[str] = set()
        for name, mod in list(model.named_modules()):
            if not isinstance(mod, torch.nn.Linear) or f"{name}.weight" not in tensors:
                continue
            w = tensors[f"{name}.weight"]
            bias = tensors.get(f"{name}.bias")
            bias = bias.float() if bias is not None else None
            if w.dtype == torch.int8:
                new = W8(w, tensors[f"{name}.weight_scale"], tensors[f"{name}.pre_quant_scale"],
                         tensors[f"{name}.input_scale"], bias, self.quantize_activations)
                self.quantized[name] = "int8 W8A8 SmoothQuant"
            elif w.dtype == torch.uint8:
                q = torch.from_numpy(unpack_int4_rows(w.numpy()))
                new = W4(q, tensors[f"{name}.weight_scale"], tensors[f"{name}.pre_quant_scale"], bias)
                self.quantized[name] = "int4 AWQ"
            else:
                continue
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent) if parent else model, child, new)
            plain.update({f"{name}.{k}" for k in ("weight", "bias", "weight_scale", "pre_quant_scale", "input_scale")})
        state = {k: v.float() for k, v in tensors.items() if k not in plain}
        missing, unexpected = model.load_state_dict(state, strict=False)
        missing = [m for m in missing if not m.endswith((".w", ".smooth"))]
        if missing or unexpected:
            raise ValueError(f"{path}: checkpoint does not fit the model: missing {missing[:3]}, "
                             f"unexpected {unexpected[:3]}")
        return model

    def _from_trtllm(self, path: Path):
        torch = self.torch
        model = self._skeleton()
        state, quantize = to_hf_state_dict(path)
        for name in quantize:
            q, s = trtllm_w8a16(state[name], torch)
            state[name] = q.float() * s.float()[:, None]
            self.quantized[name.removesuffix(".weight")] = "int8 W8A16 (TensorRT-LLM symmetric_quantize)"
        model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
        return model

    def _from_hf_fp16(self, path: Path):
        from transformers import AutoModelForCausalLM

        torch = self.torch
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=True,
                                                     use_safetensors=True, trust_remote_code=False)
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.to(torch.float16).float())
        return model
