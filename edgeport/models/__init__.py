"""The bundled demo checkpoints (package data, so `edgeport export` works from a wheel) and their builders."""

from pathlib import Path

MODELS = Path(__file__).resolve().parent
DEFAULT = MODELS / "tiny-gpt-oss"


def bundled(name: str) -> Path:
    """A bundled checkpoint's directory: tiny-gpt-oss, tiny-llama, tiny-gpt-oss-mxfp4 (`edgeport models`)."""
    return MODELS / name
