"""Engines under the OpenAI front: each turns prompt token ids into streamed text.

- `LlamaServerEngine` (GGUF): llama.cpp's own `llama-server`, built from the same vendored
  llama.cpp as our quantizer (edgeport/core/llama_tools.py), for its continuous batching over parallel
  slots. We drive its `/completion` endpoint with token ids and render special tokens
  (`--special`), so chat formatting and harmony parsing stay ours: its chat endpoint answers
  any gpt-oss output that is not well-formed harmony with HTTP 500.
- `RuntimeEngine` (ONNX, TensorRT-LLM, anything `runtimes.load` opens): the project's runtime
  in-process, one generation at a time on a worker thread; the front's queue bounds the rest.
- `VLLMEngine` (vllm target): `vllm serve` as a child, driven through its `/v1/completions`
  with token ids and `skip_special_tokens: false`, so the same front contract holds over it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

from edgeport import runtimes
from edgeport.core import manifest as mf
from edgeport.core.errors import RuntimeUnavailable
from edgeport.core.llama_tools import repack_args, tool
from edgeport.runtimes.base import GenerationResult, ModelInfo
from edgeport.runtimes.llamacpp import train_context

from . import guidance
from .protocol import APIError
from .support import support

BAN = -100.0  # a logit_bias that bans its token (OpenAI's meaning of -100)


@dataclass
class Generation:
    prompt_ids: list[int]
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    logit_bias: dict[int, float] = field(default_factory=dict)
    # constrained decoding (engines with `constrains = True`): a JSON schema the engine turns into
    # its own grammar, or a GBNF grammar; never both
    json_schema: dict | None = None
    grammar: str | None = None
    # tokens to size a per-request cache for (the whole completion's max_tokens where this is its free
    # phase and a constrained one continues it: constrained.py); 0: max_tokens
    allocate: int = 0


@dataclass
class Piece:
    """A streamed piece of text; the last one carries finish_reason, the token count and, when a
    stop string ended it, which one (the front's multi-phase generations continue from there)."""

    text: str = ""
    finish_reason: str | None = None
    completion_tokens: int = 0
    stop_word: str = ""


class Engine(ABC):
    name = "?"
    constrains = False  # decodes under Generation.json_schema / .grammar

    def __init__(self, info: ModelInfo, n_ctx: int, slots: int):
        self.info, self.n_ctx, self.slots = info, n_ctx, slots
        self.stop_texts: list[str] = []  # the stop tokens as rendered text (cut from the output)
        self.vocab_size = 1 << 31  # known per engine where it can be read
        self._token_ids: dict[tuple[str, ...], list[int]] = {}  # token_ids' lookups

    def constraint_error(self, param: str = "response_format") -> APIError:
        """The 400 for a request this engine cannot constrain (structured output, forced tool calls)."""
        what = "response_format" if param == "response_format" else "tool_choice required or naming a function"
        return APIError(400, f"{what} is not supported by this engine ({self.name}) yet", param=param,
                        code=f"unsupported_{param}")

    async def check_constraint(self, json_schema: dict | None, grammar: str | None, param: str) -> None:  # noqa: B027
        """A 400 for a constraint this engine's own compiler refuses, before anything is generated
        (constrained.check_schema has already refused what no engine here enforces whole)."""

    async def start(self) -> None:  # noqa: B027 - optional
        pass

    async def close(self) -> None:  # noqa: B027 - optional
        pass

    @abstractmethod
    async def tokenize(self, text: str) -> list[int]:
        """Special tokens parsed, no BOS added (the chat template carries its own)."""

    async def token_ids(self, texts: tuple[str, ...]) -> list[int]:
        """The ids of `texts` that are one token each (special tokens), looked up once per engine."""
        if texts not in self._token_ids:
            self._token_ids[texts] = [t[0] for t in [await self.tokenize(x) for x in texts] if len(t) == 1]
        return self._token_ids[texts]

    @abstractmethod
    def generate(self, gen: Generation) -> AsyncIterator[Piece]: ...

    async def healthy(self) -> bool:
        return True


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ChildServer:
    """A local HTTP server we start, wait for, talk to and stop: llama-server or vLLM."""

    def __init__(self, cmd: list[str], port: int, what: str, ready_path: str, env: dict | None = None):
        self.cmd, self.port, self.what, self.ready_path = cmd, port, what, ready_path
        self.log = tempfile.NamedTemporaryFile(prefix="edgeport-engine-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     env=env, start_new_session=True)
        self.base = f"http://127.0.0.1:{port}"
        # trust_env=False: the child is on loopback; HTTP(S)_PROXY / ALL_PROXY set for the outside
        # world (a firewall's proxy) must not route our own engine traffic through it
        self.client = httpx.AsyncClient(base_url=self.base, timeout=httpx.Timeout(None, connect=5.0), trust_env=False,
                                        limits=httpx.Limits(max_connections=None, max_keepalive_connections=64))

    def tail(self, n: int = 1500) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-n:].strip()
        except OSError:
            return ""

    async def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeUnavailable(f"{self.what} exited with code {self.proc.returncode} while loading:\n"
                                         f"{self.tail()}")
            with contextlib.suppress(httpx.HTTPError):
                r = await self.client.get(self.ready_path, timeout=2.0)
                if r.status_code == 200:
                    return
            await asyncio.sleep(0.1)
        await self.close()
        raise RuntimeUnavailable(f"{self.what} did not become ready in {timeout:.0f} s:\n{self.tail()}")

    async def close(self) -> None:
        await self.client.aclose()
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                await asyncio.to_thread(self.proc.wait, 10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.log.close()
        with contextlib.suppress(OSError):
            os.unlink(self.log.name)


async def _sse(resp: httpx.Response) -> AsyncIterator[dict]:
    async for line in resp.aiter_lines():
        if line.startswith("data:"):
            data = line[5:].strip()
            if data == "[DONE]":
                return
            yield orjson.loads(data)  # one event per token: the hot path


# OpenAI's sampling is over the whole vocabulary: llama-server's own defaults (top-k 40, min-p 0.05)
# are switched off (bench_serve.py asks llama-server alone for the same, so both do the same work)
WHOLE_VOCABULARY = {"top_k": 0, "min_p": 0.0}


def llama_server_command(exe: Path, gguf: Path, port: int, n_ctx: int, slots: int,
                         threads: int | None = None) -> list[str]:
    """How the front runs llama-server (edgeport/benchmarking/bench_serve.py runs it alone the same way)."""

    # each of the `slots` parallel sequences gets n_ctx tokens of KV cache
    no_repack = repack_args("llama-server")
    cmd = [str(exe), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port),
           "-c", str(n_ctx * slots), "-np", str(slots), "--special", "--no-webui",
           "--cache-reuse", "0", *no_repack]
    # repacked weights are copies in anonymous memory; mapped as well (MAP_POPULATE) the file
    # stays resident beside them: gpt-oss-20b's peak RSS was 20.6 GiB for a 10.8 GiB GGUF.
    # Read, not mapped (this llama.cpp's `--load-mode none`), the weights are held once, as
    # `plan` counts them
    if not no_repack:
        cmd += ["--load-mode", "none"]
    return cmd + (["-t", str(threads)] if threads else [])


class LlamaServerEngine(Engine):
    name = "llama-server"
    constrains = support("llama.cpp").constrains  # its json_schema (llama.cpp's converter) and GBNF grammar fields

    def __init__(self, gguf: Path, info: ModelInfo, n_ctx: int, slots: int, threads: int | None = None):
        super().__init__(info, n_ctx, slots)
        self.gguf, self.threads = gguf, threads
        import gguf as gguf_py

        tokens = gguf_py.GGUFReader(gguf).fields.get("tokenizer.ggml.tokens")
        self.vocab_size = len(tokens.data) if tokens else self.vocab_size
        self.child: _ChildServer | None = None

    async def start(self) -> None:
        exe = await asyncio.to_thread(tool, "llama-server")  # builds once, with progress
        port = free_port()
        cmd = llama_server_command(exe, self.gguf, port, self.n_ctx, self.slots, self.threads)
        self.child = _ChildServer(cmd, port, "llama-server", "/health")
        await self.child.wait_ready(timeout=300)
        self.stop_texts = [await self._piece(t) for t in self.info.stop_token_ids]

    async def _piece(self, token: int) -> str:
        r = await self.child.client.post("/detokenize", json={"tokens": [token]})
        r.raise_for_status()
        return r.json()["content"]

    async def close(self) -> None:
        if self.child:
            await self.child.close()

    async def healthy(self) -> bool:
        if self.child is None or self.child.proc.poll() is not None:
            return False
        try:
            return (await self.child.client.get("/health", timeout=2.0)).status_code == 200
        except httpx.HTTPError:
            return False

    async def tokenize(self, text: str) -> list[int]:
        r = await self.child.client.post("/tokenize", json={"content": text, "add_special": False,
                                                           "parse_special": True})
        r.raise_for_status()
        return r.json()["tokens"]

    async def generate(self, gen: Generation) -> AsyncIterator[Piece]:
        body = {"prompt": gen.prompt_ids, "n_predict": gen.max_tokens, "temperature": gen.temperature,
                "top_p": gen.top_p, **WHOLE_VOCABULARY, "stream": True, "cache_prompt": True,
                "stop": gen.stop, "seed": gen.seed if gen.seed is not None else -1,
                # OpenAI's -100 bans a token: llama-server's `false` is a ban, a number only added
                "logit_bias": [[int(t), False if b <= BAN else float(b)] for t, b in gen.logit_bias.items()]}
        if gen.json_schema is not None:
            body["json_schema"] = gen.json_schema
        if gen.grammar is not None:
            body["grammar"] = gen.grammar
        n = 0
        async with self.child.client.stream("POST", "/completion", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                if resp.status_code == 400 and (gen.json_schema is not None or gen.grammar is not None):
                    raise _grammar_refused(resp)
                raise RuntimeError(f"llama-server answered {resp.status_code}: {resp.text[:300]}")
            async for ev in _sse(resp):
                if ev.get("stop"):
                    n = ev.get("tokens_predicted", n)
                    reason = "length" if ev.get("stop_type") == "limit" else "stop"
                    yield Piece(ev.get("content", ""), reason, n, ev.get("stopping_word") or "")
                    return
                n += 1
                yield Piece(ev.get("content", ""))
        yield Piece("", "stop", n)


def _grammar_refused(resp: httpx.Response) -> APIError:
    """llama-server's own refusal of a schema or grammar (its converter's message) as a 400."""
    try:
        msg = resp.json()["error"]["message"]
    except (ValueError, KeyError, TypeError):
        msg = resp.text[:300]
    return APIError(400, f"llama.cpp cannot enforce this schema: {' '.join(str(msg).split())}",
                    code="unsupported_schema")


class RuntimeEngine(Engine):
    """A `runtimes.Runtime` in-process: one generation at a time on one worker thread. Where the runtime
    samples in our Python loop and takes a `constraint` (ONNX), a JSON schema or grammar is enforced by
    an llguidance token mask (guidance.py), computed where the model's own choice is refused
    (runtimes/base.constrained_sample)."""

    def __init__(self, runtime, n_ctx: int):
        super().__init__(runtime.info, n_ctx, slots=1)
        self.rt = runtime
        self.name = f"in-process {runtime.name}"
        if hasattr(runtime, "keep_prefix"):  # a next phase continues the last generation's KV cache
            runtime.keep_prefix = True
        self._lock = asyncio.Lock()
        self.stop_texts = [runtime.detokenize([t]) for t in runtime.info.stop_token_ids]
        tok = getattr(runtime, "tok", None)
        if tok is not None and hasattr(tok, "get_vocab_size"):
            self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        self._masks = support(runtime.name).constrains and tok is not None and hasattr(tok, "to_str")
        self.constrains = self._masks and guidance.available()
        self._guide: guidance.Guide | None = None

    def constraint_error(self, param: str = "response_format") -> APIError:
        if self._masks:  # the engine can, the install cannot
            what = "response_format" if param == "response_format" else "tool_choice required or naming a function"
            return APIError(400, f"{what} over {self.name} needs llguidance, not installed on this server: "
                                 "pip install 'edgeport[onnx]'", param=param, code=f"unsupported_{param}")
        return super().constraint_error(param)

    async def _guide_for(self) -> guidance.Guide:
        if self._guide is None:  # once per engine: the tokenizer's token trie
            self._guide = await asyncio.to_thread(guidance.Guide, self.rt.tok.to_str(), self.vocab_size,
                                                  self.info.stop_token_ids)
        return self._guide

    async def check_constraint(self, json_schema: dict | None, grammar: str | None, param: str) -> None:
        # compiling a grammar can take a second on a large vocabulary: off the event loop
        await asyncio.to_thread((await self._guide_for()).check, json_schema, grammar, param)

    async def tokenize(self, text: str) -> list[int]:
        return await asyncio.to_thread(self.rt.encode, text, False)

    async def close(self) -> None:
        await asyncio.to_thread(self.rt.close)

    async def generate(self, gen: Generation) -> AsyncIterator[Piece]:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue()
        cancel = threading.Event()
        result = GenerationResult()

        constrained = {}
        if gen.json_schema is not None or gen.grammar is not None:
            if not self.constrains:
                raise self.constraint_error()
            guide = await self._guide_for()
            constrained["constraint"] = await asyncio.to_thread(guide.mask, gen.json_schema, gen.grammar)

        def work() -> None:
            try:
                for piece in self.rt.stream_ids(gen.prompt_ids, gen.max_tokens, gen.temperature, gen.top_p,
                                                gen.seed if gen.seed is not None else int.from_bytes(os.urandom(4)),
                                                gen.stop, result=result, logit_bias=gen.logit_bias,
                                                allocate=gen.allocate, **constrained):
                    if cancel.is_set():
                        break
                    loop.call_soon_threadsafe(q.put_nowait, piece)
                loop.call_soon_threadsafe(q.put_nowait, None)
            except BaseException as e:
                loop.call_soon_threadsafe(q.put_nowait, e)

        async with self._lock:  # one generation at a time: the front's queue holds the others
            task = loop.run_in_executor(None, work)
            try:
                while (item := await q.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    yield Piece(item)
                yield Piece("", result.finish_reason, result.completion_tokens)
            finally:
                cancel.set()  # a client that went away frees the engine at the next token
                await asyncio.shield(task)


class VLLMEngine(Engine):
    """`vllm serve` as a child (EDGEPORT_VLLM_PYTHON names a Python with vLLM, else ours)."""

    name = "vllm"
    constrains = support("vllm").constrains  # its guided decoding is not wired up yet

    def __init__(self, model_dir: Path, info: ModelInfo, n_ctx: int, slots: int, options: dict):
        super().__init__(info, n_ctx, slots)
        self.dir, self.options = model_dir, options
        self.child: _ChildServer | None = None

    async def start(self) -> None:
        py = os.environ.get("EDGEPORT_VLLM_PYTHON", sys.executable)
        probe = await asyncio.to_thread(
            subprocess.run, [py, "-c", "import vllm, torch; print(torch.cuda.is_available())"],
            capture_output=True, text=True)
        if probe.returncode != 0:
            raise RuntimeUnavailable(f"vLLM is not installed in {py} (set EDGEPORT_VLLM_PYTHON to a Python "
                                     "with vLLM; it needs a CUDA GPU)")
        port = free_port()
        cmd = [py, "-m", "vllm.entrypoints.openai.api_server", "--model", str(self.dir), "--host", "127.0.0.1",
               "--port", str(port), "--max-model-len", str(self.n_ctx), "--max-num-seqs", str(self.slots),
               "--served-model-name", "engine"]
        if q := self.options.get("quantization"):
            cmd += ["--quantization", q]
        if tp := self.options.get("tensor_parallel_size"):
            cmd += ["--tensor-parallel-size", str(tp)]
        env = dict(os.environ)
        # vLLM's harmony support loads the o200k vocabulary; offline it must be a local copy
        self.child = _ChildServer(cmd, port, "vllm serve", "/health", env=env)
        await self.child.wait_ready(timeout=900)
        tok = await self.child.client.post("/detokenize", json={"model": "engine",
                                                                "tokens": self.info.stop_token_ids[:1]})
        self.stop_texts = [tok.json().get("prompt", "")] if tok.status_code == 200 else []

    async def close(self) -> None:
        if self.child:
            await self.child.close()

    async def tokenize(self, text: str) -> list[int]:
        r = await self.child.client.post("/tokenize", json={"model": "engine", "prompt": text,
                                                           "add_special_tokens": False})
        r.raise_for_status()
        return r.json()["tokens"]

    async def generate(self, gen: Generation) -> AsyncIterator[Piece]:
        body = {"model": "engine", "prompt": gen.prompt_ids, "max_tokens": gen.max_tokens, "stream": True,
                "temperature": gen.temperature, "top_p": gen.top_p, "seed": gen.seed, "stop": gen.stop or None,
                "skip_special_tokens": False, "stream_options": {"include_usage": True},
                "logit_bias": {str(t): b for t, b in gen.logit_bias.items()} or None}
        n, reason = 0, "stop"
        async with self.child.client.stream("POST", "/v1/completions", json=body) as resp:
            if resp.status_code != 200:
                await resp.aread()
                raise RuntimeError(f"vllm answered {resp.status_code}: {resp.text[:300]}")
            async for ev in _sse(resp):
                if ev.get("usage"):
                    n = ev["usage"].get("completion_tokens", n)
                for c in ev.get("choices", []):
                    if c.get("finish_reason"):
                        reason = "length" if c["finish_reason"] == "length" else "stop"
                    if c.get("text"):
                        yield Piece(c["text"])
        yield Piece("", reason, n)


def open_engine(artifact: Path, *, n_ctx: int | None, slots: int | None, threads: int | None = None) -> Engine:
    """The best engine for an artifact (see the module docstring)."""
    if not (artifact / mf.NAME).is_file():
        raise RuntimeUnavailable(f"{artifact}: not an edgeport artifact (no {mf.NAME})")
    m = mf.load(artifact)
    rt, info = m["runtime"], ModelInfo(**m["model"])
    model_file = artifact / rt["model_file"]
    if rt["name"] == "llama.cpp":
        ctx = min(n_ctx or 4096, _gguf_context(model_file) or 4096)
        return LlamaServerEngine(model_file, info, ctx, slots or 4, threads)
    if rt["name"] == "vllm":
        return VLLMEngine(model_file, info, n_ctx or 8192, slots or 16, rt.get("options", {}))
    if slots and slots > 1:
        raise RuntimeUnavailable(f"--parallel {slots}: the {rt['name']} runtime serves one request at a time "
                                 "(requests beyond it wait in the queue: see --queue)")
    if rt["name"] == "edgellm":
        raise RuntimeUnavailable("TensorRT Edge-LLM generates whole responses, not tokens: serve a Jetson kit's "
                                 "TensorRT-LLM (JetPack 6) artifact, or run the kit's run.sh")
    ctx = min(n_ctx or 4096, _hf_context(artifact) or 4096)
    # onnxruntime-genai allocates a generation's KV cache up front: the runtime sizes each by its
    # request and refuses past ctx, which the front has already checked (a 400)
    runtime = runtimes.load(artifact, n_ctx=ctx) if rt["name"] == "onnxruntime" else runtimes.load(artifact)
    return RuntimeEngine(runtime, ctx)


def _hf_context(artifact: Path) -> int | None:
    """The model's context from the files an in-process artifact carries."""

    sources = (("genai_config.json", ("model", "context_length")), ("config.json", ("max_position_embeddings",)))
    for name, keys in sources:
        f = next(iter(sorted(artifact.rglob(name))), None)
        if f is None:
            continue
        v = json.loads(f.read_text())
        for k in keys:
            v = v.get(k) if isinstance(v, dict) else None
        if isinstance(v, int):
            return v
    return None


def _gguf_context(path: Path) -> int | None:
    return train_context(path)
