"""Push and pull an artifact as one OCI image manifest: one uncompressed layer per file (its
digest is the sha256 in manifest.json), the config blob of the artifact's format (Docker Model
Runner for GGUF, CNCF ModelPack for the rest: `formats.py`), the manifest pushed last so an
interrupted push never leaves a visible tag. Pull checks every byte before anything appears
at `--out`."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path, PurePosixPath

from edgeport.core.atomic import staging
from edgeport.core.progress import Progress

from . import formats
from .artifact import File, executable, load_manifest, restore_modes, verify_pulled
from .errors import PublishError
from .stores import OCI_MANIFEST, Store


def _canonical(obj: dict) -> bytes:
    return json.dumps(obj, indent=2, sort_keys=False).encode()


def build(m: dict, files: list[File], root: Path) -> tuple[bytes, bytes]:
    """(config bytes, manifest bytes) for an artifact whose files are `files`."""
    exe = executable(m)  # by manifest.json, not the local modes (a CI download drops them)
    layers = [formats.layer(m, f, f.path in exe) for f in formats.ordered(m, files)]
    config = _canonical(formats.config(m, files, root))
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        **({"artifactType": at} if (at := formats.artifact_type(m)) else {}),
        "config": {"mediaType": formats.config_media_type(m), "digest": _digest(config), "size": len(config)},
        "layers": layers,
        "annotations": formats.manifest_annotations(m),
    }
    return config, _canonical(manifest)


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push(store: Store, reference: str, root: Path, m: dict, files: list[File]) -> str:
    """Upload the blobs the store lacks, then the config, then the manifest under `reference`.
    Returns the manifest digest."""
    config, manifest = build(m, files, root)
    todo = [f for f in files if not store.has_blob(f.digest, f.size)]
    total = sum(f.size for f in todo)
    print(f"pushing {len(files)} files to {store.describe()}:{reference} "
          f"({_mib(total)} to upload, {len(files) - len(todo)} already there)", flush=True)
    with Progress() as progress:
        bar = progress.task("uploading", total)
        for f in todo:
            store.put_blob(root / f.path, f.digest, f.size, bar.advance)
    store.put_bytes(config, _digest(config))
    store.put_manifest(reference, manifest, OCI_MANIFEST)
    return _digest(manifest)


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def _safe_path(p: str) -> str:
    pp = PurePosixPath(p)
    if not p or pp.is_absolute() or ".." in pp.parts or p.startswith("./") or "\\" in p:
        raise PublishError(f"refusing a layer with file path {p!r}")
    return pp.as_posix()


def _layers(manifest: dict) -> list[File]:
    out = []
    for layer in manifest.get("layers") or []:
        path = (layer.get("annotations") or {}).get(formats.FILEPATH)
        if path is None:
            raise PublishError(f"layer {layer.get('digest')} has no {formats.FILEPATH} annotation; "
                               "not an edgeport artifact")
        digest = layer.get("digest", "")
        if not digest.startswith("sha256:") or len(digest) != 71:
            raise PublishError(f"layer {path}: unsupported digest {digest!r}")
        out.append(File(_safe_path(path), int(layer["size"]), digest[7:]))
    if len({f.path for f in out}) != len(out):
        raise PublishError("the manifest lists a file path twice")
    return out


def pull(store: Store, reference: str, out: Path, force: bool = False) -> tuple[Path, str]:
    """Download every layer into a temporary directory, checking sizes and digests as bytes
    arrive, then the files against the manifest.json that came with them; only then move the
    directory to `out`. Returns (out, manifest digest)."""
    raw = store.get_manifest(reference)
    if reference.startswith("sha256:") and _digest(raw) != reference:
        raise PublishError(f"the registry returned a manifest whose digest is not {reference}")
    try:
        manifest = json.loads(raw)
    except ValueError:
        raise PublishError(f"{store.describe()}:{reference}: the manifest is not JSON") from None
    try:
        files, cfg = _parse(store, reference, manifest)
    except (KeyError, TypeError, ValueError, AttributeError):
        raise PublishError(f"{store.describe()}:{reference}: malformed OCI manifest (a descriptor lacks its "
                           "digest, size or annotations)") from None
    _fetch(store, cfg["digest"], int(cfg["size"]), None)
    with staging(Path(out), force) as tmp, Progress() as progress:
        bar = progress.task("downloading", sum(f.size for f in files))
        for f in files:
            dst = tmp / f.path
            dst.parent.mkdir(parents=True, exist_ok=True)
            _fetch(store, f.digest, f.size, dst, bar.advance)
        verify_pulled(tmp, files)
        restore_modes(tmp, load_manifest(tmp))  # the kit's scripts stay runnable, as manifest.json says
    return Path(out), _digest(raw)


def _parse(store: Store, reference: str, manifest: dict) -> tuple[list[File], dict]:
    """The layers as files, and the config descriptor, of an artifact's OCI manifest."""
    media = manifest.get("mediaType") if isinstance(manifest, dict) else f"JSON {type(manifest).__name__}"
    if media != OCI_MANIFEST:
        raise PublishError(f"{store.describe()}:{reference} is a {media!r}, not an OCI image manifest of an artifact")
    cfg = manifest.get("config") or {}
    if cfg.get("mediaType") not in formats.CONFIG_MEDIA_TYPES:
        raise PublishError(f"{store.describe()}:{reference}: config type {cfg.get('mediaType')!r} is not a model "
                           "artifact edgeport reads")
    files = _layers(manifest)
    if not any(f.path == "manifest.json" for f in files):
        raise PublishError(f"{store.describe()}:{reference} carries no manifest.json; not an edgeport artifact")
    cfg = {"digest": str(cfg["digest"]), "size": int(cfg["size"])}
    if not cfg["digest"].startswith("sha256:") or cfg["size"] < 0:
        raise ValueError(cfg)
    return files, cfg


def _fetch(store: Store, digest: str, size: int, dst: Path | None, advance=lambda n: None) -> None:
    """Stream one blob to `dst` (or nowhere), refusing it as soon as it is longer than
    announced, and at the end if it is shorter or its sha256 differs."""
    h, n = hashlib.sha256(), 0
    with store.read_blob(digest) as chunks, (open(dst, "wb") if dst else open(os.devnull, "wb")) as f:
        for b in chunks:
            n += len(b)
            if n > size:
                raise PublishError(f"blob {digest} is larger than the manifest says ({size} bytes)")
            h.update(b)
            f.write(b)
            advance(len(b))
    what = dst.name if dst else "config"
    if n != size:
        raise PublishError(f"{what}: download truncated ({n} of {size} bytes)")
    if f"sha256:{h.hexdigest()}" != digest:
        raise PublishError(f"{what}: content does not match its digest {digest} (corrupted in the registry "
                           "or in transit)")
