"""The Responses API's output over the same pipeline as chat completions: the request is read into a
chat request (protocol.ResponsesRequest.chat), generated the same way (app.chat_generation), parsed
the same way (output.Output); only the shapes differ: output items (reasoning, message, function_call)
and, streamed, the typed events `client.responses.stream`/`create(stream=True)` read."""

from __future__ import annotations

import contextlib
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator

import orjson
from pydantic import BaseModel

from edgeport.core.harmony import Delta

from .engines import Engine, Generation, Piece
from .output import MALFORMED_NOTE, CallReader, Output, pieces
from .protocol import APIError, ChatRequest, ResponsesRequest

KEPT = 256  # responses kept for previous_response_id (oldest dropped first)


class Store:
    """Finished responses (`store`: true, OpenAI's default) and their conversations, in memory and
    bounded: for `previous_response_id`, and GET / DELETE /v1/responses/{id}."""

    def __init__(self, size: int = KEPT):
        self.size, self.turns = size, OrderedDict[str, list[dict]]()
        self.bodies: dict[str, dict] = {}

    def history(self, rid: str | None) -> list[dict]:
        if rid is None:
            return []
        if rid not in self.turns:
            raise self._unknown(rid, "previous_response_id")
        return self.turns[rid]

    def get(self, rid: str) -> dict:
        if rid not in self.bodies:
            raise self._unknown(rid, None)
        return self.bodies[rid]

    def delete(self, rid: str) -> dict:
        self.get(rid)
        del self.turns[rid], self.bodies[rid]
        return {"id": rid, "object": "response", "deleted": True}

    def _unknown(self, rid: str, param: str | None) -> APIError:
        what = f"{param} {rid!r}" if param else f"response {rid!r}"
        return APIError(404, f"{what} is not known here (this server keeps the last {self.size} stored "
                             "responses, in memory)", param=param,
                        code="previous_response_not_found" if param else "response_not_found")

    def keep(self, rid: str, turns: list[dict], body: dict) -> None:
        self.turns[rid], self.bodies[rid] = turns, body
        while len(self.turns) > self.size:
            old, _ = self.turns.popitem(last=False)
            self.bodies.pop(old, None)


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class _Items:
    """Output items built from deltas, in order: reasoning, then a message or a function call (a new
    item whenever the kind changes); with the stream events that say so."""

    def __init__(self):
        self.items: list[dict] = []
        self.seq = 0

    def event(self, kind: str, **fields) -> dict:
        self.seq += 1
        return {"type": kind, "sequence_number": self.seq, **fields}

    def feed(self, d: Delta, out: Output) -> list[dict]:
        events: list[dict] = []
        if d.reasoning:
            events += self._text("reasoning", d.reasoning)
        if d.content:
            events += self._text("message", d.content)
        for c in out.tool_calls(d):
            if "id" in c:
                events += self._close()
                item = {"type": "function_call", "id": _id("fc"), "call_id": c["id"], "name": c["function"]["name"],
                        "arguments": "", "status": "in_progress"}
                events += self._open(item)
            item = self.items[-1]
            if delta := c["function"]["arguments"]:
                item["arguments"] += delta
                events.append(self.event("response.function_call_arguments.delta", item_id=item["id"],
                                          output_index=len(self.items) - 1, delta=delta))
        return events

    def _text(self, kind: str, text: str) -> list[dict]:
        events: list[dict] = []
        if not self.items or self.items[-1]["type"] != kind or self.items[-1]["status"] != "in_progress":
            events += self._close()
            part = {"type": "reasoning_text", "text": ""} if kind == "reasoning" else \
                {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            item = {"type": kind, "id": _id("rs" if kind == "reasoning" else "msg"), "status": "in_progress",
                    "content": [part], **({"summary": []} if kind == "reasoning" else {"role": "assistant"})}
            events += self._open(item)
            events.append(self.event("response.content_part.added", item_id=item["id"],
                                      output_index=len(self.items) - 1, content_index=0, part=dict(part)))
        item = self.items[-1]
        item["content"][0]["text"] += text
        name = "response.reasoning_text.delta" if kind == "reasoning" else "response.output_text.delta"
        extra = {} if kind == "reasoning" else {"logprobs": []}
        events.append(self.event(name, item_id=item["id"], output_index=len(self.items) - 1, content_index=0,
                                  delta=text, **extra))
        return events

    def _open(self, item: dict) -> list[dict]:
        self.items.append(item)
        return [self.event("response.output_item.added", output_index=len(self.items) - 1, item=dict(item))]

    def _close(self) -> list[dict]:
        """The last item done (its text or arguments whole), if one is open."""
        if not self.items or self.items[-1]["status"] != "in_progress":
            return []
        item, i = self.items[-1], len(self.items) - 1
        item["status"] = "completed"
        events = []
        if item["type"] == "function_call":
            events.append(self.event("response.function_call_arguments.done", item_id=item["id"], output_index=i,
                                      arguments=item["arguments"]))
        else:
            part = item["content"][0]
            name = "response.reasoning_text.done" if item["type"] == "reasoning" else "response.output_text.done"
            extra = {} if item["type"] == "reasoning" else {"logprobs": []}
            events.append(self.event(name, item_id=item["id"], output_index=i, content_index=0, text=part["text"],
                                      **extra))
            events.append(self.event("response.content_part.done", item_id=item["id"], output_index=i,
                                      content_index=0, part=dict(part)))
        return [*events, self.event("response.output_item.done", output_index=i, item=dict(item))]

    def close(self) -> list[dict]:
        return self._close()


def _body(rid: str, req: ResponsesRequest, items: list[dict], status: str, gen: Generation, n: int,
          malformed: bool) -> dict:
    """The response object (in_progress while streaming, then completed or incomplete)."""
    p = len(gen.prompt_ids)
    body = {"id": rid, "object": "response", "created_at": int(time.time()), "status": status, "model": req.model,
            "output": items, "error": None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": req.instructions, "max_output_tokens": req.max_output_tokens,
            "previous_response_id": req.previous_response_id, "temperature": req.temperature, "top_p": req.top_p,
            "parallel_tool_calls": req.parallel_tool_calls is not False,  # allowed (as OpenAI echoes it)
            "tool_choice": req.tool_choice.model_dump() if isinstance(req.tool_choice, BaseModel)
            else req.tool_choice or "auto",
            "tools": [t.model_dump(exclude_none=True) for t in req.tools or []],
            "text": req.text.model_dump(by_alias=True, exclude_none=True) if req.text else {"format": {"type": "text"}},
            "reasoning": {"effort": req.reasoning.effort if req.reasoning else None, "summary": None},
            "store": req.store, "truncation": "disabled", "metadata": {},
            "usage": {"input_tokens": p, "input_tokens_details": {"cached_tokens": 0}, "output_tokens": n,
                      "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": p + n}}
    if malformed:
        body["warnings"] = [MALFORMED_NOTE]
    return body


def as_responses_error(e: APIError) -> APIError:
    """A check made on the chat form of the request, named as the Responses API spells the field."""
    for chat, ours in (("response_format.json_schema.schema", "text.format.schema"),
                       ("response_format", "text.format"), ("tool_choice.function.", "tool_choice."),
                       ("reasoning_effort", "reasoning.effort"), ("max_tokens", "max_output_tokens")):
        if e.param and e.param.startswith(chat):
            e.param = ours + e.param[len(chat):]
            return e
    if e.param and e.param.startswith("tools.") and ".function." in e.param:
        e.param = e.param.replace(".function.", ".", 1)
    elif e.param and e.param.startswith("messages."):
        e.param = "input"  # the chat form's index counts instructions and earlier turns
    return e


def _turns_of(req: ResponsesRequest, chat: ChatRequest, items: list[dict]) -> list[dict]:
    """The conversation after this response, as chat messages (what previous_response_id continues;
    `instructions` do not carry over)."""
    msgs = [m.model_dump(exclude_none=True) for m in chat.messages[1 if req.instructions else 0:]]
    text = "".join(i["content"][0]["text"] for i in items if i["type"] == "message")
    calls = [{"id": i["call_id"], "type": "function", "function": {"name": i["name"], "arguments": i["arguments"]}}
             for i in items if i["type"] == "function_call"]
    return [*msgs, {"role": "assistant", "content": text or None, **({"tool_calls": calls} if calls else {})}]


async def run(engine: Engine, req: ResponsesRequest, chat: ChatRequest, gen: Generation,
              source: AsyncIterator[Piece], store: Store, rid: str,
              calls: CallReader | None = None) -> AsyncIterator[dict]:
    """The response's events, the last one response.completed (or .incomplete) with the whole response."""
    out, items = Output(engine, engine.info.chat_format == "harmony", calls), _Items()
    finish, n = "stop", 0
    yield items.event("response.created", response=_body(rid, req, [], "in_progress", gen, 0, False))
    async with contextlib.aclosing(pieces(source, out)) as parsed:
        async for d, f, k in parsed:
            for e in items.feed(d, out):
                yield e
            if f:
                finish, n = f, k
    for e in items.close():
        yield e
    status = "incomplete" if finish == "length" else "completed"
    body = _body(rid, req, items.items, status, gen, n, out.malformed)
    if req.store:
        store.keep(rid, _turns_of(req, chat, items.items), body)
    yield items.event(f"response.{status}", response=body)


async def whole(engine: Engine, req: ResponsesRequest, chat: ChatRequest, gen: Generation,
                source: AsyncIterator[Piece], store: Store, calls: CallReader | None = None) -> dict:
    last = {}
    async with contextlib.aclosing(run(engine, req, chat, gen, source, store, _id("resp"), calls)) as events:
        async for e in events:
            last = e
    return last["response"]


async def stream(engine: Engine, req: ResponsesRequest, chat: ChatRequest, gen: Generation,
                 source: AsyncIterator[Piece], store: Store,
                 calls: CallReader | None = None) -> AsyncIterator[bytes]:
    """Server-sent events, each named by its type (as OpenAI sends them)."""
    try:
        async with contextlib.aclosing(run(engine, req, chat, gen, source, store, _id("resp"), calls)) as events:
            async for e in events:
                yield b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n"
    except Exception as e:  # the client went away: CancelledError is no Exception and passes
        err = {"type": "error", "code": "engine_error", "message": f"generation failed: {e}", "param": None,
               "sequence_number": 0}
        yield b"event: error\ndata: " + orjson.dumps(err) + b"\n\n"
