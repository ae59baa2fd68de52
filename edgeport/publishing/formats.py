"""How an artifact looks in an OCI registry, as data. Two formats, chosen by the artifact's
format:

- GGUF (cpu, apple): Docker Model Runner's model format (config v0.1), as its code implements
  it so that `docker model pull` can use what we push. Source: github.com/docker/model-runner
  @642c721: pkg/distribution/types/config.go (ConfigFile, Config, Descriptor, media types,
  annotation keys), format/gguf.go (the config values), internal/partial/layer.go (the
  annotations on every layer), distribution/client.go `checkCompat` (accepted config types),
  remote.go / store/blobs.go (diff_ids[i] must be layer i's digest), internal/bundle/unpack.go
  (GGUF layers found by media type, shards named in manifest order).
- everything else: a CNCF ModelPack artifact. Source: github.com/modelpack/model-spec,
  docs/spec.md, docs/config.md, docs/annotations.md, specs-go/v1/{mediatype,config,annotations}.go,
  schema/config-schema.json.

Every layer is one file of the artifact, uncompressed, its digest the sha256 in manifest.json,
annotated with its path (`org.cncf.model.filepath`, which both formats use)."""

from __future__ import annotations

import json
import re
from pathlib import Path, PurePosixPath

from .artifact import File
from .gguf_info import describe
from .modelcard import source_license

FILEPATH = "org.cncf.model.filepath"  # annotation: the file's path inside the artifact

# --- Docker Model Runner (pkg/distribution/types/config.go) -----------------------------------
DMR_CONFIG = "application/vnd.docker.ai.model.config.v0.1+json"
DMR_GGUF = "application/vnd.docker.ai.gguf.v3"
DMR_LICENSE = "application/vnd.docker.ai.license"
DMR_CHAT_TEMPLATE = "application/vnd.docker.ai.chat.template.jinja"
DMR_FILE = "application/vnd.docker.ai.model.file"  # any other file, path from the annotation
FILE_METADATA = "org.cncf.model.file.metadata+json"
UNTESTED = "org.cncf.model.file.mediatype.untested"

# --- CNCF ModelPack (specs-go/v1/mediatype.go) --------------------------------------------------
MODELPACK_ARTIFACT = "application/vnd.cncf.model.manifest.v1+json"
MODELPACK_CONFIG = "application/vnd.cncf.model.config.v1+json"
MP_WEIGHT = "application/vnd.cncf.model.weight.v1.raw"
MP_WEIGHT_CONFIG = "application/vnd.cncf.model.weight.config.v1.raw"
MP_DOC = "application/vnd.cncf.model.doc.v1.raw"
MP_CODE = "application/vnd.cncf.model.code.v1.raw"

CONFIG_MEDIA_TYPES = (DMR_CONFIG, MODELPACK_CONFIG)

# file name -> ModelPack layer kind; first match wins
MODELPACK_KINDS: list[tuple[str, str]] = [
    (r"(^|/)(LICENSE|NOTICE)[^/]*$|(^|/)README[^/]*$|\.md$", MP_DOC),
    (r"\.(safetensors|onnx|onnx\.data|data|gguf|bin|engine|plan)$", MP_WEIGHT),
    (r"(^|/)(manifest|parity|device_parity)\.json$", MP_DOC),
    (r"\.(json|jinja|txt|model|tiktoken|yaml|yml)$", MP_WEIGHT_CONFIG),
    (r"\.(sh|py)$", MP_CODE),
]

# the same for Docker Model Runner artifacts (GGUF): what DMR reads has its own type; the rest
# (our manifest, parity report, Ollama files) is DMR's generic model file, which its v0.1
# unpack leaves alone (it selects layers by media type)
DMR_KINDS: list[tuple[str, str]] = [
    (r"(^|/)imatrix\.gguf$", DMR_FILE),  # the importance matrix: data, not a model shard DMR would load
    (r"\.gguf$", DMR_GGUF),
    (r"(^|/)LICENSE[^/]*$", DMR_LICENSE),
    (r"(^|/)chat_template\.jinja$", DMR_CHAT_TEMPLATE),
    (r".", DMR_FILE),
]
# ModelPack config.format per artifact format
MODELPACK_FORMAT = {"hf-mxfp4": "safetensors", "onnx": "onnx", "jetson": "onnx"}


def is_dmr(m: dict) -> bool:
    return m["format"] == "gguf"


def media_type(m: dict, path: str) -> str:
    for pattern, mt in DMR_KINDS if is_dmr(m) else MODELPACK_KINDS:
        if re.search(pattern, path):
            return mt
    return MP_WEIGHT_CONFIG


def _shard_key(path: str) -> tuple:
    # llama.cpp shards: name-00001-of-00003.gguf; DMR keeps them in shard order
    hit = re.search(r"-(\d{5})-of-(\d{5})\.gguf$", path)
    return (0, int(hit.group(1))) if hit else (0, 0)


def ordered(m: dict, files: list[File]) -> list[File]:
    """Layer order: model weights first (GGUF shards in shard order), then the rest as listed;
    manifest.json last."""
    rank = {DMR_GGUF: 0, MP_WEIGHT: 0}
    return sorted(files, key=lambda f: (f.path == "manifest.json", rank.get(media_type(m, f.path), 1),
                                        _shard_key(f.path), f.path))


def layer(m: dict, f: File, executable: bool = False) -> dict:
    """One file, one raw layer, annotated as DMR's partial.NewLayer and modctl annotate theirs
    (mtime is the artifact's creation time, so the same artifact always gives the same digest)."""
    meta = {"name": PurePosixPath(f.path).name, "mode": 0o755 if executable else 0o644, "uid": 0, "gid": 0,
            "size": f.size, "mtime": m.get("created"), "typeflag": 0}
    return {"mediaType": media_type(m, f.path), "digest": f.digest, "size": f.size,
            "annotations": {FILEPATH: PurePosixPath(f.path).as_posix(),
                            FILE_METADATA: json.dumps(meta, separators=(",", ":")), UNTESTED: "false"}}


def artifact_type(m: dict) -> str | None:
    return None if is_dmr(m) else MODELPACK_ARTIFACT


def config_media_type(m: dict) -> str:
    return DMR_CONFIG if is_dmr(m) else MODELPACK_CONFIG


def manifest_annotations(m: dict) -> dict:
    return {"org.opencontainers.image.created": m.get("created", ""),
            "org.opencontainers.image.title": Path(m["source"].get("model") or "model").name,
            "io.edgeport.target": m["target"]}


def binary_size(n: int) -> str:
    """DMR's `size`: the GGUF's bytes in binary units, no space ("864B", "256.35MiB")."""
    if n < 1024:
        return f"{n}B"
    x = float(n)
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        x /= 1024
        if x < 1024 or unit == "TiB":
            return f"{x:.2f}{unit}"
    raise AssertionError


def config(m: dict, files: list[File], root: Path) -> dict:
    return dmr_config(m, files, root) if is_dmr(m) else modelpack_config(m, files)


def dmr_config(m: dict, files: list[File], root: Path) -> dict:
    """types.ConfigFile: {config: Config, descriptor: Descriptor, rootfs: RootFS}."""
    ggufs = [f for f in ordered(m, files) if media_type(m, f.path) == DMR_GGUF]
    info = describe(root / ggufs[0].path)  # DMR parses the first shard
    size = sum(f.size for f in ggufs)
    cfg = {"format": "gguf", "quantization": info["quantization"], "parameters": info["parameters"],
           "architecture": info["architecture"], "size": binary_size(size), "gguf": info["metadata"]}
    if info.get("context_size") and 0 < info["context_size"] <= 2**31 - 1:  # *int32
        cfg["context_size"] = info["context_size"]
    return {"config": cfg, "descriptor": {"created": m.get("created")},
            "rootfs": {"type": "rootfs", "diff_ids": [f.digest for f in ordered(m, files)]}}


def modelpack_config(m: dict, files: list[File]) -> dict:
    """schema/config-schema.json: {descriptor, config, modelfs}, no other keys anywhere
    (additionalProperties: false); diffIds are the raw layers' digests, in layer order."""
    src, q = m["source"], m["quantization"]
    descriptor = {"createdAt": m.get("created"), "name": Path(src.get("model") or "model").name,
                  "family": m.get("architecture")}
    if src.get("revision"):
        descriptor["revision"] = src["revision"]
    if lic := source_license(m):
        descriptor["licenses"] = [lic]
    cfg = {"architecture": "transformer", "format": MODELPACK_FORMAT.get(m["format"], m["format"])}
    if q.get("requested"):
        cfg["precision"] = q["requested"]
    if q.get("variant"):
        cfg["quantization"] = q["variant"]
    return {"descriptor": descriptor, "config": cfg,
            "modelfs": {"type": "layers", "diffIds": [f.digest for f in ordered(m, files)]}}
