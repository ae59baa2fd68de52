"""The OpenAI-compatible front: one contract over every engine.

It owns request validation, chat formatting (harmony for gpt-oss, the checkpoint's template
otherwise), harmony parsing (reasoning apart from the answer, function calls as `tool_calls`),
effort aliases, API keys and a bounded queue; the engine only turns token ids into text, under a
grammar where the request needs one (`response_format`, a forced `tool_choice`: constrained.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from edgeport.core.chat import render_template
from edgeport.core.errors import TemplateRefused
from edgeport.core.harmony import STOP as HARMONY_STOP
from edgeport.core.harmony import HarmonyStream, render_harmony
from edgeport.core.template_tools import (
    TemplateCallStream,
    call_format,
    forced_schema,
    template_messages,
    template_tools,
    why_no_tools,
)

from . import responses
from .constrained import check_schema, harmony_json, harmony_tool_call, named_call
from .engines import Engine, Generation, Piece
from .output import MALFORMED_NOTE, CallReader, Output, pieces
from .protocol import APIError, ChatRequest, CompletionRequest, ResponsesRequest, validation_error


@dataclass
class Settings:
    model_id: str
    parallel: int
    queue: int
    api_key: str | None = None
    retry_after_s: int = 1


class DisconnectAwareStream(StreamingResponse):
    """Stops generating as soon as the client goes away. Starlette relies on a failing send to
    notice that under ASGI 2.4, and uvicorn drops sends to a closed socket silently, so a
    vanished client would keep its slot until its generation ended."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        import anyio

        async with anyio.create_task_group() as tg:
            async def watch() -> None:
                while (await receive())["type"] != "http.disconnect":
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(watch)
            await self.stream_response(send)
            tg.cancel_scope.cancel()


class Gate:
    """Admits up to `parallel + queue` requests; more get 503 at once."""

    def __init__(self, capacity: int):
        self.capacity, self.active, self.refused = capacity, 0, 0

    def enter(self, retry_after: int) -> None:
        if self.active >= self.capacity:
            self.refused += 1
            # x-should-retry: false, or the openai client retries the 503 twice on its own
            raise APIError(503, f"the server is at capacity ({self.capacity} requests in flight); retry later",
                           type="server_error", code="server_overloaded",
                           headers={"Retry-After": str(retry_after), "x-should-retry": "false"})
        self.active += 1

    def leave(self) -> None:
        self.active -= 1


class APIKeyMiddleware:
    """Bearer key on /v1/ (probes at /health need none). Plain ASGI, not @app.middleware:
    Starlette's BaseHTTPMiddleware pipes every streamed chunk through a memory stream."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/v1/"):
            given = dict(scope["headers"]).get(b"authorization", b"").decode("latin-1")
            token = given[7:] if given.lower().startswith("bearer ") else ""
            if not hmac.compare_digest(token.encode(), self.key):
                what = "no API key given" if not token else "incorrect API key"
                e = APIError(401, f"{what}: send it as 'Authorization: Bearer <key>'",
                             type="invalid_request_error", code="invalid_api_key")
                await JSONResponse(e.body(), status_code=401)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(engine: Engine, settings: Settings) -> FastAPI:
    app = FastAPI(title="edgeport serve", docs_url=None, redoc_url=None, openapi_url=None)
    gate = Gate(settings.parallel + settings.queue)
    store = responses.Store()
    harmony = engine.info.chat_format == "harmony"
    created = int(time.time())

    @app.exception_handler(APIError)
    async def _api_error(_req: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_req: Request, e: RequestValidationError):
        err = validation_error(list(e.errors()))
        return JSONResponse(err.body(), status_code=err.status)

    @app.exception_handler(Exception)
    async def _unexpected(_req: Request, e: Exception):
        # anything not answered above (an engine that fails to tokenize, …): still OpenAI's shape
        err = APIError(500, f"internal error: {type(e).__name__}: {e}", type="server_error", code="internal_error")
        return JSONResponse(err.body(), status_code=500)

    @app.exception_handler(404)
    async def _not_found(req: Request, _e):
        return JSONResponse(APIError(404, f"unknown URL {req.method} {req.url.path}", code="unknown_url").body(),
                            status_code=404)

    @app.exception_handler(405)
    async def _method(req: Request, _e):
        return JSONResponse(APIError(405, f"method {req.method} not allowed on {req.url.path}",
                                     code="method_not_allowed").body(), status_code=405)

    if settings.api_key:
        app.add_middleware(APIKeyMiddleware, key=settings.api_key)

    @app.get("/health")
    async def health():
        ok = await engine.healthy()
        return JSONResponse({"status": "ok" if ok else "unavailable", "engine": engine.name,
                             "in_flight": gate.active, "refused": gate.refused}, status_code=200 if ok else 503)

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [_model_card(settings.model_id, created)]}

    @app.get("/v1/models/{model_id:path}")
    async def model(model_id: str):
        _check_model(model_id, settings)
        return _model_card(settings.model_id, created)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        _check_model(req.model, settings)
        gen, source, calls = await chat_generation(engine, req)
        return await _respond(gate, settings, req, request,
                              lambda: _whole(engine, req, gen, source, True, harmony, calls),
                              lambda: _stream(engine, req, gen, source, True, harmony, calls))

    @app.post("/v1/responses")
    async def respond(req: ResponsesRequest, request: Request):
        _check_model(req.model, settings)
        try:
            chat = req.chat(store.history(req.previous_response_id))
            gen, source, calls = await chat_generation(engine, chat)
        except APIError as e:
            raise responses.as_responses_error(e) from None
        return await _respond(gate, settings, req, request,
                              lambda: responses.whole(engine, req, chat, gen, source, store, calls),
                              lambda: responses.stream(engine, req, chat, gen, source, store, calls))

    @app.get("/v1/responses/{rid}")
    async def stored(rid: str):
        return store.get(rid)

    @app.delete("/v1/responses/{rid}")
    async def forget(rid: str):
        return store.delete(rid)

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        _check_model(req.model, settings)
        gen = await _generation(engine, req, req.text(), plain=True)
        source = engine.generate(gen)
        return await _respond(gate, settings, req, request, lambda: _whole(engine, req, gen, source, False, False),
                              lambda: _stream(engine, req, gen, source, False, False))

    return app


def _model_card(model_id: str, created: int) -> dict:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "edgeport"}


def _check_model(name: str, settings: Settings) -> None:
    if name != settings.model_id:
        raise APIError(404, f"the model {name!r} does not exist; this server serves {settings.model_id!r}",
                       param="model", code="model_not_found")


async def chat_generation(engine: Engine, req: ChatRequest) -> tuple[Generation, AsyncIterator[Piece],
                                                                      CallReader | None]:
    """A chat request's generation, the pieces it streams (free, or constrained where a schema or a
    forced call asks for it) and the reader of its calls (harmony's, which knows the functions offered;
    for a dense model offered tools, its template's format): every check a 400 before anything is
    generated."""
    harmony = engine.info.chat_format == "harmony"
    offered, forced = req.tool_plan()
    msgs = req.conversation()
    info = engine.info
    fmt = None
    if harmony:
        text = render_harmony(msgs, req.reasoning_effort, tools=offered)
    elif not info.chat_template:
        raise APIError(400, "this model has no chat template; use /v1/completions", code="no_chat_template")
    else:
        with_tools = bool(offered) or any(m["role"] == "tool" or m.get("tool_calls") for m in msgs)
        if with_tools and (fmt := call_format(info.chat_template)) is None:
            raise APIError(400, f"tools: {why_no_tools(info.chat_template)}", param="tools",
                           code="unsupported_tools")
        try:
            text = render_template(info.chat_template, template_messages(msgs) if fmt else msgs,
                                   bos_token=info.bos_token, eos_token=info.eos_token, effort=req.reasoning_effort,
                                   tools=template_tools(offered) if fmt else None)
        except TemplateRefused as e:  # the template's own raise_exception: what it says of these messages
            raise APIError(400, str(e), param="messages", code="invalid_value") from None
    schema = await _schema(engine, req)
    await _check_forced(engine, req, forced)
    if fmt is not None and forced:  # the message is the call (after the block's opening): under its schema
        if not fmt.named:  # a named format's name is outside the JSON: named_call, a phase each
            schema = forced_schema(fmt, forced)
            await engine.check_constraint(schema, None, "tools")
        text += fmt.forced_prefix
    stops = list(HARMONY_STOP) if harmony else []
    if fmt is not None and fmt.block and req.parallel_tool_calls is False:
        stops.append(fmt.block[1])  # one call: the message ends where its block closes
    gen = await _generation(engine, req, text, extra_stops=stops)
    gen.json_schema = schema
    calls = TemplateCallStream(fmt, {t["name"] for t in offered}, forced=bool(forced),
                               parallel=req.parallel_tool_calls is not False) if fmt and offered else None
    if harmony:
        reader = HarmonyStream(functions=frozenset(t["name"] for t in offered))
        if forced:  # a call the model must make: constrained, not hoped for
            return gen, harmony_tool_call(engine, gen, forced), reader
        if schema is not None:  # gpt-oss: only the final answer is bound by the schema
            return gen, harmony_json(engine, gen), reader
        return gen, engine.generate(gen), reader
    if fmt is not None and fmt.named and forced:
        return gen, named_call(engine, gen, forced, fmt.named), calls
    return gen, engine.generate(gen), calls  # a dense model's whole answer is


async def _schema(engine: Engine, req: ChatRequest) -> dict | None:
    """The schema the answer is decoded under, checked before anything is generated (an engine that
    cannot enforce it refuses the request: no silent fallback to free text)."""
    schema = req.response_format.schema_to_enforce() if req.response_format else None
    if schema is None:
        return None
    if not engine.constrains:
        raise engine.constraint_error()
    check_schema(schema)
    await engine.check_constraint(schema, None, "response_format.json_schema.schema")
    return schema


async def _check_forced(engine: Engine, req: ChatRequest, forced: list[dict]) -> None:
    """A forced call needs an engine that constrains decoding, and parameters it can enforce."""
    if not forced:
        return
    if not engine.constrains:
        raise engine.constraint_error("tool_choice")
    for t in forced:
        if t["parameters"] is not None:
            i = next(i for i, x in enumerate(req.tools) if x.function.name == t["name"])
            check_schema(t["parameters"], f"tools.{i}.function.parameters")
            await engine.check_constraint(t["parameters"], None, f"tools.{i}.function.parameters")


async def _generation(engine: Engine, req, text: str, *, plain: bool = False,
                      extra_stops: list[str] | None = None) -> Generation:
    ids = await engine.tokenize(text)
    info = engine.info
    if plain and info.add_bos and info.bos_token_id is not None and ids[:1] != [info.bos_token_id]:
        ids = [info.bos_token_id, *ids]
    room = engine.n_ctx - len(ids)
    if room <= 0:
        raise APIError(400, f"the prompt is {len(ids)} tokens; this server's context is {engine.n_ctx} tokens",
                       param="messages" if not plain else "prompt", code="context_length_exceeded")
    limit = req.limit()
    if limit is not None and limit > room:
        raise APIError(400, f"max_tokens={limit} does not fit: the prompt is {len(ids)} tokens and the context "
                            f"{engine.n_ctx} (at most {room})", param="max_tokens", code="context_length_exceeded")
    bias = req.logit_bias or {}
    if bad := [t for t in bias if not 0 <= t < engine.vocab_size]:
        raise APIError(400, f"logit_bias: token id {bad[0]} is not in this model's vocabulary", param="logit_bias",
                       code="invalid_value")
    return Generation(ids, limit or room, req.temperature, req.top_p, req.seed, req.stops() + (extra_stops or []),
                      dict(bias))


async def _respond(gate: Gate, settings: Settings, req, request: Request, whole: Callable[[], Awaitable[dict]],
                   stream: Callable[[], AsyncIterator[bytes | str]]):
    """Admit the request, then answer `whole()`'s body, or stream `stream()`'s events (SSE)."""
    gate.enter(settings.retry_after_s)
    try:
        if req.stream:
            return DisconnectAwareStream(_gated(gate, stream()), media_type="text/event-stream",
                                         headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            body = await _until_disconnect(request, whole())
        finally:
            gate.leave()
        if body is None:  # the client went away: nobody reads this (nginx's "client closed request")
            return Response(status_code=499)
        return JSONResponse(body)
    except BaseException:
        if req.stream:
            gate.leave()
        raise


async def _gated(gate: Gate, events: AsyncIterator[bytes | str]) -> AsyncIterator[bytes | str]:
    """A stream's events; its slot is free when it ends, fails or its client goes."""
    try:
        async with contextlib.aclosing(events) as it:
            async for e in it:
                yield e
    finally:
        gate.leave()


async def _until_disconnect(request: Request, work) -> dict | None:
    """`work`'s result, or None as soon as the client disconnects (`work` is then cancelled, which
    closes the engine's stream and frees its slot). An engine failure is a 500 in OpenAI's shape."""
    async def gone() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(work), asyncio.ensure_future(gone())
    try:
        await asyncio.wait({task, watch}, return_when=asyncio.FIRST_COMPLETED)
        if task.done():
            try:
                return task.result()
            except APIError:
                raise
            except Exception as e:
                raise APIError(500, f"generation failed: {e}", type="server_error", code="engine_error") from e
        return None
    finally:
        if pending := {t for t in (watch, task) if not t.done()}:
            for t in pending:
                t.cancel()
            await asyncio.wait(pending)  # the engine's stream is closed before the slot is counted free


async def _whole(engine: Engine, req, gen: Generation, source: AsyncIterator[Piece], chat: bool,
                 harmony: bool, template_calls: CallReader | None = None) -> dict:
    reasoning, content, calls, finish, n = [], [], {}, "stop", 0
    out = Output(engine, harmony, template_calls)
    async for d, f, k in pieces(source, out):
        reasoning.append(d.reasoning)
        content.append(d.content)
        for c in out.tool_calls(d):
            if "id" in c:
                calls[c["index"]] = c
            else:
                calls[c["index"]]["function"]["arguments"] += c["function"]["arguments"]
        if f:
            finish, n = f, k
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    usage = {"prompt_tokens": len(gen.prompt_ids), "completion_tokens": n,
             "total_tokens": len(gen.prompt_ids) + n}
    base = {"id": rid, "created": int(time.time()), "model": req.model, "usage": usage}
    if out.malformed:
        base["warnings"] = [MALFORMED_NOTE]
    if not chat:
        return {**base, "object": "text_completion",
                "choices": [{"index": 0, "text": "".join(content), "finish_reason": finish, "logprobs": None}]}
    msg = {"role": "assistant", "content": "".join(content)}
    if calls:
        msg["content"] = msg["content"] or None  # OpenAI's shape for a turn that only calls
        msg["tool_calls"] = [{k: v for k, v in calls[i].items() if k != "index"} for i in sorted(calls)]
    if harmony:
        text = "".join(reasoning)
        msg["reasoning_content"] = msg["reasoning"] = text
    return {**base, "object": "chat.completion",
            "choices": [{"index": 0, "message": msg, "finish_reason": out.finish_reason(finish), "logprobs": None}]}


async def _stream(engine: Engine, req, gen: Generation, source: AsyncIterator[Piece], chat: bool,
                  harmony: bool, template_calls: CallReader | None = None) -> AsyncIterator[bytes | str]:
    rid = f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}"
    created = int(time.time())
    obj = "chat.completion.chunk" if chat else "text_completion"

    def chunk(choices: list, **extra) -> bytes:  # one per token: orjson, the front's hot path
        return b"data: " + orjson.dumps({"id": rid, "object": obj, "created": created, "model": req.model,
                                         "choices": choices, **extra}) + b"\n\n"

    try:
        if chat:
            yield chunk([{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}])
        n = 0
        out = Output(engine, harmony, template_calls)
        async with contextlib.aclosing(pieces(source, out)) as parsed:
            async for d, f, k in parsed:
                if chat:
                    delta = {}
                    if d.reasoning:
                        delta["reasoning_content"] = delta["reasoning"] = d.reasoning
                    if d.content:
                        delta["content"] = d.content
                    if d.calls:
                        delta["tool_calls"] = out.tool_calls(d)
                    if delta or f:
                        extra = {"warnings": [MALFORMED_NOTE]} if f and out.malformed else {}
                        reason = out.finish_reason(f) if f else None
                        yield chunk([{"index": 0, "delta": delta, "finish_reason": reason}], **extra)
                elif d.content or f:
                    yield chunk([{"index": 0, "text": d.content, "finish_reason": f, "logprobs": None}])
                if f:
                    n = k
        if req.stream_options and req.stream_options.include_usage:
            p = len(gen.prompt_ids)
            yield chunk([], usage={"prompt_tokens": p, "completion_tokens": n, "total_tokens": p + n})
        yield "data: [DONE]\n\n"
    except asyncio.CancelledError:  # the client went away: the engine stream is closed on the way out
        raise
    except Exception as e:
        err = APIError(500, f"generation failed: {e}", type="server_error", code="engine_error")
        yield "data: " + json.dumps(err.body()) + "\n\n"
