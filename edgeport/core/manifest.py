"""manifest.json: what an artifact is, where it came from and how far it can be trusted.

Its file hashes are a seal: only the step that also proves the files may set them (`seal`:
an export, or a parity re-run that passes). Everything else that adds to a manifest (bench
figures, a device's parity) goes through `record`, which refuses when a listed file no longer
matches and leaves the manifest as it was. Writes are atomic and strict JSON. No local path
goes into a manifest: `push` publishes it.
"""

from __future__ import annotations

import hashlib
import importlib.metadata as md
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path

from .atomic import write_json
from .errors import EdgeportError, SourceError
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
    return [_entry(root, p) for p in sorted(root.rglob("*")) if p.is_file() and p.name != NAME]


def _entry(root: Path, p: Path) -> dict:
    return {"path": str(p.relative_to(root)), "bytes": p.stat().st_size, "sha256": sha256_file(p),
            **({"executable": True} if p.stat().st_mode & 0o100 else {})}


class ManifestMismatch(EdgeportError):
    """A file of the artifact no longer matches its manifest (edited, truncated, removed)."""


def source_digest(files: dict[str, dict]) -> str:
    """One digest for a checkpoint's contents (its files' names and sha256), to name a local
    source without its path."""
    lines = "".join(f"{name} {f['sha256']}\n" for name, f in sorted(files.items()))
    return "sha256:" + hashlib.sha256(lines.encode()).hexdigest()


def source_record(src: Source) -> dict:
    """A Hub id and revision, or a local directory's name and content digest: never its path."""
    files = src.checksums()
    hub = src.from_hub
    return {"model": src.model_id if hub else src.name, "hub": hub, "revision": src.revision,
            "digest": source_digest(files), "architecture": src.architecture,
            "quant_method": src.quant_method, "license": src.license, "files": files}


def build(*, src: Source, arch: str, target: str, fmt: str, runtime: dict, quantization: dict,
          root: Path, model: dict, tools: dict | None = None, parity: dict | None = None) -> dict:
    return {
        "schema": SCHEMA,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": source_record(src),
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


def seal(root: Path, manifest: dict) -> Path:
    """Hash every file into the manifest and write it. Only for a step that has just proven the
    files (an export, a parity re-run that passed)."""
    manifest["files"] = file_entries(root)
    return write_json(root / NAME, manifest)


def verify(root: Path, manifest: dict | None = None, skip: set[str] = frozenset()) -> dict:
    """The manifest, if every listed file (but `skip`) is there with its recorded size and
    sha256; else ManifestMismatch naming them."""
    m = manifest if manifest is not None else load(root)
    problems = []
    for e in m.get("files", []):
        p = root / e["path"]
        if e["path"] in skip:
            continue
        if not p.is_file():
            problems.append(f"{e['path']} is missing")
        elif p.stat().st_size != e["bytes"] or sha256_file(p) != e["sha256"]:
            problems.append(f"{e['path']} was changed (sha256 differs from the manifest)")
    if problems:
        raise ManifestMismatch(f"{root}: {'; '.join(problems[:3])}"
                               f"{f' (+{len(problems) - 3} more)' if len(problems) > 3 else ''}; "
                               "the manifest was left as it was (re-export, or re-run parity to prove the files)")
    return m


def record(root: Path, updates: dict, writes: dict[str, Callable[[Path], object]] | None = None) -> dict:
    """Add results (`updates`: top-level keys) and the files that carry them (`writes`: a path
    in the artifact -> what writes it) without re-sealing the rest. Every other listed file is
    checked first: if one no longer matches, ManifestMismatch and nothing is written."""
    writes = writes or {}
    m = verify(root, skip=set(writes))
    for rel, write in writes.items():
        write(root / rel)
    m.update(updates)
    fresh = {rel: _entry(root, root / rel) for rel in writes}
    m["files"] = sorted([e for e in m["files"] if e["path"] not in fresh] + list(fresh.values()),
                        key=lambda e: e["path"])
    write_json(root / NAME, m)
    return m


def load(root: Path) -> dict:
    p = Path(root) / NAME
    if not p.is_file():
        raise SourceError(f"{root}: no {NAME}; is this an edgeport artifact?")
    return json.loads(p.read_text())
