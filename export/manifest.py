"""manifest.json: what an artifact is, where it came from and how far it can be trusted."""

from __future__ import annotations

import importlib.metadata as md
import json
import platform
import time
from pathlib import Path

from .source import Source, sha256_file

SCHEMA = "edgeport.manifest/1"
NAME = "manifest.json"


def _version(pkg: str) -> str | None:
    try:
        return md.version(pkg)
    except md.PackageNotFoundError:
        return None


def tool_versions(extra: dict[str, str | None] | None = None) -> dict[str, str | None]:
    v = {p: _version(p) for p in ("edgeport", "gguf", "llama-cpp-python", "transformers", "torch",
                                  "safetensors", "numpy")}
    v["python"] = platform.python_version()
    v.update(extra or {})
    return v


def file_entries(root: Path) -> list[dict]:
    """Every file but manifest.json: path, bytes, sha256, and `executable` for scripts (a Jetson
    kit's), so a pull from a store that keeps no modes (the Hub) can restore them."""
    return [{"path": str(p.relative_to(root)), "bytes": p.stat().st_size, "sha256": sha256_file(p),
             **({"executable": True} if p.stat().st_mode & 0o100 else {})}
            for p in sorted(root.rglob("*")) if p.is_file() and p.name != NAME]


def build(*, src: Source, arch: str, target: str, fmt: str, runtime: dict, quantization: dict,
          root: Path, model: dict, tools: dict | None = None, parity: dict | None = None) -> dict:
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {"model": src.model_id, "path": str(src.root), "revision": src.revision,
                   "architecture": src.architecture, "quant_method": src.quant_method,
                   "files": src.checksums()},
        "architecture": arch,
        "target": target,
        "format": fmt,
        "runtime": runtime,
        "model": model,
        "quantization": quantization,
        "tools": tool_versions(tools),
        "files": file_entries(root),
        "parity": parity,
    }


def write(root: Path, manifest: dict) -> Path:
    manifest["files"] = file_entries(root)
    p = root / NAME
    p.write_text(json.dumps(manifest, indent=2) + "\n")
    return p


def load(root: Path) -> dict:
    from .errors import SourceError

    p = Path(root) / NAME
    if not p.is_file():
        raise SourceError(f"{root}: no {NAME}; is this an edgeport artifact?")
    return json.loads(p.read_text())
