"""llama-cpp-python glue shared by the quantizer and the runtime: importing it with a clear
error, and routing llama.cpp's log through us (quiet by default, quoted when it fails)."""

from __future__ import annotations

import ctypes
import threading

from .errors import RuntimeUnavailable


def require_llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:
        raise RuntimeUnavailable(
            f"llama-cpp-python is not installed ({e}); install the cpu extra: pip install -e '.[cpu]'"
        ) from None
    return llama_cpp

_lock = threading.RLock()


class LlamaLog:
    """Context manager collecting llama.cpp log lines instead of printing them."""

    def __init__(self):
        import llama_cpp

        self.lc, self.lines = llama_cpp, []

        from .progress import pause_point

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
