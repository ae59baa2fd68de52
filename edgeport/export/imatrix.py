"""Importance matrix (imatrix) for llama.cpp's quantizer, computed in-process from calibration text.

What `llama-imatrix` computes, collected the same way: llama.cpp runs the unquantized GGUF on
the calibration text in 512-token chunks (BOS first, every logit requested so the last layer
runs in full) and calls back after every matrix multiplication; for each MUL_MAT whose weight
is a `blk.*` tensor (batches of 16 rows or more) we add the squares of its input activations
per input column, for each MUL_MAT_ID (MoE experts) per expert over only the tokens routed to
it (`ids`). Additions run in llama-imatrix's order in float32, so the sums are bit-identical to
`llama-imatrix -b 512` (one chunk per batch, as here; tests/test_imatrix.py). In-process, because
it is the same llama.cpp as our quantizer, needs no tool build and no second copy of the model in
memory (edgeport/benchmarking/bench_imatrix.py).

The file is llama.cpp's GGUF imatrix format (`<name>.in_sum2`, `<name>.counts`,
`imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`); the quantizer takes
sum ÷ count per expert (1.0 where no token reached one), as `llama-quantize --imatrix` does.
`read_given` also takes llama.cpp's legacy `.dat` (`llama-imatrix --output-format dat`, and every
llama.cpp before the GGUF format), read as `common_imatrix_load` reads it.

A computed matrix is cached (`cache_dir()`, one `<key>.gguf` + `<key>.json` per key): the key is a
digest of everything that determines its bytes (the exporter names them: source digest,
unquantized type, tensor layout, calibration sha256, chunk size and budget, llama.cpp build,
COLLECTOR), so a re-export of the same model reuses it and any change computes a new one.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import shutil
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from edgeport.core.atomic import atomic_file, raise_pending, write_json
from edgeport.core.errors import CalibrationError, QuantizationError
from edgeport.core.llama_log import LlamaLog, extra_bufts_enabled, require_llama_cpp
from edgeport.core.llama_tools import cache_root
from edgeport.core.source import sha256_file

DEFAULT_CALIBRATION = Path(__file__).parent / "data" / "calibration.jsonl"
CHUNK = 512  # llama-imatrix's default context (-c 512): one chunk of calibration text per pass
# the default budget: calibration tokens the matrix runs (whole chunks). Chosen from the measured
# quality-vs-budget curve (benchmarking/imatrix_quality.py --chunks, README "importance matrix
# budget"): past it the quantized model's KL no longer improves on the bundled models, and each
# 512-token chunk costs ~80 s on 2 cores at gpt-oss-20b's size
DEFAULT_BUDGET_TOKENS = 4096
MIN_ROWS = 16  # llama-imatrix ignores dense matmuls of fewer rows (single-token decode steps)
FILE_NAME = "imatrix.gguf"
CACHE_ENV = "EDGEPORT_IMATRIX_CACHE"  # where computed matrices are kept (default: cache_dir())
COLLECTOR = 2  # what compute() collects and how: part of every cache key; bump it when that changes


@dataclass(frozen=True)
class Calibration:
    """The calibration text and where it came from (recorded in the manifest)."""

    path: Path
    text: str
    sha256: str
    samples: int | None  # JSON lines read from a .jsonl file; None for plain text
    default: bool

    @property
    def name(self) -> str:
        return self.path.name

    def record(self) -> dict:
        # no path: the manifest is published
        return {"name": self.name, "sha256": self.sha256, "bytes": len(self.text.encode()),
                "samples": self.samples, "default": self.default}


def load_calibration(path: str | Path | None = None) -> Calibration:
    """The shipped calibration set, or a user's file: UTF-8 text, or JSON lines each with a
    string `text` field. A missing, empty or non-text file raises CalibrationError (one line)."""
    p = Path(path) if path else DEFAULT_CALIBRATION
    if not p.exists():
        raise CalibrationError(f"calibration file {p} does not exist")
    if not p.is_file():
        raise CalibrationError(f"calibration file {p} is not a file")
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise CalibrationError(f"cannot read calibration file {p}: {e.strerror}") from None
    if not raw.strip():
        raise CalibrationError(f"calibration file {p} is empty")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise CalibrationError(f"calibration file {p} is not text (not UTF-8 at byte {e.start})") from None
    if "\x00" in text:
        raise CalibrationError(f"calibration file {p} is not text (it holds NUL bytes)")
    samples = None
    if p.suffix == ".jsonl":
        texts = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError:
                raise CalibrationError(f"calibration file {p}, line {n}: not JSON (a .jsonl file holds one "
                                       "JSON object with a \"text\" string per line)") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("text"), str):
                raise CalibrationError(f"calibration file {p}, line {n}: no \"text\" string")
            texts.append(obj["text"])
        if not any(t.strip() for t in texts):
            raise CalibrationError(f"calibration file {p} is empty (no text in its JSON lines)")
        text, samples = "\n\n".join(texts), len(texts)
    return Calibration(p.resolve(), text, hashlib.sha256(raw).hexdigest(), samples,
                       default=p.resolve() == DEFAULT_CALIBRATION.resolve())


@dataclass
class IMatrix:
    """Per weight: sums of squared activations [n_mat, n_cols] and tokens counted [n_mat]."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, np.ndarray] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = CHUNK
    tokens: int = 0  # calibration tokens run through the model (chunks × chunk size)
    seconds: float | None = None
    # read from a legacy .dat: sums hold (sum ÷ count) × ncall, flat, and counts [ncall]
    legacy: bool = False

    def normalized(self) -> dict[str, np.ndarray]:
        """What llama-quantize passes to the quantizer: sum ÷ count (float32) per expert, 1.0 where
        the count is zero (an expert no calibration token reached); a legacy entry ÷ its ncall
        (as is where ncall is 0)."""
        out = {}
        for name, s in self.sums.items():
            if self.legacy:
                n = int(self.counts[name][0])
                out[name] = np.ascontiguousarray((s / np.float32(n) if n > 0 else s).astype(np.float32).reshape(-1))
                continue
            c = self.counts[name].astype(np.float32)
            v = np.ones_like(s, dtype=np.float32)
            seen = c > 0
            v[seen] = s[seen] / c[seen, None]
            out[name] = np.ascontiguousarray(v.reshape(-1))
        return out

    def unreached(self) -> dict[str, int]:
        """Experts (per MoE weight) no calibration token was routed to."""
        return {n: int((c == 0).sum()) for n, c in self.counts.items() if (c == 0).any()}

    def write(self, path: Path) -> Path:
        """llama.cpp's GGUF imatrix layout, as llama-imatrix writes it (keys in its order, tensors
        sorted by name, a single-matrix entry one-dimensional as ggml_n_dims makes it)."""
        w = gguf.GGUFWriter(str(path), arch="")
        w.kv_data[0].clear()  # no general.architecture: an imatrix is not a model
        w.add_string("general.type", "imatrix")
        w.add_array("imatrix.datasets", list(self.datasets))
        w.add_uint32("imatrix.chunk_count", self.chunk_count)
        w.add_uint32("imatrix.chunk_size", self.chunk_size)
        for name in sorted(self.sums):
            s, c = self.sums[name], self.counts[name].astype(np.float32)
            w.add_tensor(f"{name}.in_sum2", s.reshape(-1) if s.shape[0] == 1 else s)
            w.add_tensor(f"{name}.counts", c if c.shape[0] == 1 else c.reshape(-1, 1))
        w.write_header_to_file()
        w.write_kv_data_to_file()
        w.write_tensors_to_file()
        w.close()
        return path

    def as_gguf(self) -> IMatrix:
        """A legacy matrix in the GGUF format's terms, as `llama-imatrix --in-file x.dat -o x.gguf`
        converts it (-c 512): sums × 512, counts ncall × 512, one count per entry. Scaling by a
        power of two, the quantizer's sum ÷ count is the legacy value ÷ ncall bit for bit."""
        if not self.legacy:
            return self
        return IMatrix(sums={n: (s * np.float32(CHUNK)).astype(np.float32) for n, s in self.sums.items()},
                       counts={n: (c * CHUNK).astype(np.int64) for n, c in self.counts.items()},
                       datasets=list(self.datasets), chunk_count=self.chunk_count, chunk_size=CHUNK,
                       tokens=self.chunk_count * CHUNK)

    def check_fits(self, model_path: Path, given: str) -> None:
        """Every entry names a weight of `model_path` (a GGUF) and holds one value per input column
        of each of its matrices (llama-quantize's own size check, made before any quantizing).
        Raises QuantizationError in one line naming the first misfit."""
        layout = {t.name: [int(n) for n in t.shape] for t in gguf.GGUFReader(model_path).tensors}
        if not self.sums:
            raise QuantizationError(f"importance matrix {given} holds no entries")
        unknown = sorted(n for n in self.sums if n not in layout)
        if unknown:
            raise QuantizationError(f"importance matrix {given} is not for this model: {len(unknown)} of its "
                                    f"{len(self.sums)} entries name no tensor of {model_path.stem} "
                                    f"(first: {unknown[0]})")
        for name in sorted(self.sums):
            ne = layout[name]
            n_mat = int(np.prod(ne[2:], dtype=np.int64)) if len(ne) > 2 else 1
            size, n_counts = self.sums[name].size, self.counts[name].size
            if size != ne[0] * n_mat or n_counts not in (1, n_mat):
                raise QuantizationError(f"importance matrix {given} is not for this model: {name} holds {size} "
                                        f"values in {n_counts} matrices; the model's tensor has {ne[0]} input "
                                        f"columns × {n_mat} matrices")

    @classmethod
    def read(cls, path: Path) -> IMatrix:
        r = gguf.GGUFReader(path)
        f = r.fields
        if "imatrix.chunk_count" not in f or "imatrix.chunk_size" not in f:
            raise QuantizationError(f"{path}: not a GGUF imatrix (no imatrix.chunk_count / chunk_size)")
        m = cls(datasets=list(f["imatrix.datasets"].contents()) if "imatrix.datasets" in f else [],
                chunk_count=int(f["imatrix.chunk_count"].contents()),
                chunk_size=int(f["imatrix.chunk_size"].contents()))
        tensors = {t.name: np.asarray(t.data, dtype=np.float32) for t in r.tensors}
        for tname, data in tensors.items():
            if tname.endswith(".in_sum2"):
                name = tname.removesuffix(".in_sum2")
                if f"{name}.counts" not in tensors:
                    raise QuantizationError(f"{path}: {name} has sums but no counts")
                counts = tensors[f"{name}.counts"].reshape(-1)
                if counts.size == 0 or data.size % counts.size:
                    raise QuantizationError(f"{path}: {name}: {data.size} sums do not split into {counts.size} "
                                            "matrices")
                m.sums[name] = data.reshape(counts.size, -1).copy()
                m.counts[name] = counts.copy()
        m.tokens = int(max((c.max() for c in m.counts.values()), default=0))
        return m

    @classmethod
    def read_legacy(cls, path: Path) -> IMatrix:
        """llama.cpp's legacy .dat: int32 n_entries, then per entry int32 name length, name, int32
        ncall, int32 nval, nval float32 ((sum ÷ count) × ncall); optionally int32 chunk count and
        int32 length + dataset name (common_imatrix_load_legacy)."""
        raw = Path(path).read_bytes()
        bad = QuantizationError(f"{Path(path).name} is neither a GGUF importance matrix nor llama.cpp's legacy "
                                ".dat format")
        pos = 0

        def i32() -> int:
            nonlocal pos
            if pos + 4 > len(raw):
                raise bad
            pos += 4
            return struct.unpack_from("<i", raw, pos - 4)[0]

        n_entries = i32()
        if n_entries < 1 or n_entries > len(raw) // 12:
            raise bad
        m = cls(legacy=True, chunk_size=0)
        for _ in range(n_entries):
            n = i32()
            if not 0 < n <= 4096 or pos + n > len(raw):
                raise bad
            try:
                name = raw[pos:pos + n].decode()
            except UnicodeDecodeError:
                raise bad from None
            pos += n
            ncall, nval = i32(), i32()
            if nval < 1 or pos + 4 * nval > len(raw):
                raise bad
            m.sums[name] = np.frombuffer(raw, "<f4", nval, pos).astype(np.float32).reshape(1, nval)
            m.counts[name] = np.array([ncall], np.int64)
            pos += 4 * nval
        if pos < len(raw):  # the trailer is optional
            m.chunk_count = i32()
            if pos + 4 <= len(raw) and 0 < (n := i32()) <= len(raw) - pos:
                m.datasets = [raw[pos:pos + n].decode(errors="replace")]
        m.tokens = m.chunk_count * CHUNK
        return m


def read_given(path: str | Path) -> tuple[IMatrix, str]:
    """A user's importance matrix (`--imatrix FILE`) and its format, "gguf" or "dat": a GGUF file
    is read as one, anything else as the legacy format (llama.cpp's own rule). A missing,
    unreadable or malformed file raises QuantizationError (one line)."""
    p = Path(path)
    if not p.is_file():
        raise QuantizationError(f"importance matrix {p} does not exist" if not p.exists()
                                else f"importance matrix {p} is not a file")
    try:
        with open(p, "rb") as f:
            magic = f.read(4)
    except OSError as e:
        raise QuantizationError(f"cannot read importance matrix {p}: {e.strerror}") from None
    if magic == b"GGUF":
        try:
            m = IMatrix.read(p)
        except QuantizationError as e:
            raise QuantizationError(f"importance matrix {p.name}: {str(e).removeprefix(f'{p}: ')}") from None
        except (ValueError, KeyError, IndexError) as e:
            raise QuantizationError(f"importance matrix {p.name} is not a readable GGUF ({e})") from None
        return m, "gguf"
    return IMatrix.read_legacy(p), "dat"


def cache_dir() -> Path:
    """Computed importance matrices: $EDGEPORT_IMATRIX_CACHE, else $XDG_CACHE_HOME/edgeport/imatrix
    (default ~/.cache/edgeport/imatrix). Safe to delete at any time."""
    return Path(os.environ.get(CACHE_ENV) or cache_root() / "imatrix")


def cache_key(parts: dict) -> str:
    """The cache key of a matrix: sha256 of the canonical JSON of what determines its bytes."""
    return hashlib.sha256(json.dumps({**parts, "collector": COLLECTOR}, sort_keys=True,
                                     separators=(",", ":")).encode()).hexdigest()


def tensor_layout_digest(model_path: Path) -> str:
    """sha256 of a GGUF's tensor directory (names, shapes, types): which weights the matrix
    measures and at what sizes (read from the header only)."""
    lines = "".join(f"{t.name} {list(map(int, t.shape))} {t.tensor_type.name}\n"
                    for t in gguf.GGUFReader(model_path).tensors)
    return hashlib.sha256(lines.encode()).hexdigest()


def cache_lookup(key: str) -> tuple[Path, dict] | None:
    """The cached file and its record, or None. An entry is complete once its .json (written last)
    exists and the file's sha256 matches it; anything else is a miss (and is overwritten)."""
    path, meta_path = cache_dir() / f"{key}.gguf", cache_dir() / f"{key}.json"
    try:
        meta = json.loads(meta_path.read_text())
        if isinstance(meta, dict) and path.is_file() and sha256_file(path) == meta.get("sha256"):
            return path, meta
    except (OSError, ValueError):
        pass
    return None


def cache_store(key: str, file: Path, meta: dict) -> Path | None:
    """Keep `file` under `key` (atomically: an interrupted store leaves no half entry). Returns
    the cached path, or None where the cache cannot be written (the export goes on)."""
    d = cache_dir()
    try:
        d.mkdir(parents=True, exist_ok=True)
        with open(file, "rb") as src, atomic_file(d / f"{key}.gguf", "wb") as dst:
            shutil.copyfileobj(src, dst)
        write_json(d / f"{key}.json", {**meta, "sha256": sha256_file(d / f"{key}.gguf")})
    except OSError:
        return None
    return d / f"{key}.gguf"


class _Tensor(ctypes.Structure):
    """struct ggml_tensor (ggml.h of the vendored llama.cpp; GGML_MAX_DIMS 4, GGML_MAX_SRC 10,
    GGML_MAX_OP_PARAMS 64, GGML_MAX_NAME 64)."""

    _fields_ = [("type", ctypes.c_int), ("buffer", ctypes.c_void_p), ("ne", ctypes.c_int64 * 4),
                ("nb", ctypes.c_size_t * 4), ("op", ctypes.c_int), ("op_params", ctypes.c_int32 * 16),
                ("flags", ctypes.c_int32), ("src", ctypes.c_void_p * 10), ("view_src", ctypes.c_void_p),
                ("view_offs", ctypes.c_size_t), ("data", ctypes.c_void_p), ("name", ctypes.c_char * 64),
                ("extra", ctypes.c_void_p), ("padding", ctypes.c_char * 8)]


GGML_TYPE_F32 = 0


def _ops(lc) -> tuple[int, int]:
    """GGML_OP_MUL_MAT and GGML_OP_MUL_MAT_ID as this ggml numbers them (asked of ggml_op_name,
    not copied from a header that could be another version's)."""
    lib = ctypes.CDLL(str(next((Path(lc.__file__).parent / "lib").glob("libggml-base.so*"))))
    lib.ggml_op_name.restype, lib.ggml_op_name.argtypes = ctypes.c_char_p, [ctypes.c_int]
    found = {}
    for i in range(1, 200):  # both sit early in the enum; stop there, never past its end
        name = lib.ggml_op_name(i)
        if name in (b"MUL_MAT", b"MUL_MAT_ID"):
            found[name] = i
            if len(found) == 2:
                return found[b"MUL_MAT"], found[b"MUL_MAT_ID"]
    raise QuantizationError("this ggml names no MUL_MAT / MUL_MAT_ID op")


def _weight_name(raw: bytes) -> str:
    """llama-imatrix's filter_tensor_name: `CUDA0#blk.0.attn_k.weight#0` -> `blk.0.attn_k.weight`."""
    name = raw.decode(errors="replace")
    if "#" in name:
        name = name.split("#", 2)[1]
    return name


def _f32(t: _Tensor, shape: tuple[int, ...], strides: tuple[int, ...]) -> np.ndarray:
    span = sum((n - 1) * s for n, s in zip(shape, strides, strict=True)) + 4
    buf = (ctypes.c_char * span).from_address(t.data)
    return np.ndarray(shape, np.float32, buffer=buf, strides=strides)


def _accumulate(acc: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """acc + Σ rows², added one row after another in float32 (llama-imatrix's loop), not pairwise."""
    return np.add.accumulate(np.concatenate([acc[None], rows * rows]), axis=0)[-1]


class _Collector:
    def __init__(self, mul_mat: int, mul_mat_id: int, skip: re.Pattern | None = None):
        self.mul_mat, self.mul_mat_id, self.skip = mul_mat, mul_mat_id, skip
        self.sums: dict[str, np.ndarray] = {}
        self.counts: dict[str, np.ndarray] = {}
        self.error: BaseException | None = None

    def __call__(self, t_ptr, ask, _user) -> bool:
        try:
            t = _Tensor.from_address(t_ptr)
            if ask:
                return self.wants(t)
            if self.error is None:
                self.collect(t)
        except BaseException as e:  # a C callback cannot raise: kept, raised after the pass
            self.error = self.error or e
        return True

    def wants(self, t: _Tensor) -> bool:
        if t.op not in (self.mul_mat, self.mul_mat_id):
            return False
        src0, src1 = _Tensor.from_address(t.src[0]), _Tensor.from_address(t.src[1])
        if self.skip is not None and self.skip.match(_weight_name(src0.name)):
            return False  # kept as it is by the quantizer: a matrix would not be used
        if t.op == self.mul_mat_id:
            return True
        if src1.ne[1] < MIN_ROWS or src1.type != GGML_TYPE_F32:
            return False
        return _weight_name(src0.name).startswith("blk.")

    def collect(self, t: _Tensor) -> None:
        src0, src1 = _Tensor.from_address(t.src[0]), _Tensor.from_address(t.src[1])
        name = _weight_name(src0.name)
        ne, nb = list(src1.ne), list(src1.nb)
        if nb[0] != 4:
            raise QuantizationError(f"{name}: activations are not contiguous float32 rows")
        if t.op == self.mul_mat_id:
            ids_t = _Tensor.from_address(t.src[2])
            n_as, n_ids, n_tokens = src0.ne[2], ids_t.ne[0], ne[2]
            ids = np.ndarray((n_tokens, n_ids), np.int32, buffer=(ctypes.c_char * (
                (n_tokens - 1) * ids_t.nb[1] + (n_ids - 1) * ids_t.nb[0] + 4)).from_address(ids_t.data),
                strides=(ids_t.nb[1], ids_t.nb[0]))
            x = _f32(src1, (ne[2], ne[1], ne[0]), (nb[2], nb[1], 4))
            # llama-imatrix's order: expert slot (idx) outer, token (row) inner
            order_ex = ids.T.reshape(-1).astype(np.int64)
            slot = np.repeat(np.arange(n_ids) % ne[1], n_tokens)
            row = np.tile(np.arange(n_tokens), n_ids)
            if order_ex.min(initial=0) < 0 or order_ex.max(initial=0) >= n_as:
                raise QuantizationError(f"{name}: expert id out of range")
            sums = self.sums.setdefault(name, np.zeros((n_as, ne[0]), np.float32))
            counts = self.counts.setdefault(name, np.zeros(n_as, np.int64))
            for ex in np.unique(order_ex):
                sel = order_ex == ex
                sums[ex] = _accumulate(sums[ex], x[row[sel], slot[sel]])
                counts[ex] += int(sel.sum())
                if not np.isfinite(sums[ex]).all():
                    raise QuantizationError(f"non-finite activations in {name}")
            return
        n_mat = src0.ne[2] * src0.ne[3]
        sums = self.sums.setdefault(name, np.zeros((n_mat, ne[0]), np.float32))
        counts = self.counts.setdefault(name, np.zeros(1, np.int64))
        x = _f32(src1, (ne[3], ne[2], ne[1], ne[0]), (nb[3], nb[2], nb[1], 4))
        for i3 in range(ne[3]):
            for i2 in range(ne[2]):
                mat = (i3 % src0.ne[3]) * src0.ne[2] + (i2 % src0.ne[2])
                sums[mat] = _accumulate(sums[mat], x[i3, i2])
        if not np.isfinite(sums).all():
            raise QuantizationError(f"non-finite activations in {name}")
        counts += ne[1] * ne[2] * ne[3] // n_mat


def _tokenize(lc, vocab, text: str) -> list[int]:
    """The whole text at once, BOS added where the vocabulary says so, special tokens as text
    (llama-imatrix: common_tokenize(ctx, prompt, true, false))."""
    data = text.encode()
    n = len(data) + 2
    buf = (lc.llama_token * n)()
    got = lc.llama_tokenize(vocab, data, len(data), buf, n, True, False)
    if got < 0:
        buf = (lc.llama_token * -got)()
        got = lc.llama_tokenize(vocab, data, len(data), buf, -got, True, False)
    return list(buf[:got])


def budget_chunks(tokens: int | None) -> int | None:
    """512-token chunks for a budget in tokens (None or 0: the whole calibration set)."""
    if not tokens:
        return None
    if tokens < 2 * CHUNK:
        raise CalibrationError(f"an importance-matrix budget of {tokens} tokens is less than two chunks of {CHUNK}")
    return tokens // CHUNK


def compute(model_path: Path, calibration: Calibration, *, chunk_size: int = CHUNK, max_chunks: int | None = None,
            threads: int | None = None, on_chunk=None, skip: str | None = None) -> IMatrix:
    """Run `model_path` (an unquantized GGUF) over the calibration text and collect the imatrix.
    At least two chunks of text are needed (llama-imatrix's rule); `on_chunk(done, total)`
    reports progress. Weights whose GGUF name matches `skip` (a regex: those the quantizer keeps
    as they are, e.g. gpt-oss's MXFP4 experts) are not measured: each measured matmul stops
    llama.cpp's graph to hand its activations over, and the MoE ones cost most. Raises
    CalibrationError for too little text."""
    lc = require_llama_cpp()
    collector = _Collector(*_ops(lc), skip=re.compile(skip) if skip else None)
    t0 = time.monotonic()
    params = lc.llama_model_default_params()
    # set here, not through model_params(): that patches llama_cpp.llama_cpp's function, which
    # llama_cpp.Llama calls; the package's top-level name is another binding and stays unpatched
    params.use_extra_bufts = extra_bufts_enabled(model_path)
    with LlamaLog() as log:
        model = lc.llama_model_load_from_file(str(model_path).encode(), params)
    if not model:
        raise QuantizationError(f"llama.cpp cannot load {model_path.name}: {log.reason()}")
    ctx = batch = None
    cb = lc.ggml_backend_sched_eval_callback(collector)  # kept alive for the context's lifetime
    try:
        vocab = lc.llama_model_get_vocab(model)
        tokens = _tokenize(lc, vocab, calibration.text)
        if len(tokens) < 2 * chunk_size:
            raise CalibrationError(f"calibration file {calibration.path} holds {len(tokens)} tokens; the importance "
                                   f"matrix needs at least {2 * chunk_size} (two chunks of {chunk_size})")
        n_chunk = len(tokens) // chunk_size
        if max_chunks:
            n_chunk = min(n_chunk, max_chunks)
        cp = lc.llama_context_default_params()
        cp.n_ctx = cp.n_batch = cp.n_ubatch = chunk_size
        cp.n_seq_max = 1
        cp.n_threads = cp.n_threads_batch = threads or len(os.sched_getaffinity(0))
        cp.swa_full = False  # llama-imatrix's (common's) default
        cp.cb_eval, cp.cb_eval_user_data = cb, None
        with LlamaLog() as log:
            ctx = lc.llama_init_from_model(model, cp)
        if not ctx:
            raise QuantizationError(f"llama.cpp cannot create a context for the importance matrix: {log.reason()}")
        bos = lc.llama_vocab_bos(vocab) if lc.llama_vocab_get_add_bos(vocab) else None
        batch = lc.llama_batch_init(chunk_size, 0, 1)
        for i in range(n_chunk):
            chunk = tokens[i * chunk_size:(i + 1) * chunk_size]
            if bos is not None:
                chunk[0] = bos
            lc.llama_memory_clear(lc.llama_get_memory(ctx), True)
            batch.n_tokens = chunk_size
            for k, tok in enumerate(chunk):
                batch.token[k], batch.pos[k], batch.n_seq_id[k] = tok, k, 1
                batch.seq_id[k][0] = 0
                batch.logits[k] = True  # every output: the last layer then runs on every row
            with LlamaLog() as log:
                rc = lc.llama_decode(ctx, batch)
            raise_pending()
            if collector.error is not None:
                raise collector.error
            if rc != 0:
                raise QuantizationError(f"llama.cpp failed on calibration chunk {i + 1}: {log.reason()}")
            if on_chunk:
                on_chunk(i + 1, n_chunk)
    finally:
        with LlamaLog():  # freeing logs too (the compute buffer check): not the user's business
            if batch is not None:
                lc.llama_batch_free(batch)
            if ctx:
                lc.llama_free(ctx)
            lc.llama_model_free(model)
    if not collector.sums:
        raise QuantizationError(f"no weight of {model_path.name} was seen by the importance matrix")
    return IMatrix(sums=collector.sums, counts=collector.counts, datasets=[calibration.name], chunk_count=n_chunk,
                   chunk_size=chunk_size, tokens=n_chunk * chunk_size, seconds=round(time.monotonic() - t0, 2))
