"""Jetson runtimes: TensorRT Edge-LLM and TensorRT-LLM v0.12, behind the common interface.

Both run engines that `build_engine.sh` built on the device, so both need a CUDA GPU and
their library; elsewhere they fail at load with one line saying what is missing. Tokens come
from the artifact's own tokenizer.json (no GPU needed for those).

- `EdgeLLMRuntime`: Edge-LLM's documented `llm_inference` tool (JSON in, JSON out). The wheel's
  Python bindings exist only for x86 sm80/86/100/120 and their API is the experimental
  server's internals, so they are not used. Edge-LLM returns text, not logits: `logits` says
  so, and parity on the device compares greedy continuations (`edgeport parity --device-output`).
- `TensorRTLLMRuntime`: v0.12's `ModelRunner`; full context logits when the engine was built
  with `--gather_context_logits` (build_engine.sh does by default).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
from collections.abc import Generator, Iterator, Sequence
from pathlib import Path

import numpy as np

from edgeport.core.errors import RuntimeUnavailable

from .base import ModelInfo, Prompt, Runtime, TokenizerFileMixin, load_tokenizer


def cuda_device_count() -> int:
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
    except (FileNotFoundError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


def _engine_dir(model_path: Path, engine_dir: str | None) -> Path:
    root = model_path if model_path.is_dir() and (model_path / "build_engine.sh").is_file() else model_path.parent
    engine = Path(engine_dir) if engine_dir and Path(engine_dir).is_absolute() else root / (engine_dir or "engine")
    if not engine.is_dir():
        raise RuntimeUnavailable(f"no engine at {engine}: build it on the Jetson with {root / 'build_engine.sh'}")
    return engine


class EdgeLLMRuntime(TokenizerFileMixin, Runtime):
    name = "edgellm"

    def __init__(self, model_path: str | Path, info: ModelInfo | None = None, *, engine_dir: str | None = None,
                 **_options):
        model_path = Path(model_path)  # the artifact's llm/ directory
        root = model_path.parent if model_path.name == "llm" else model_path
        self._exe = self._llm_inference()
        self.engine = _engine_dir(root, engine_dir)
        self.tok = load_tokenizer(root / "llm", root)
        super().__init__(info or ModelInfo(architecture="llama", chat_format="template"))

    @staticmethod
    def _llm_inference() -> str:
        tool = os.environ.get("EDGELLM_BIN", "")
        exe = shutil.which(str(Path(tool) / "llm_inference") if tool else "llm_inference")
        if not exe:
            raise RuntimeUnavailable("TensorRT Edge-LLM needs its llm_inference tool (built from TensorRT-Edge-LLM "
                                     "on the Jetson; on PATH or in $EDGELLM_BIN) and a CUDA GPU")
        if not cuda_device_count():
            raise RuntimeUnavailable("TensorRT Edge-LLM needs a CUDA GPU (Jetson Orin); nvidia-smi lists none")
        return exe

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        raise RuntimeUnavailable("TensorRT Edge-LLM returns text, not logits; compare device output with "
                                 "`edgeport parity --artifact DIR --device-output device_output.json`")

    def _decode(self, prompt_ids: list[int], max_new_tokens: int | None = None) -> Generator[np.ndarray, int, None]:
        raise RuntimeUnavailable("TensorRT Edge-LLM generates whole responses; use generate() / stream()")
        yield  # pragma: no cover

    def stream(self, prompt: Prompt, max_new_tokens: int = 128, temperature: float = 0.0, top_p: float = 1.0,
               seed: int = 0, stop: Sequence[str] = (), reasoning_effort: str | None = None) -> Iterator[str]:
        messages = [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)
        request = {"batch_size": 1, "temperature": max(temperature, 1e-5), "top_p": top_p,
                   "top_k": 1 if temperature <= 0 else 0, "max_generate_length": max_new_tokens,
                   "requests": [{"messages": messages}]}
        yield self._run(request)[0]

    def _run(self, request: dict) -> list[str]:
        with tempfile.TemporaryDirectory(prefix="edgellm-") as d:
            inp, out = Path(d) / "input.json", Path(d) / "output.json"
            inp.write_text(json.dumps(request))
            r = subprocess.run([self._exe, "--engineDir", str(self.engine), "--inputFile", str(inp),
                                "--outputFile", str(out)], capture_output=True, text=True)
            if r.returncode != 0:
                raise RuntimeUnavailable(f"llm_inference failed (exit {r.returncode}): {r.stderr.strip()[-500:]}")
            return [resp["output_text"] for resp in json.loads(out.read_text())["responses"]]


class TensorRTLLMRuntime(TokenizerFileMixin, Runtime):
    name = "tensorrt-llm"

    def __init__(self, model_path: str | Path, info: ModelInfo | None = None, *, engine_dir: str | None = None,
                 **_options):
        model_path = Path(model_path)
        root = model_path.parent if model_path.name == "trtllm_checkpoint" else model_path
        try:
            import torch
            from tensorrt_llm.runtime import ModelRunner
        except ImportError as e:
            raise RuntimeUnavailable("TensorRT-LLM runtime needs tensorrt_llm (v0.12.0-jetson on JetPack 6) "
                                     f"and a CUDA GPU: {e}") from e
        if not torch.cuda.is_available():
            raise RuntimeUnavailable("TensorRT-LLM runtime needs a CUDA GPU; torch sees none")
        self.torch = torch
        self.engine = _engine_dir(root, engine_dir)
        self.tok = load_tokenizer(root / "hf", root)
        super().__init__(info or ModelInfo(architecture="llama", chat_format="template"))
        self.runner = ModelRunner.from_dir(engine_dir=str(self.engine), rank=0)
        cfg = json.loads((root / "trtllm_checkpoint" / "config.json").read_text())
        self.vocab = cfg["vocab_size"]
        self.end_id = (self.info.stop_token_ids or [0])[0]

    def _generate(self, ids: list[int], n: int, **kw) -> dict:
        t = self.torch.tensor(ids, dtype=self.torch.int32)
        return self.runner.generate([t], max_new_tokens=n, end_id=self.end_id, pad_id=self.end_id,
                                    return_dict=True, **kw)

    def logits(self, token_ids: Sequence[int]) -> np.ndarray:
        res = self._generate(list(token_ids), 1, top_k=1)
        ctx = res.get("context_logits")
        if ctx is None:
            raise RuntimeUnavailable("this engine was built without --gather_context_logits; rebuild with "
                                     "GATHER_CONTEXT_LOGITS=1 ./build_engine.sh for logits")
        return ctx[0].float().cpu().numpy()[:, : self.vocab]

    def _decode(self, prompt_ids: list[int], max_new_tokens: int | None = None) -> Generator[np.ndarray, int, None]:
        # v0.12's Python runner keeps no KV cache between calls: each step re-runs the prefix
        # (correct, O(n^2)); generate()/greedy() use the engine's own decoding loop instead
        ids = list(prompt_ids)
        while True:
            tok = yield self.logits(ids)[-1]
            ids.append(tok)

    def greedy(self, prompt_ids: list[int], n: int) -> list[int]:
        res = self._generate(list(prompt_ids), n, top_k=1)
        return res["output_ids"][0][0][len(prompt_ids):len(prompt_ids) + n].tolist()

    def close(self) -> None:
        self.runner = None
