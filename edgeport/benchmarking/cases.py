"""The export cases whose parity figures the tests pin: the README's paths on the trained tiny
models, and random-init checkpoints (edgeport/models/build_random.py) on every target that takes them.
Shared by tests/test_regression_bounds.py and parity_figures.py here (which measures them)."""

from __future__ import annotations

from pathlib import Path

from edgeport.core.source import Source
from edgeport.export.hf_mxfp4 import write_mxfp4_checkpoint
from edgeport.models import MODELS
from edgeport.models.build_random import build

# name -> export arguments; `model` is a key of MODELS
CASES: dict[str, dict] = {
    # GGUF (cpu / apple)
    "cpu-gpt-oss": {"model": "tiny-gpt-oss", "target": "cpu"},  # the README's headline command
    "cpu-gpt-oss-kquant": {"model": "tiny-gpt-oss", "target": "cpu", "policy": {"bf16_experts": "kquant"}},
    "cpu-gpt-oss-mxfp4": {"model": "tiny-gpt-oss-mxfp4", "target": "cpu"},
    "cpu-llama": {"model": "tiny-llama", "target": "cpu"},
    "apple-llama": {"model": "tiny-llama", "target": "apple"},
    # vllm
    "vllm-gpt-oss": {"model": "tiny-gpt-oss", "target": "vllm"},
    "vllm-gpt-oss-mxfp4": {"model": "tiny-gpt-oss-mxfp4", "target": "vllm"},
    # onnx
    "onnx-llama-int8": {"model": "tiny-llama", "target": "onnx"},
    "onnx-llama-int4": {"model": "tiny-llama", "target": "onnx", "quantization": "int4"},
    "onnx-llama-fp32": {"model": "tiny-llama", "target": "onnx", "quantization": "fp32"},
    "onnx-llama-tensorrt": {"model": "tiny-llama", "target": "onnx", "policy": {"ep": "tensorrt"}},
    "onnx-gpt-oss-mxfp4-int8": {"model": "tiny-gpt-oss-mxfp4", "target": "onnx"},
    # jetson
    "jetson-llama-int8": {"model": "tiny-llama", "target": "jetson"},
    "jetson-llama-w8a16": {"model": "tiny-llama", "target": "jetson", "quantization": "int8-w8a16"},
    "jetson-llama-int4": {"model": "tiny-llama", "target": "jetson", "quantization": "int4"},
    "jetson-llama-fp16": {"model": "tiny-llama", "target": "jetson", "quantization": "fp16"},
    "jetson6-llama": {"model": "tiny-llama", "target": "jetson", "policy": {"jetpack": "6"}},
    # random-init (flat distributions): the default gate must take them on every target
    "cpu-random-llama": {"model": "random-llama", "target": "cpu"},
    "cpu-random-gpt-oss": {"model": "random-gpt-oss", "target": "cpu"},
    "apple-random-llama": {"model": "random-llama", "target": "apple"},
    "apple-random-gpt-oss": {"model": "random-gpt-oss", "target": "apple"},
    "vllm-random-gpt-oss": {"model": "random-gpt-oss", "target": "vllm"},
    "onnx-random-llama": {"model": "random-llama", "target": "onnx"},
    "onnx-random-gpt-oss": {"model": "random-gpt-oss", "target": "onnx"},
    "jetson-random-llama": {"model": "random-llama", "target": "jetson"},
    "jetson6-random-llama": {"model": "random-llama", "target": "jetson", "policy": {"jetpack": "6"}},
}

TOOLENV_TARGETS = {"onnx", "jetson"}


def needs_toolenv(name: str) -> bool:
    c = CASES[name]
    return c["target"] in TOOLENV_TARGETS and (c.get("policy") or {}).get("jetpack") != "6"


def case_model(key: str, workdir: Path) -> Path:
    """The model directory of a MODELS key; derived ones are built into `workdir` once."""
    if key in ("tiny-gpt-oss", "tiny-llama"):
        return MODELS / key
    out = workdir / key
    if out.is_dir():
        return out
    tmp = workdir / f".{key}.partial"
    if key == "tiny-gpt-oss-mxfp4":

        write_mxfp4_checkpoint(Source.open(MODELS / "tiny-gpt-oss"), tmp)
    elif key.startswith("random-"):

        build(key.removeprefix("random-"), tmp)
    else:
        raise KeyError(key)
    tmp.rename(out)
    return out
