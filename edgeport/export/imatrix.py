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
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import gguf
import numpy as np

from edgeport.core.atomic import raise_pending
from edgeport.core.errors import CalibrationError, QuantizationError
from edgeport.core.llama_log import LlamaLog, extra_bufts_enabled, model_params, require_llama_cpp

DEFAULT_CALIBRATION = Path(__file__).parent / "data" / "calibration.jsonl"
CHUNK = 512  # llama-imatrix's default context (-c 512): one chunk of calibration text per pass
MIN_ROWS = 16  # llama-imatrix ignores dense matmuls of fewer rows (single-token decode steps)
FILE_NAME = "imatrix.gguf"


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

    def normalized(self) -> dict[str, np.ndarray]:
        """What llama-quantize passes to the quantizer: sum ÷ count (float32) per expert, 1.0 where
        the count is zero (an expert no calibration token reached)."""
        out = {}
        for name, s in self.sums.items():
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
                counts = tensors[f"{name}.counts"].reshape(-1)
                m.sums[name] = data.reshape(counts.size, -1).copy()
                m.counts[name] = counts.copy()
        m.tokens = int(max((c.max() for c in m.counts.values()), default=0))
        return m


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
    def __init__(self, mul_mat: int, mul_mat_id: int):
        self.mul_mat, self.mul_mat_id = mul_mat, mul_mat_id
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
        if t.op == self.mul_mat_id:
            return True
        if t.op != self.mul_mat:
            return False
        src0, src1 = _Tensor.from_address(t.src[0]), _Tensor.from_address(t.src[1])
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


def compute(model_path: Path, calibration: Calibration, *, chunk_size: int = CHUNK, max_chunks: int | None = None,
            threads: int | None = None, on_chunk=None) -> IMatrix:
    """Run `model_path` (an unquantized GGUF) over the calibration text and collect the imatrix.
    At least two chunks of text are needed (llama-imatrix's rule); `on_chunk(done, total)`
    reports progress. Raises CalibrationError for too little text."""
    lc = require_llama_cpp()
    collector = _Collector(*_ops(lc))
    t0 = time.monotonic()
    with model_params(lc, extra_bufts_enabled()), LlamaLog() as log:
        model = lc.llama_model_load_from_file(str(model_path).encode(), lc.llama_model_default_params())
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
