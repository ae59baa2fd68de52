"""The serving contract, through the real `openai` client (and LangChain) against a real
server process (`python -m edgeport.serving`), over every engine that runs here: llama-server for GGUF
artifacts (slow: needs the llama.cpp tools build) and the in-process runtime for ONNX."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from edgeport.core.harmony import MARKERS
from tests.conftest import ROOT, asgi_server

ENGINES = {
    "gguf-gpt-oss": pytest.param("cpu-gpt-oss", marks=pytest.mark.slow),
    "gguf-llama": pytest.param("cpu-llama", marks=pytest.mark.slow),
    "onnx-gpt-oss": pytest.param("onnx-gpt-oss-mxfp4-int8", marks=pytest.mark.toolenv),
    "onnx-llama": pytest.param("onnx-llama-int8", marks=pytest.mark.toolenv),
}


@contextlib.contextmanager
def server(artifact: Path, *args: str, env: dict | None = None):
    """`python -m edgeport.serving` on a free port; yields its base URL; stopped with SIGTERM. `env`: changes
    to this environment (None unsets a variable)."""
    from edgeport.serving.engines import free_port

    port = free_port()
    ready = artifact.parent / f".ready-{port}"
    ready.unlink(missing_ok=True)
    environ = {**os.environ, **(env or {})}
    environ = {k: v for k, v in environ.items() if v is not None}
    p = subprocess.Popen([sys.executable, "-m", "edgeport.serving", "--artifact", str(artifact), "--port", str(port),
                          "--ready-file", str(ready), *args], cwd=ROOT, env=environ,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 900
        while not ready.exists():
            if p.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not start: {p.stdout.read() if p.poll() is not None else ''}")
            time.sleep(0.1)
        yield f"http://127.0.0.1:{port}"
    finally:
        p.terminate()
        try:
            p.wait(20)
        except subprocess.TimeoutExpired:
            p.kill()
        ready.unlink(missing_ok=True)


@pytest.fixture(scope="module", params=list(ENGINES.values()), ids=list(ENGINES))
def served(request, exported):
    path, manifest = exported(request.param)
    with server(path, "--ctx", "512", "--queue", "2") as url:
        yield url, manifest


def _client(url: str, key: str = "unused"):
    import openai

    return openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0)


def _model(c) -> str:
    return c.models.list().data[0].id


def _harmony(manifest: dict) -> bool:
    return manifest["model"]["chat_format"] == "harmony"


def test_chat_stream_and_completions(served):
    url, manifest = served
    c = _client(url)
    model = _model(c)
    msgs = [{"role": "user", "content": "def parse_args(argv):"}]
    r = c.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0)
    m = r.choices[0].message
    assert r.usage.completion_tokens > 0 and r.usage.prompt_tokens > 0
    assert r.choices[0].finish_reason in ("stop", "length")
    text = m.content + ((m.model_extra or {}).get("reasoning_content") or "")
    assert text and not any(k in text for k in MARKERS)
    if _harmony(manifest):
        assert m.model_extra["reasoning_content"] == m.model_extra["reasoning"]
    # the same request streamed: the same text, usage last
    content, reasoning, usage = "", "", None
    for ch in c.chat.completions.create(model=model, messages=msgs, max_tokens=24, temperature=0, stream=True,
                                        stream_options={"include_usage": True}):
        if ch.usage:
            usage = ch.usage
        for choice in ch.choices:
            content += choice.delta.content or ""
            reasoning += (choice.delta.model_extra or {}).get("reasoning_content") or ""
    assert content == m.content
    assert reasoning == ((m.model_extra or {}).get("reasoning_content") or "")
    assert usage.completion_tokens == r.usage.completion_tokens
    # earlier assistant turns sent back with their reasoning are accepted
    msgs2 = [*msgs, {"role": "assistant", "content": m.content, "reasoning_content": "some thought"},
             {"role": "user", "content": "and now?"}]
    assert c.chat.completions.create(model=model, messages=msgs2, max_tokens=4).choices[0].message is not None
    cr = c.completions.create(model=model, prompt="import os\n", max_tokens=8, temperature=0)
    assert cr.choices[0].text and cr.usage.completion_tokens == 8


@pytest.mark.parametrize("effort", ["low", "medium", "high", "fast", "balanced", "deep", "HIGH"])
def test_effort_words_accepted(served, effort):
    url, _ = served
    c = _client(url)
    r = c.chat.completions.create(model=_model(c), messages=[{"role": "user", "content": "x = "}], max_tokens=2,
                                  extra_body={"reasoning_effort": effort})
    assert r.choices[0].message is not None


def _error(r: httpx.Response, status: int, code: str | None = None) -> dict:
    assert r.status_code == status, r.text
    assert r.headers.get("content-type", "").startswith("application/json"), \
        f"HTTP {r.status_code} as {r.headers.get('content-type')}: {r.text[:200]!r}"
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    if code:
        assert err["code"] == code, err
    return err


def test_bad_requests_are_openai_errors_and_the_server_stays_healthy(served):
    url, _ = served
    c = _client(url)
    model = _model(c)
    ok = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    post = lambda body, **kw: httpx.post(f"{url}/v1/chat/completions", timeout=60, **({"json": body} | kw))
    _error(httpx.post(f"{url}/v1/chat/completions", content=b"{not json", timeout=60,
                      headers={"content-type": "application/json"}), 400, "invalid_json")
    _error(post({"model": model}), 400, "missing_required_parameter")
    _error(post({**ok, "messages": "hello"}), 400)
    _error(post({**ok, "messages": [{"role": "wizard", "content": "x"}]}), 400)
    _error(post({**ok, "temperature": "hot"}), 400)
    _error(post({**ok, "model": "gpt-5"}), 404, "model_not_found")
    assert _error(post({**ok, "reasoning_effort": "bogus"}), 400)["param"] == "reasoning_effort"
    _error(post({**ok, "max_tokens": 0}), 400)
    _error(post({**ok, "max_tokens": -5}), 400)
    _error(post({**ok, "max_tokens": 100_000}), 400, "context_length_exceeded")
    long = {**ok, "messages": [{"role": "user", "content": "word " * 2000}]}
    _error(post(long), 400, "context_length_exceeded")
    _error(post({**long, "stream": True}), 400, "context_length_exceeded")  # before any stream starts
    _error(httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 0}), 400)
    _error(httpx.get(f"{url}/v1/nothing-here"), 404)
    assert httpx.get(f"{url}/health").status_code == 200
    assert post(ok).status_code == 200


def test_langchain_chat_openai(served):
    from langchain_openai import ChatOpenAI

    url, manifest = served
    llm = ChatOpenAI(base_url=f"{url}/v1", api_key="unused", model=_model(_client(url)), max_tokens=200,
                     temperature=0, max_retries=0, reasoning_effort="low" if _harmony(manifest) else None)
    msg = llm.invoke("Write a Python import.")
    assert isinstance(msg.content, str) and msg.content.strip()
    assert msg.response_metadata["finish_reason"] in ("stop", "length")
    assert not any(k in msg.content for k in MARKERS)


# --- one engine each for what does not depend on the engine's kind ---------------------------------

@pytest.mark.toolenv
def test_api_key(exported):
    import openai

    path, _ = exported("onnx-llama-int8")
    with server(path, "--api-key-env", "EDGEPORT_TEST_KEY", env={"EDGEPORT_TEST_KEY": "s3cret"}) as url:
        with pytest.raises(openai.AuthenticationError):
            _client(url, "wrong").models.list()
        _error(httpx.get(f"{url}/v1/models"), 401, "invalid_api_key")  # no key at all
        assert _client(url, "s3cret").models.list().data
        assert httpx.get(f"{url}/health").status_code == 200  # probes need no key


def test_api_key_variable_must_be_set(tmp_path):
    r = subprocess.run([sys.executable, "-m", "edgeport.serving", "--artifact", str(tmp_path), "--api-key-env",
                        "EDGEPORT_UNSET_VAR"], capture_output=True, text=True, cwd=ROOT,
                       env={k: v for k, v in os.environ.items() if k != "EDGEPORT_UNSET_VAR"})
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "EDGEPORT_UNSET_VAR" in r.stderr


async def _stream_all(url: str, model: str, n: int, max_tokens: int) -> list[tuple[int, int, str | None]]:
    async def one(client: httpx.AsyncClient) -> tuple[int, int, str | None]:
        body = {"model": model, "prompt": "import sys\n", "max_tokens": max_tokens, "stream": True,
                "temperature": 0}
        got, finish = 0, None
        async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
            if r.status_code != 200:
                await r.aread()
                return r.status_code, 0, None
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    ch = json.loads(line[6:])
                    got += 1
                    finish = ch["choices"][0]["finish_reason"] or finish
        return 200, got, finish

    async with httpx.AsyncClient(timeout=300) as client:
        return await asyncio.gather(*(one(client) for _ in range(n)))


def test_gate_refuses_beyond_capacity_with_503_and_no_retry():
    from edgeport.serving.app import Gate
    from edgeport.serving.protocol import APIError

    g = Gate(2)
    g.enter(1), g.enter(1)
    with pytest.raises(APIError) as e:
        g.enter(3)
    assert e.value.status == 503 and e.value.code == "server_overloaded"
    assert e.value.headers == {"Retry-After": "3", "x-should-retry": "false"}
    g.leave()
    g.enter(1)


@pytest.mark.toolenv
def test_queue_overflow_is_503_that_the_openai_client_does_not_retry(exported):
    import openai

    path, manifest = exported("onnx-gpt-oss-mxfp4-int8")
    with server(path, "--parallel", "1", "--queue", "0", "--ctx", "16384") as url:
        model = _model(_client(url))
        no_stop = {str(t): -100 for t in manifest["model"]["stop_token_ids"]}
        body = {"model": model, "prompt": "import sys\n", "max_tokens": 16000, "stream": True, "logit_bias": no_stop}
        with httpx.Client(timeout=120) as a, a.stream("POST", f"{url}/v1/completions", json=body) as r1:
            lines = r1.iter_lines()
            next(lines)  # the one slot is generating; nothing may wait
            assert httpx.get(f"{url}/health").json()["in_flight"] == 1
            r2 = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 4}, timeout=60)
            err = _error(r2, 503, "server_overloaded")
            assert r2.headers["retry-after"].isdigit() and r2.headers["x-should-retry"] == "false", (err, r2.headers)
            # the client's default (two retries) does not retry it: one request reaches the server
            counted = httpx.get(f"{url}/health").json()["refused"]
            with pytest.raises(openai.InternalServerError):
                openai.OpenAI(base_url=f"{url}/v1", api_key="x").completions.create(model=model, prompt="x",
                                                                                    max_tokens=4)
            assert httpx.get(f"{url}/health").json()["refused"] == counted + 1
            next(lines)  # the held stream still runs
        _wait_idle(url)  # its client went away: the slot comes back and takes the next request
        r4 = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 4}, timeout=120)
        assert r4.status_code == 200


def _wait_idle(url: str, within: float = 5.0) -> float:
    """Seconds until the server reports nothing in flight; fails after `within`."""
    t0 = time.monotonic()
    while httpx.get(f"{url}/health").json()["in_flight"]:
        assert time.monotonic() - t0 < within, "a disconnected client's request still holds its slot"
        time.sleep(0.02)
    return time.monotonic() - t0


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "not-streamed"])
@pytest.mark.parametrize("case", [pytest.param("onnx-gpt-oss-mxfp4-int8", marks=pytest.mark.toolenv),
                                  pytest.param("cpu-gpt-oss", marks=pytest.mark.slow)])
def test_disconnect_frees_the_engine(exported, case, stream):
    path, manifest = exported(case)  # one slot, no queue: the next request needs the slot back
    with server(path, "--parallel", "1", "--queue", "0", "--ctx", "16384") as url:
        model = _model(_client(url))
        no_stop = {str(t): -100 for t in manifest["model"]["stop_token_ids"]}
        body = {"model": model, "prompt": "import sys\n", "max_tokens": 16000, "stream": stream, "logit_bias": no_stop}
        if stream:
            with httpx.Client(timeout=120) as a, a.stream("POST", f"{url}/v1/completions", json=body) as r1:
                next(r1.iter_lines())
        else:  # a client that gives up waiting for a whole answer (its timeout) closes the connection
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(f"{url}/v1/completions", json=body, timeout=httpx.Timeout(120, read=1.5))
        # the client went away mid-generation: the engine is free at its next token
        _wait_idle(url)
        t0 = time.monotonic()
        r4 = httpx.post(f"{url}/v1/completions", json={"model": model, "prompt": "x", "max_tokens": 4}, timeout=120)
        assert r4.status_code == 200 and time.monotonic() - t0 < 5.0
        assert httpx.get(f"{url}/health").json()["in_flight"] == 0


# --- the front over an engine that fails: no model needed -----------------------------------------

class _FailingEngine:
    """An engine whose generation fails after one piece (a crashed llama-server, an ORT error)."""

    @staticmethod
    def make():
        from edgeport.core.chat import LLAMA3_CHAT_TEMPLATE
        from edgeport.runtimes.base import ModelInfo
        from edgeport.serving.engines import Engine, Piece

        class Failing(Engine):
            name = "failing"

            async def tokenize(self, text: str) -> list[int]:
                return list(range(len(text.split())))

            async def generate(self, gen):
                yield Piece("partial ")
                raise RuntimeError("the engine crashed")

        return Failing(ModelInfo("llama", "template", chat_template=LLAMA3_CHAT_TEMPLATE), n_ctx=256, slots=1)


class _EndlessEngine:
    """An engine that generates a piece every 10 ms until it is closed; it records the closing."""

    @staticmethod
    def make():
        from edgeport.core.chat import LLAMA3_CHAT_TEMPLATE
        from edgeport.runtimes.base import ModelInfo
        from edgeport.serving.engines import Engine, Piece

        class Endless(Engine):
            name = "endless"
            closed = 0

            async def tokenize(self, text: str) -> list[int]:
                return [1, 2, 3]

            async def generate(self, gen):
                try:
                    while True:
                        await asyncio.sleep(0.01)
                        yield Piece("x")
                finally:
                    type(self).closed += 1

        return Endless(ModelInfo("llama", "template", chat_template=LLAMA3_CHAT_TEMPLATE), n_ctx=1 << 20, slots=1)


def _front(engine, parallel: int = 1, queue: int = 0):
    """Our front over `engine` in a real uvicorn on a free port (a thread of this process)."""
    from edgeport.serving.app import Settings, create_app

    return asgi_server(create_app(engine, Settings("m", parallel, queue)), "the front")


@pytest.mark.parametrize("path,body", [("/v1/completions", {"prompt": "x"}),
                                       ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]})])
def test_a_non_streamed_request_stops_generating_when_its_client_goes(path, body):
    engine = _EndlessEngine.make()
    with _front(engine) as url:
        with pytest.raises(httpx.ReadTimeout):  # the client gives up waiting for the whole answer
            httpx.post(f"{url}{path}", json={"model": "m", **body}, timeout=httpx.Timeout(30, read=0.5))
        took = _wait_idle(url, within=3.0)
        assert type(engine).closed == 1, f"the engine's generation was not closed ({took:.2f} s)"


@pytest.mark.parametrize("path,body", [
    ("/v1/completions", {"prompt": "import os"}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
])
def test_engine_failure_is_an_openai_error_not_plain_text(path, body):
    from edgeport.serving.app import Settings, create_app

    app = create_app(_FailingEngine.make(), Settings(model_id="m", parallel=1, queue=0))

    async def go():
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://front") as c:
            whole = await c.post(path, json={"model": "m", "max_tokens": 8, **body})
            streamed = await c.post(path, json={"model": "m", "max_tokens": 8, "stream": True, **body})
            health = await c.get("/health")
            return whole, streamed, health

    whole, streamed, health = asyncio.run(go())
    err = _error(whole, 500, "engine_error")
    assert err["type"] == "server_error" and "the engine crashed" in err["message"]
    # streamed: the error arrives as an event in the same shape
    events = [json.loads(x[6:]) for x in streamed.text.splitlines() if x.startswith("data: {")]
    assert events[-1]["error"]["code"] == "engine_error"
    assert health.json()["in_flight"] == 0  # both requests left the gate


@pytest.mark.slow
def test_eight_concurrent_streams_all_complete_over_llama_server(exported):
    path, _ = exported("cpu-llama")
    with server(path, "--parallel", "4", "--ctx", "512") as url:
        model = _model(_client(url))
        results = asyncio.run(_stream_all(url, model, 8, 64))
        assert all(s == 200 and f in ("stop", "length") and n > 0 for s, n, f in results), results
        assert httpx.get(f"{url}/health").json()["in_flight"] == 0
