"""One interface over every runtime: `runtimes.load(path)` picks the one an artifact's
manifest names (or the reference runtime for a Hugging Face checkpoint directory)."""

from __future__ import annotations

import importlib
from pathlib import Path

from edgeport.core import manifest as mf
from edgeport.core.errors import RuntimeUnavailable

from .base import ModelInfo, Runtime
from .llamacpp import LlamaCppRuntime
from .reference import ReferenceRuntime

# manifest runtime name -> "module:class"; each module imports its library lazily
RUNTIMES = {
    "llama.cpp": "edgeport.runtimes.llamacpp:LlamaCppRuntime",
    "transformers": "edgeport.runtimes.reference:ReferenceRuntime",
    "transformers-streamed": "edgeport.runtimes.streamed:StreamedReferenceRuntime",
    "vllm": "edgeport.runtimes.vllm:VLLMRuntime",
    "onnxruntime": "edgeport.runtimes.onnxrt:OnnxRuntime",
    "simulated": "edgeport.runtimes.simulated:SimulatedRuntime",
    "edgellm": "edgeport.runtimes.tensorrt:EdgeLLMRuntime",
    "tensorrt-llm": "edgeport.runtimes.tensorrt:TensorRTLLMRuntime",
}

__all__ = ["RUNTIMES", "ModelInfo", "Runtime", "load", "load_runtime"]


def load_runtime(name: str, model_file: Path, info: ModelInfo | None, options: dict | None = None) -> Runtime:
    if name not in RUNTIMES:
        raise RuntimeUnavailable(f"unknown runtime {name!r}; known: {', '.join(RUNTIMES)}")
    mod, cls = RUNTIMES[name].split(":")
    return getattr(importlib.import_module(mod), cls)(model_file, info, **(options or {}))


def load(path: str | Path, **options) -> Runtime:
    """An artifact directory (manifest.json), a Hugging Face checkpoint dir, or a .gguf file."""
    path = Path(path)
    if (path / mf.NAME).is_file():
        m = mf.load(path)
        rt = m["runtime"]
        return load_runtime(rt["name"], path / rt["model_file"], ModelInfo(**m["model"]),
                            {**rt.get("options", {}), **options})
    if (path / "config.json").is_file():

        return ReferenceRuntime(path, **options)
    if path.suffix == ".gguf" and path.is_file():

        return LlamaCppRuntime(path, **options)
    raise RuntimeUnavailable(f"{path}: not an edgeport artifact, a checkpoint directory or a .gguf file")
