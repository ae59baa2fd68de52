"""Constrained decoding's decisions, for every engine that constrains (llama-server's grammar, the
in-process ONNX runtime's llguidance mask: guidance.py): which JSON schemas are enforced, gpt-oss's
answer decoded under one while its reasoning runs free, and the function call a request forces.

llama.cpp's converter (common/json-schema.cpp, json-schema-to-grammar.cpp at the pinned commit)
turns a schema into a grammar, but it skips what it cannot express without saying so to the client
(a number's bounds, `multipleOf`, `not`, a `pattern` it cannot translate, `oneOf`'s exclusivity…):
the answer would then be decoded under a looser grammar than the schema. `check_schema` accepts
only the keywords the converter enforces, so a schema is either enforced whole or refused with a
400 that names the keyword; llama-server then converts it itself (its `json_schema` field). The ONNX
engine accepts the same set (llguidance enforces more, but one set keeps the engines in agreement).

gpt-oss writes its analysis before the answer, and a schema must bind only the answer. The grammar
cannot start in the middle of a generation at the final channel's header (a lazy grammar fed the
header would reject it), so `harmony_json` generates in two phases on the same sequence: the
reasoning free until the model opens the final channel or ends a message (the header is then
written for it), and the answer from there under the schema. The second request's prompt is
the first's plus what it generated, which llama-server's prompt cache keeps, and the in-process
ONNX runtime continues from its kept KV cache (runtime.keep_prefix). A forced function
call (`tool_choice` required or named) is the same: the analysis free, then the call's header
`<|channel|>commentary to=functions.` written for the model, the name decoded under a grammar of the
offered names, and the arguments under that function's parameters schema.

The free analysis may not spend every token: it stops RESERVE tokens (at most half of max_tokens)
short, where the front closes it and goes on to the constrained part. A model whose reasoning never
ends (seen on a served tiny gpt-oss candidate, looping until max_tokens) still yields the forced call
or the schema's answer, after a cut analysis; what the constrained part itself writes must fit the
reserve, or the completion ends with finish_reason "length" as any other.
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator

from edgeport.core.harmony import ANSWER_ENDS, CHANNEL, CONSTRAIN, END, FINAL_HEADER, FUNCTIONS, MESSAGE, START, STOP

from .engines import BAN, Engine, Generation, Piece
from .protocol import APIError

COMMENTARY = f"{CHANNEL}commentary"  # a preamble or a call opens here
# never inside a constrained value: a JSON string admits any text, llama-server's grammar judges a special
# token by its text, and the harmony parser would end the message at the first (`<|end|>` inside a
# sampled call's string did; <|return|> and <|call|> end a generation, which a grammar allows only where
# its value is complete)
MARKERS_BANNED = (START, END, CHANNEL, MESSAGE, CONSTRAIN)
NO_PARAMETERS = {"type": "object", "properties": {}}  # a function declared without parameters takes {}
TYPES = ("object", "array", "string", "integer", "number", "boolean", "null")
ANNOTATIONS = frozenset({"title", "description", "default", "examples", "$schema", "$id", "$comment", "deprecated",
                         "readOnly", "writeOnly", "$defs", "definitions"})
# what llama.cpp's converter turns into grammar, per kind of value
STRUCTURE = frozenset({"type", "enum", "const", "anyOf", "$ref", "properties", "required", "additionalProperties",
                       "items", "prefixItems", "minItems", "maxItems", "minLength", "maxLength", "format"})
INT_BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum")
FORMATS = ("date", "time", "date-time", "uuid")
RESERVE = 256  # tokens the free analysis leaves to the constrained part (at most half of max_tokens)
WHY = {
    "oneOf": "its alternatives are decoded as anyOf, so exclusivity is not enforced; use anyOf",
    "allOf": "llama.cpp merges only object and enum members of allOf",
    "pattern": "llama.cpp's converter drops a pattern it cannot translate and accepts any string",
    "minimum": "llama.cpp enforces numeric bounds on integers only",
}


def check_schema(schema: object, param: str = "response_format.json_schema.schema") -> None:
    """Refuse (400) a schema that is not a JSON Schema object, or that llama.cpp cannot enforce whole."""
    if not isinstance(schema, dict):
        raise _invalid(param, "#", "a schema must be a JSON object")
    _walk(schema, "#", schema, param)


def _invalid(param: str, path: str, msg: str) -> APIError:
    return APIError(400, f"invalid JSON schema at {path}: {msg}", param=param, code="invalid_json_schema")


def _unsupported(param: str, path: str, key: str) -> APIError:
    why = WHY["minimum"] if key in INT_BOUNDS else WHY.get(key, "llama.cpp's converter ignores it")
    return APIError(400, f"this engine cannot enforce the schema keyword {key!r} at {path}: {why}", param=param,
                    code="unsupported_schema")


def _walk(s: object, path: str, root: dict, param: str) -> None:
    if not isinstance(s, dict):
        raise _invalid(param, path, "a schema must be a JSON object")
    for key in s:
        if key not in ANNOTATIONS and key not in STRUCTURE and key not in INT_BOUNDS:
            raise _unsupported(param, path, key)
    types = _types(s, path, param)
    for defs in ("$defs", "definitions"):
        if defs in s:
            if not isinstance(s[defs], dict):
                raise _invalid(param, f"{path}/{defs}", "must be an object of schemas")
            for k, v in s[defs].items():
                _walk(v, f"{path}/{defs}/{k}", root, param)
    if "$ref" in s or "anyOf" in s:
        # the converter reads nothing beside these (siblings would be silently dropped)
        key = "$ref" if "$ref" in s else "anyOf"
        if extra := [k for k in s if k not in ANNOTATIONS and k != key]:
            raise APIError(400, f"this engine cannot enforce {extra[0]!r} beside {key!r} at {path}; move it into "
                                f"the {'referenced schema' if key == '$ref' else 'alternatives'}", param=param,
                           code="unsupported_schema")
        if key == "$ref":
            _resolve(s["$ref"], path, root, param)
        else:
            _each(s["anyOf"], f"{path}/anyOf", root, param, nonempty=True)
        return
    if "enum" in s and (not isinstance(s["enum"], list) or not s["enum"]):
        raise _invalid(param, f"{path}/enum", "must be a non-empty array")
    _object(s, path, root, param)
    _array(s, path, root, param)
    for key in ("minItems", "maxItems", "minLength", "maxLength"):
        if key in s and (not isinstance(s[key], int) or isinstance(s[key], bool) or s[key] < 0):
            raise _invalid(param, f"{path}/{key}", "must be a non-negative integer")
    if "format" in s and s["format"] not in FORMATS:
        raise APIError(400, f"this engine cannot enforce format {s['format']!r} at {path} (it enforces "
                            f"{', '.join(FORMATS)})", param=param, code="unsupported_schema")
    bounds = [k for k in INT_BOUNDS if k in s]
    if bounds and types != ["integer"]:
        raise _unsupported(param, path, bounds[0])
    for k in bounds:
        if not isinstance(s[k], int | float) or isinstance(s[k], bool):
            raise _invalid(param, f"{path}/{k}", "must be a number")
    for a, b in (("minimum", "exclusiveMinimum"), ("maximum", "exclusiveMaximum")):
        if a in s and b in s:  # the converter reads only the first
            raise APIError(400, f"give {a} or {b} at {path}, not both", param=param, code="unsupported_schema")


def _types(s: dict, path: str, param: str) -> list[str]:
    t = s.get("type")
    if t is None:
        return []
    names = t if isinstance(t, list) else [t]
    if not names or not all(isinstance(n, str) and n in TYPES for n in names):
        raise _invalid(param, f"{path}/type", f"must be one of {', '.join(TYPES)} (or a non-empty array of them)")
    return names


def _object(s: dict, path: str, root: dict, param: str) -> None:
    props = s.get("properties", {})
    if not isinstance(props, dict):
        raise _invalid(param, f"{path}/properties", "must be an object of schemas")
    for k, v in props.items():
        _walk(v, f"{path}/properties/{k}", root, param)
    req = s.get("required", [])
    if not isinstance(req, list) or not all(isinstance(r, str) for r in req):
        raise _invalid(param, f"{path}/required", "must be an array of property names")
    if missing := [r for r in req if r not in props]:
        raise APIError(400, f"required property {missing[0]!r} at {path} is not in properties (this engine "
                            "enforces only listed properties)", param=param, code="unsupported_schema")
    extra = s.get("additionalProperties", False)
    if not isinstance(extra, bool):
        _walk(extra, f"{path}/additionalProperties", root, param)


def _array(s: dict, path: str, root: dict, param: str) -> None:
    if "items" in s and "prefixItems" in s:  # the converter reads only items
        raise APIError(400, f"give items or prefixItems at {path}, not both", param=param, code="unsupported_schema")
    for key in ("items", "prefixItems"):
        if key in s:
            if isinstance(s[key], list):
                _each(s[key], f"{path}/{key}", root, param)
            elif key == "items":
                _walk(s[key], f"{path}/items", root, param)
            else:
                raise _invalid(param, f"{path}/prefixItems", "must be an array of schemas")


def _each(items: object, path: str, root: dict, param: str, nonempty: bool = False) -> None:
    if not isinstance(items, list) or (nonempty and not items):
        raise _invalid(param, path, "must be a non-empty array of schemas" if nonempty else "must be an array")
    for i, v in enumerate(items):
        _walk(v, f"{path}/{i}", root, param)


def _resolve(ref: object, path: str, root: dict, param: str) -> None:
    """A local reference (#/$defs/X) that exists; llama.cpp resolves no other kind."""
    node: object = root
    if not isinstance(ref, str) or not ref.startswith("#"):
        raise APIError(400, f"this engine resolves only local $ref (#/...), not {ref!r} at {path}", param=param,
                       code="unsupported_schema")
    for part in [p for p in ref[1:].split("/") if p]:
        part = part.replace("~1", "/").replace("~0", "~")
        if not isinstance(node, dict) or part not in node:
            raise _invalid(param, path, f"$ref {ref!r} points at nothing")
        node = node[part]


@dataclasses.dataclass
class _Free:
    """The free part of a multi-phase completion: its text, and the piece that ended it."""

    said: list[str] = dataclasses.field(default_factory=list)
    end: Piece = dataclasses.field(default_factory=lambda: Piece(finish_reason="stop"))
    reserved: bool = False  # the free part's max_tokens kept RESERVE back for the constrained part

    def over(self, user_stops: list[str]) -> bool:
        """The completion ends here (out of tokens, not only the free part's, or at the client's own
        stop string)."""
        out = self.end.finish_reason == "length" and not self.reserved
        return out or bool(self.end.stop_word and self.end.stop_word in user_stops)

    def lead(self) -> str:
        """What comes before the header the front writes: nothing where the model stopped at the channel
        of a message it opened (`<|start|>assistant`), or wrote nothing; else the analysis is closed (its
        header first, if the reserve cut it there) and a new message started (after a message ended, at
        a channel written inside the analysis, or where the reserve cut it)."""
        text = "".join(self.said) + self.end.text
        if not text or (self.end.stop_word in (FINAL_HEADER, COMMENTARY) and text.rstrip().endswith(
                f"{START}assistant")):
            return ""
        return f"{'' if MESSAGE in text else MESSAGE}{END}{START}assistant"


def free_budget(max_tokens: int) -> int:
    """The free analysis's max_tokens: RESERVE (at most half) kept for what is decoded under the constraint."""
    return max_tokens - min(RESERVE, max_tokens // 2)


async def _reason(engine: Engine, gen: Generation, user_stops: list[str], run: _Free) -> AsyncIterator[Piece]:
    """The model's analysis, free, until it opens the final or commentary channel, ends a message or
    reaches its budget (free_budget)."""
    free = dataclasses.replace(gen, json_schema=None, grammar=None, stop=[*user_stops, *ANSWER_ENDS, COMMENTARY],
                               max_tokens=free_budget(gen.max_tokens), allocate=gen.max_tokens)
    run.reserved = free.max_tokens < gen.max_tokens
    async with contextlib.aclosing(_phase(engine, free)) as pieces:
        async for p in pieces:
            if p.finish_reason is None:
                run.said.append(p.text)
                yield p
            else:
                run.end = p


def _user_stops(gen: Generation) -> list[str]:
    return [s for s in gen.stop if s not in STOP]


async def _then(engine: Engine, gen: Generation, run: _Free, written: str, used: int,
                **constraint) -> tuple[Generation | None, int]:
    """The generation that continues after `written` (the front's text after the free part), under
    `constraint` (json_schema= or grammar=); None when no token is left for it."""
    ids = gen.prompt_ids + await engine.tokenize("".join(run.said) + run.end.text + written)
    room = min(gen.max_tokens - used, engine.n_ctx - len(ids))
    if room <= 0:
        return None, used
    bias = {**gen.logit_bias, **dict.fromkeys(await engine.token_ids(MARKERS_BANNED), BAN)}
    return dataclasses.replace(gen, prompt_ids=ids, max_tokens=room, logit_bias=bias,
                               **{"json_schema": None, "grammar": None, **constraint}), used


async def harmony_json(engine: Engine, gen: Generation) -> AsyncIterator[Piece]:
    """gpt-oss's completion with only its final answer decoded under `gen.json_schema`: the analysis
    free until the model opens a channel or ends a message, then the answer constrained. Yields the
    text as the model's own (the header included), so the harmony parser reads it as usual."""
    user_stops, run = _user_stops(gen), _Free()
    async with contextlib.aclosing(_reason(engine, gen, user_stops, run)) as reasoning:
        async for p in reasoning:
            yield p
    if run.over(user_stops):
        yield run.end
        return
    header = run.lead() + FINAL_HEADER  # the answer's header, written for the model
    yield Piece(run.end.text + header)
    answer, used = await _then(engine, gen, run, header, run.end.completion_tokens, json_schema=gen.json_schema)
    if answer is None:
        yield Piece("", "length", used)
        return
    async with contextlib.aclosing(_tally(engine, dataclasses.replace(answer, stop=[*user_stops, *STOP]), used)) as ps:
        async for p in ps:
            yield p


async def harmony_tool_call(engine: Engine, gen: Generation, tools: list[dict]) -> AsyncIterator[Piece]:
    """gpt-oss's completion that must call one of `tools`: the analysis free, then the call's header
    written for the model, the function's name decoded under a grammar of the names (when there is a
    choice), and its arguments under the function's parameters schema."""
    user_stops, run = _user_stops(gen), _Free()
    async with contextlib.aclosing(_reason(engine, gen, user_stops, run)) as reasoning:
        async for p in reasoning:
            yield p
    if run.over(user_stops):
        yield run.end
        return
    header = f"{run.lead()}{COMMENTARY} to={FUNCTIONS}"
    used = run.end.completion_tokens
    name = tools[0]["name"] if len(tools) == 1 else None
    if name is None:
        pick, used = await _then(engine, gen, run, header, used, grammar=_names_grammar(tools))
        name, _, n = await _picked_name(engine, pick, tools) if pick is not None else (None, "", 0)
        used += n
        if name is None:  # out of tokens before a whole name: no call to show
            yield Piece(run.end.text, "length", used)
            return
    header += f"{name} {CONSTRAIN}json{MESSAGE}"
    yield Piece(run.end.text + header)
    params = next(t for t in tools if t["name"] == name).get("parameters")
    call, used = await _then(engine, gen, run, header, used,
                             json_schema=params if params is not None else NO_PARAMETERS)
    if call is None:
        yield Piece("", "length", used)
        return
    async with contextlib.aclosing(_tally(engine, dataclasses.replace(call, stop=[*user_stops, *STOP]), used)) as ps:
        async for p in ps:
            yield p


def _names(tools: list[dict]) -> list[str]:
    return sorted((t["name"] for t in tools), key=len, reverse=True)  # the longest first: "add" after "add_all"


def _names_grammar(tools: list[dict]) -> str:
    return "root ::= " + " | ".join(f'"{n}"' for n in _names(tools))  # names are [A-Za-z0-9_-]: GBNF literals


async def _picked_name(engine: Engine, pick: Generation, tools: list[dict]) -> tuple[str | None, str, int]:
    """(the name `pick`, a generation under `_names_grammar`, wrote, or None when it ran out of tokens
    first; its text; its tokens)."""
    said, n = "", 0
    async with contextlib.aclosing(_phase(engine, dataclasses.replace(pick, stop=[]))) as ps:
        async for p in ps:
            said += p.text
            n = p.completion_tokens or n
    return next((x for x in _names(tools) if said.startswith(x)), None), said, n


async def named_call(engine: Engine, gen: Generation, tools: list[dict], sep: str) -> AsyncIterator[Piece]:
    """A dense model's forced call in a format that writes the name outside the JSON, `name` + `sep` +
    arguments (Mistral's `[TOOL_CALLS]add[ARGS]{…}`; the prompt ends with the opener): the name decoded
    under a grammar of the names (when there is a choice), `sep` written for the model, the arguments under
    the function's parameters schema. One JSON schema cannot hold both, as it does for the other formats."""
    used, name = 0, tools[0]["name"] if len(tools) == 1 else None
    if name is None:
        pick = dataclasses.replace(gen, json_schema=None, grammar=_names_grammar(tools))
        name, said, used = await _picked_name(engine, pick, tools)
        if name is None:  # out of tokens before a whole name
            yield Piece(said, "length", used)
            return
    written = name + sep
    yield Piece(written)
    ids = gen.prompt_ids + await engine.tokenize(written)
    room = min(gen.max_tokens - used, engine.n_ctx - len(ids))
    if room <= 0:
        yield Piece("", "length", used)
        return
    params = next(t for t in tools if t["name"] == name).get("parameters")
    call = dataclasses.replace(gen, prompt_ids=ids, max_tokens=room, grammar=None,
                               json_schema=params if params is not None else NO_PARAMETERS)
    async with contextlib.aclosing(_tally(engine, call, used)) as ps:
        async for p in ps:
            yield p


async def _phase(engine: Engine, gen: Generation) -> AsyncIterator[Piece]:
    """One phase's pieces, without the end-of-generation token's text (llama-server renders it, and
    the next phase's text follows it)."""
    eog = [t for t in engine.stop_texts if t and t not in STOP]
    async with contextlib.aclosing(engine.generate(gen)) as pieces:  # a client gone: the engine stops at once
        async for p in pieces:
            for t in eog:  # one token: always whole in one piece
                if t in p.text:
                    p = dataclasses.replace(p, text=p.text.replace(t, ""))
            yield p


async def _tally(engine: Engine, gen: Generation, used: int) -> AsyncIterator[Piece]:
    """The last phase's pieces, its last one counting every phase's tokens."""
    async with contextlib.aclosing(_phase(engine, gen)) as pieces:
        async for p in pieces:
            yield dataclasses.replace(p, completion_tokens=used + p.completion_tokens) if p.finish_reason else p
