"""Which extra a command needs: a base install (a device that pulls, shows and serves) has no torch,
transformers, llama-cpp-python or onnxruntime; a command that needs one says in one line which
extra to install, before anything loads."""

from __future__ import annotations

import importlib.util

from edgeport.core.errors import MissingExtra

# module -> the extra that installs it (pyproject.toml [project.optional-dependencies])
EXTRA = {
    "torch": "export",
    "transformers": "export",
    "llama_cpp": "cpu",
    "onnxruntime": "onnx",
    "onnxruntime_genai": "onnx",
    "onnx": "onnx",
    "matplotlib": "bench",
}

# an artifact's runtime (manifest runtime.name) -> the modules it loads in-process
RUNTIME_MODULES = {
    "llama.cpp": ("llama_cpp",),
    "onnxruntime": ("onnxruntime", "onnxruntime_genai"),
    "transformers": ("torch", "transformers"),
    "simulated": ("torch", "transformers"),
}

# a target's artifact format -> what exporting it needs beyond the export extra
FORMAT_MODULES = {
    "gguf": ("llama_cpp",),  # llama.cpp's quantizer and the parity runtime
    "onnx": ("onnxruntime", "onnxruntime_genai", "onnx"),
}


def installed(module: str) -> bool:
    """Whether `module` can be imported, without importing it (fast)."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def require(modules: str | tuple[str, ...], what: str) -> None:
    """Raise MissingExtra naming the first missing module's extra: `what` needs it."""
    for module in (modules,) if isinstance(modules, str) else modules:
        if not installed(module):
            extra = EXTRA[module]
            raise MissingExtra(f"{what} needs {module}: pip install 'edgeport[{extra}]'")


def require_runtime(runtime: str, what: str) -> None:
    """The modules an artifact's runtime loads in this process (none for runtimes that are not extras)."""
    require(RUNTIME_MODULES.get(runtime, ()), what)
