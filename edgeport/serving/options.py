"""serve's options, defined once: the `edgeport serve` task and `python -m edgeport.serving`'s argparse
parser are both built from this table (imports nothing heavy, so `edgeport --help` stays fast)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DESCRIPTION = ("Serve an artifact over an OpenAI-compatible API: /v1/chat/completions (gpt-oss reasoning effort "
               "low|medium|high or fast|balanced|deep; reasoning in `reasoning_content`; tools for gpt-oss; "
               "response_format json_object/json_schema enforced by llama-server's grammars), /v1/completions, "
               "/v1/models, /health. GGUF: llama.cpp's llama-server as the engine (continuous batching); ONNX and "
               "others: the runtime in-process, one request at a time; vllm: vllm serve.")


@dataclass(frozen=True)
class Option:
    name: str  # the Python name; the flag is --name with dashes
    kind: type  # what a value is parsed as (int: checked as a number before anything loads)
    default: object
    help: str
    required: bool = False

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


OPTIONS: tuple[Option, ...] = (
    Option("artifact", Path, None, "an artifact directory made by `edgeport export` (or `edgeport pull`)",
           required=True),
    Option("host", str, "127.0.0.1", "address to listen on (default 127.0.0.1; 0.0.0.0 for other machines)"),
    Option("port", int, 8000, "port (default 8000)"),
    Option("parallel", int, None, "requests generated at once: llama-server slots for GGUF (default 4); "
                                  "in-process runtimes (ONNX, TensorRT-LLM) serve 1"),
    Option("queue", int, 16, "requests that may wait beyond --parallel (default 16); more get 503 with Retry-After"),
    Option("ctx", int, None, "context per request in tokens (default 4096, at most the model's)"),
    Option("api_key_env", str, None, "name of an environment variable holding the key clients must send as a "
                                     "Bearer token (the key itself never goes on the command line)"),
    Option("threads", int, None, "CPU threads for llama-server"),
)
