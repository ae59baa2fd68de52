"""llama-cpp-python glue shared by the quantizer, the importance matrix, the runtime and the
llama.cpp tools: importing it with a clear error, routing llama.cpp's log through us (quiet by
default, quoted when it fails), and the AMX guard every llama.cpp load goes through.

AMX: on CPUs with Intel AMX, llama.cpp built with native flags repacks Q4_K weights into
its AMX buffer type and segfaults on the first matmul (ggml-org/llama.cpp#20824). Loads
turn extra buffer types off on such CPUs (`use_extra_bufts = False`, `model_params`), which
keeps the plain CPU kernels, and the command-line tools get their no-repack flags
(core/llama_tools.py); EDGEPORT_LLAMA_EXTRA_BUFTS=1 turns them back on. In-process loads of a
model too big to copy (`REPACK_MAX_SHARE`) keep it memory-mapped as well.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import threading
from pathlib import Path

from .errors import RuntimeUnavailable
from .progress import pause_point


def require_llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:
        raise RuntimeUnavailable(
            f"llama-cpp-python is not installed ({e}); install the cpu extra: pip install -e '.[cpu]'"
        ) from None
    return llama_cpp


@functools.lru_cache(maxsize=1)
def cpu_has_amx() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags.split() for f in ("amx_tile", "amx_int8", "amx_bf16"))


# a model file larger than this share of physical memory is not repacked in process: repacking
# copies its weights into anonymous memory (gpt-oss-20b's MXFP4 experts: 10.5 GiB measured on an
# AVX2 EPYC), where memory-mapped ones stay file-backed pages the kernel can drop; the export
# holds the importance matrix's or two parity runtimes' models in one process
REPACK_MAX_SHARE = 0.125


def _physical_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def extra_bufts_enabled(model: Path | None = None) -> bool:
    """Off on AMX CPUs, and for a `model` file over REPACK_MAX_SHARE of physical memory, unless
    EDGEPORT_LLAMA_EXTRA_BUFTS says otherwise; any spelling of "off" ("0", "false", "False",
    "no", "off") must stay off, or an AMX CPU crashes."""
    env = os.environ.get("EDGEPORT_LLAMA_EXTRA_BUFTS")
    if env is not None:
        return env.strip().lower() not in ("0", "", "false", "no", "off")
    if model is not None and Path(model).stat().st_size > REPACK_MAX_SHARE * _physical_bytes():
        return False
    return not cpu_has_amx()


@contextlib.contextmanager
def model_params(lc, use_extra_bufts: bool):
    """llama_cpp.Llama builds its model params from llama_cpp.llama_cpp's
    llama_model_default_params(); wrap that one while the model loads."""
    lc = lc.llama_cpp
    orig = lc.llama_model_default_params

    def patched():
        p = orig()
        p.use_extra_bufts = use_extra_bufts
        return p

    lc.llama_model_default_params = patched
    try:
        yield
    finally:
        lc.llama_model_default_params = orig


_lock = threading.RLock()


class LlamaLog:
    """Context manager collecting llama.cpp log lines instead of printing them."""

    def __init__(self):
        import llama_cpp  # heavy and optional (the cpu extra): only where a log is captured

        self.lc, self.lines = llama_cpp, []

        @llama_cpp.llama_log_callback
        def cb(level, text, user_data):
            self.lines.append(text.decode("utf-8", "replace"))
            pause_point("llama.cpp log")  # test-only: lets the signal tests land inside a C call

        self.cb = cb

    def __enter__(self):
        _lock.acquire()
        self.lc.llama_log_set(self.cb, ctypes.c_void_p(0))
        return self

    def __exit__(self, *exc):
        from llama_cpp import _logger

        self.lc.llama_log_set(_logger.llama_log_callback, ctypes.c_void_p(0))
        _lock.release()

    @property
    def text(self) -> str:
        return "".join(self.lines)

    def reason(self) -> str:
        """The line that best explains a failure."""
        for line in reversed(self.text.splitlines()):
            if "error" in line.lower() or "failed" in line.lower() or "disabled" in line:
                return line.strip()
        return self.text.strip().splitlines()[-1] if self.text.strip() else "no log output"
