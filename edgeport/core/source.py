"""The checkpoint we export from: a local directory or a hub id, read tensor by tensor.

Reads safetensors with positioned reads of the file, not mmap: a 20B conversion then
holds only the chunk it is working on, and the page cache (which mmap'd pages would add
to our RSS) stays the kernel's business. Pickle `.bin` checkpoints are refused unless
the user opts in, and no code from a checkpoint is ever run.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np

from .atomic import write_json
from .errors import SourceError

log = logging.getLogger(__name__)

# safetensors dtype -> (numpy dtype used to hold the raw bytes, bytes per element)
_RAW_DTYPES = {
    "F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "BF16": np.dtype("<u2"), "F64": np.dtype("<f8"),
    "U8": np.dtype("u1"), "I8": np.dtype("i1"), "I32": np.dtype("<i4"), "I64": np.dtype("<i8"),
    "U16": np.dtype("<u2"), "I16": np.dtype("<i2"),
}
_SIDE_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "chat_template.jinja", "chat_template.json",
)


@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: str  # safetensors dtype string
    shape: tuple[int, ...]
    file: Path
    start: int  # absolute byte offset in file
    nbytes: int


def _read_header(path: Path) -> tuple[dict, int]:
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise SourceError(f"{path.name}: truncated safetensors file ({size} bytes)")
        (n,) = struct.unpack("<Q", head)
        if n > size - 8 or n > 100 * 2**20:
            raise SourceError(f"{path.name}: corrupt or truncated safetensors header")
        try:
            header = json.loads(f.read(n))
        except json.JSONDecodeError as e:
            raise SourceError(f"{path.name}: unreadable safetensors header ({e.msg})") from None
    return header, 8 + n


def scan_safetensors(path: Path) -> list[TensorEntry]:
    header, base = _read_header(path)
    size = path.stat().st_size
    out = []
    for name, info in header.items():
        if name == "__metadata__":
            continue
        b, e = info["data_offsets"]
        if base + e > size:
            raise SourceError(
                f"{path.name}: truncated: tensor {name} ends at byte {base + e} but the file has {size}"
            )
        out.append(TensorEntry(name, info["dtype"], tuple(info["shape"]), path, base + b, e - b))
    return out


def bf16_to_f32(raw: np.ndarray) -> np.ndarray:
    return (raw.astype(np.uint32) << 16).view(np.float32)


@dataclass
class Source:
    """A validated checkpoint directory. Construct with `Source.open`."""

    root: Path
    model_id: str
    revision: str | None
    config: dict
    tensors: dict[str, TensorEntry] = field(repr=False)
    from_hub: bool = False  # named by a hub id (downloaded), not a local directory

    # --- construction -------------------------------------------------------------------
    @classmethod
    def open(cls, spec: str | os.PathLike, revision: str | None = None, *,
             allow_pickle: bool = False, trust_remote_code: bool = False) -> Source:
        path = Path(spec).expanduser()
        hub = False
        if path.exists():
            root, model_id = path.resolve(), str(spec)
        elif _looks_like_hub_id(str(spec)):
            root, model_id, hub = _download(str(spec), revision), str(spec), True
        else:
            raise SourceError(f"model not found: {spec} (no such directory, and not a hub id like org/name)")
        if not root.is_dir():
            raise SourceError(f"model path is not a directory: {root}")
        cfg_path = root / "config.json"
        if not cfg_path.is_file():
            raise SourceError(f"{root}: no config.json; is this a Hugging Face checkpoint directory?")
        try:
            config = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise SourceError(f"{cfg_path}: invalid JSON ({e.msg})") from None
        if config.get("auto_map") and not trust_remote_code:
            raise SourceError(
                f"{root}: config.json asks for custom code (auto_map); edgeport never runs checkpoint "
                "code unless you pass --trust-remote-code"
            )
        tensors = _index_tensors(root, allow_pickle)
        if not (root / "tokenizer.json").is_file():
            raise SourceError(f"{root}: missing tokenizer.json (a fast tokenizer is required)")
        return cls(root, model_id, revision or _local_revision(root), config, tensors, hub)

    # --- what the checkpoint is ---------------------------------------------------------
    @property
    def architecture(self) -> str:
        archs = self.config.get("architectures") or []
        return archs[0] if archs else self.config.get("model_type", "?")

    @property
    def quant_method(self) -> str | None:
        return (self.config.get("quantization_config") or {}).get("quant_method")

    @property
    def is_mxfp4(self) -> bool:
        return self.quant_method == "mxfp4"

    @property
    def name(self) -> str:
        return Path(self.model_id.rstrip("/")).name

    @cached_property
    def license(self) -> str | None:
        """The license the checkpoint's own model card (README.md front matter) declares."""
        readme = self.root / "README.md"
        if not readme.is_file():
            return None
        text = readme.read_text(errors="replace")
        front = text.split("---", 2)[1] if text.startswith("---") and text.count("---") >= 2 else ""
        hit = re.search(r"^license:\s*([\w.+-]+)\s*$", front, re.M)
        return hit.group(1) if hit else None

    def json_file(self, name: str) -> dict:
        p = self.root / name
        return json.loads(p.read_text()) if p.is_file() else {}

    @cached_property
    def chat_template(self) -> str | None:
        if (p := self.root / "chat_template.jinja").is_file():
            return p.read_text()
        t = self.json_file("tokenizer_config.json").get("chat_template")
        return t if isinstance(t, str) else None

    def files(self) -> list[Path]:
        """Every file that defines the model (weights and side files), for checksums."""
        weights = {t.file for t in self.tensors.values()}
        side = [self.root / n for n in _SIDE_FILES if (self.root / n).is_file()]
        idx = [p for p in self.root.glob("*.index.json")]
        return sorted(weights | set(side) | set(idx))

    def checksums(self) -> dict[str, dict]:
        """Size and sha256 of every file, hashed once per Source (a 20B checkpoint is 13 GB)."""
        if "_checksums" not in self.__dict__:
            self.__dict__["_checksums"] = {p.name: {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
                                           for p in self.files()}
        return dict(self.__dict__["_checksums"])

    # --- tensors --------------------------------------------------------------------------
    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def entry(self, name: str) -> TensorEntry:
        try:
            return self.tensors[name]
        except KeyError:
            raise SourceError(f"{self.root}: tensor {name} is missing from the checkpoint") from None

    def read_raw(self, name: str, rows: slice | None = None) -> np.ndarray:
        """Raw stored values of a tensor (BF16 as uint16), optionally a slice of its first axis."""
        e = self.entry(name)
        if e.dtype == "PICKLE":
            return self._read_pickled(e, rows)
        dt = _RAW_DTYPES.get(e.dtype)
        if dt is None:
            raise SourceError(f"tensor {name}: unsupported dtype {e.dtype}")
        shape = list(e.shape) or [1]
        row_elems = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        r0, r1 = (0, shape[0]) if rows is None else rows.indices(shape[0])[:2]
        count = (r1 - r0) * row_elems
        with open(e.file, "rb") as f:
            f.seek(e.start + r0 * row_elems * dt.itemsize)
            data = np.fromfile(f, dtype=dt, count=count)
        if data.size != count:
            raise SourceError(f"{e.file.name}: truncated while reading {name}")
        return data.reshape([r1 - r0, *shape[1:]] if e.shape else [])

    def read_f32(self, name: str, rows: slice | None = None) -> np.ndarray:
        raw = self.read_raw(name, rows)
        dtype = self.entry(name).dtype
        if dtype == "BF16":
            return bf16_to_f32(raw)
        return raw.astype(np.float32, copy=False)

    def _read_pickled(self, e: TensorEntry, rows: slice | None) -> np.ndarray:
        import torch

        sd = torch.load(e.file, map_location="cpu", weights_only=True, mmap=True)
        t = sd[e.name]
        t = t[rows] if rows is not None else t
        return t.float().numpy() if t.is_floating_point() else t.numpy()


def sha256_file(path: Path, chunk: int = 16 * 2**20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def _index_path() -> Path:
    """Where this machine remembers local sources by content digest: $XDG_CACHE_HOME/edgeport
    (else ~/.cache/edgeport). Manifests name a local source by name and digest only, so a
    parity re-run finds it here, never in the artifact."""
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    return (Path(xdg) if os.path.isabs(xdg) else Path.home() / ".cache") / "edgeport" / "sources.json"


def _read_index() -> dict[str, list[str]]:
    try:
        known = json.loads(_index_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(known, dict):
        return {}
    return {k: [v] if isinstance(v, str) else [p for p in v if isinstance(p, str)]
            for k, v in known.items() if isinstance(v, str | list)}


def remember(digest: str, root: Path) -> None:
    """Note where a source with `digest` lives on this machine, newest first (best effort: a
    read-only home only costs the parity re-run its default). Several copies of one checkpoint
    may be known; those that are gone are dropped."""
    known = _read_index()
    paths = [str(root)] + [p for p in known.get(digest, []) if p != str(root) and Path(p).is_dir()]
    if known.get(digest) == paths[:8]:
        return
    known[digest] = paths[:8]
    try:
        _index_path().parent.mkdir(parents=True, exist_ok=True)
        write_json(_index_path(), known)
    except OSError:
        pass


def recall(digest: str) -> Path | None:
    """The newest directory remembered for `digest` that is still there."""
    return next((Path(p) for p in _read_index().get(digest, []) if Path(p).is_dir()), None)


def _looks_like_hub_id(spec: str) -> bool:
    parts = spec.split("/")
    return len(parts) == 2 and all(parts) and not spec.startswith((".", "/", "~"))


def _download(repo_id: str, revision: str | None) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(
            repo_id, revision=revision,
            allow_patterns=["*.safetensors", "*.json", "*.jinja", "tokenizer*"],
        ))
    except Exception as e:  # offline, gated, typo: all one message
        raise SourceError(f"could not fetch {repo_id} from the Hugging Face hub: {type(e).__name__}: "
                          f"{str(e).splitlines()[0] if str(e) else ''}") from None


def _local_revision(root: Path) -> str | None:
    """The hub commit for a huggingface_hub snapshot directory (…/snapshots/<sha>), else None."""
    return root.name if root.parent.name == "snapshots" else None


def _index_tensors(root: Path, allow_pickle: bool) -> dict[str, TensorEntry]:
    """Which files hold the weights, in transformers' order of precedence (its loader is the
    reference): model.safetensors, else the index's shards, else any *.safetensors."""
    st_files = sorted(root.glob("*.safetensors"))
    idx_path = root / "model.safetensors.index.json"
    if (root / "model.safetensors").is_file():
        st_files = [root / "model.safetensors"]
        if idx_path.is_file():
            log.warning("%s has both model.safetensors and an index; reading model.safetensors, "
                        "as transformers does", root)
    elif idx_path.is_file():
        weight_map = json.loads(idx_path.read_text()).get("weight_map", {})
        missing = sorted({f for f in weight_map.values() if not (root / f).is_file()})
        if missing:
            raise SourceError(f"{root}: shards listed in the index are missing: {', '.join(missing)}")
        st_files = sorted({root / f for f in weight_map.values()})
    if st_files:
        out: dict[str, TensorEntry] = {}
        for p in st_files:
            for e in scan_safetensors(p):
                out[e.name] = e
        if idx_path.is_file() and not (root / "model.safetensors").is_file():
            absent = sorted(set(weight_map) - set(out))
            if absent:
                raise SourceError(f"{root}: index lists tensors no shard holds, e.g. {absent[0]}")
        return out
    bins = sorted(root.glob("*.bin")) + sorted(root.glob("*.pt"))
    if bins and not allow_pickle:
        raise SourceError(
            f"{root}: only pickle weights ({bins[0].name}); pickle can run code, so edgeport reads "
            "safetensors only (pass --allow-pickle to read them with torch's weights_only loader)"
        )
    if bins:
        import torch

        out = {}
        for p in bins:
            sd = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
            for k, t in sd.items():
                out[k] = TensorEntry(k, "PICKLE", tuple(t.shape), p, 0, t.numel() * t.element_size())
        return out
    raise SourceError(f"{root}: no weights found (*.safetensors)")


def iter_rows(n_rows: int, row_bytes: int, budget: int = 64 * 2**20) -> Iterator[slice]:
    """Row slices of at most `budget` bytes: the unit in which big tensors are streamed."""
    step = max(1, budget // max(1, row_bytes))
    for r in range(0, n_rows, step):
        yield slice(r, min(n_rows, r + step))
