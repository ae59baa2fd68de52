"""The OpenAI request shapes we accept and the error shape we answer with.

Requests are validated here, before any engine sees them, so every engine answers a bad
request the same way: HTTP 4xx with `{"error": {"message", "type", "param", "code"}}`.
Unknown fields are accepted and ignored, as OpenAI-compatible servers do (clients such as
LangChain send extras).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgeport.core.harmony import REASONING_EFFORTS


class APIError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type, param, code
        self.headers = headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class TextPart(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text"]
    text: str


FUNCTION_NAME = r"^[A-Za-z0-9_-]{1,64}$"


class FunctionCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Annotated[str, Field(pattern=FUNCTION_NAME)]
    arguments: str


class ToolCall(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: Annotated[str, Field(min_length=1)]
    type: Literal["function"] = "function"
    function: FunctionCall


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    # an earlier assistant turn sent back with its reasoning (either field name): accepted;
    # harmony drops earlier turns' analysis from the prompt, so it is not rendered
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool result: the call it answers

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    include_usage: bool = False


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    max_tokens: int | None = None
    max_completion_tokens: int | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    seed: int | None = None
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: Literal[1] = 1
    logit_bias: dict[int, Annotated[float, Field(ge=-100, le=100)]] | None = None

    @field_validator("max_tokens", "max_completion_tokens")
    @classmethod
    def _positive(cls, v: int | None) -> int | None:
        if v is not None and v <= 0:
            raise ValueError("must be a positive integer")
        return v

    def limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def stops(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)


class JSONSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
    description: str | None = None
    # `schema` would shadow BaseModel.schema: the field is json_schema.schema on the wire
    schema_: Any = Field(None, alias="schema")  # checked by serving.constrained (a 400 that says why)
    strict: bool | None = None


class ResponseFormat(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    def schema_to_enforce(self) -> dict | None:
        """The JSON schema the answer is decoded under (None: free text). Strict or not, a schema
        is enforced: a guide the model may ignore is what clients complain of."""
        if self.type == "text":
            return None
        if self.type == "json_object":
            return {"type": "object"}
        if self.json_schema is None:
            raise APIError(400, "response_format of type json_schema needs a json_schema object",
                           param="response_format.json_schema", code="missing_required_parameter")
        return self.json_schema.schema_ if self.json_schema.schema_ is not None else {"type": "object"}


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: Annotated[str, Field(pattern=FUNCTION_NAME)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class Tool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    function: FunctionDef

    def spec(self) -> dict:
        """The tool as the chat renderers take it."""
        return {"name": self.function.name, "description": self.function.description,
                "parameters": self.function.parameters}


class NamedFunction(BaseModel):
    model_config = ConfigDict(extra="allow")
    name: str


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    function: NamedFunction


class ChatRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    reasoning_effort: str | None = None
    response_format: ResponseFormat | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | NamedToolChoice | None = None
    # a harmony turn and a Llama 3.1 JSON message make one call; false ends a Hermes message at its first
    parallel_tool_calls: bool | None = None

    def tool_plan(self) -> tuple[list[dict], list[dict]]:
        """(the tools offered to the model, the tools one of which the answer must call): `none` offers
        none, `required` forces one of them, a named choice forces that one."""
        tools = [t.spec() for t in self.tools or []]
        choice = self.tool_choice or ("auto" if tools else "none")
        if not tools and choice != "none":
            raise APIError(400, "tool_choice needs tools", param="tool_choice", code="invalid_value")
        if len({t["name"] for t in tools}) != len(tools):
            raise APIError(400, "two tools have the same name", param="tools", code="invalid_value")
        if choice == "none":
            return [], []
        if choice == "auto":
            return tools, []
        if choice == "required":
            return tools, tools
        named = [t for t in tools if t["name"] == choice.function.name]
        if not named:
            raise APIError(400, f"tool_choice names {choice.function.name!r}, which is not in tools",
                           param="tool_choice.function.name", code="invalid_value")
        return tools, named

    def conversation(self) -> list[dict]:
        """The messages for the chat renderers: an assistant's calls as {"name", "arguments"}, a tool
        result with the name of the tool it answers (found by the earlier call's id)."""
        names: dict[str, str] = {}
        out = []
        for i, m in enumerate(self.messages):
            d: dict[str, Any] = {"role": m.role, "content": m.text()}
            if m.tool_calls:
                d["tool_calls"] = [{"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                                   for c in m.tool_calls]
                names.update({c.id: c.function.name for c in m.tool_calls})
            if m.role == "tool":
                if m.tool_call_id is None:
                    raise APIError(400, f"missing required parameter: messages.{i}.tool_call_id",
                                   param=f"messages.{i}.tool_call_id", code="missing_required_parameter")
                if m.tool_call_id not in names:
                    raise APIError(400, f"messages.{i}.tool_call_id {m.tool_call_id!r} answers no earlier tool call "
                                        "in messages", param=f"messages.{i}.tool_call_id", code="invalid_value")
                d["name"], d["tool_call_id"] = names[m.tool_call_id], m.tool_call_id
            out.append(d)
        return out

    @field_validator("reasoning_effort")
    @classmethod
    def _effort(cls, v: str | None) -> str | None:
        if v is None:
            return None
        key = v.strip().lower()
        if key not in REASONING_EFFORTS:
            raise ValueError(f"unknown reasoning_effort {v!r}; use one of {', '.join(REASONING_EFFORTS)}")
        return REASONING_EFFORTS[key]


class CompletionRequest(_Sampling):
    prompt: str | Annotated[list[str], Field(min_length=1, max_length=1)]

    def text(self) -> str:
        return self.prompt if isinstance(self.prompt, str) else self.prompt[0]


def validation_error(errors: list[dict[str, Any]]) -> APIError:
    """pydantic's first error as one OpenAI error (param: the dotted field path)."""
    e = errors[0] if errors else {"msg": "invalid request", "loc": ()}
    loc = [str(p) for p in e.get("loc", ()) if p != "body"]
    if e.get("type") == "json_invalid":
        return APIError(400, f"malformed JSON in the request body: {e.get('ctx', {}).get('error', e['msg'])}",
                        code="invalid_json")
    if e.get("type") == "missing":
        return APIError(400, f"missing required parameter: {'.'.join(loc)}", param=".".join(loc) or None,
                        code="missing_required_parameter")
    msg = e.get("msg", "invalid value").removeprefix("Value error, ")
    return APIError(400, f"invalid value for {'.'.join(loc) or 'body'}: {msg}", param=".".join(loc) or None,
                    code="invalid_value")


# --- the Responses API: its request read into a chat request (one pipeline for both) -----------------

class ResponsesTool(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    name: Annotated[str, Field(pattern=FUNCTION_NAME)]
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ResponsesToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["function"]
    name: str


class TextFormat(BaseModel):
    """`text.format`: the Responses API's response_format, flattened."""

    model_config = ConfigDict(extra="allow")
    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    schema_: Any = Field(None, alias="schema")
    strict: bool | None = None


class TextOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    format: TextFormat | None = None


class ReasoningOptions(BaseModel):
    model_config = ConfigDict(extra="allow")
    effort: str | None = None


class ResponsesRequest(BaseModel):
    model_config = ConfigDict(extra="allow")
    model: str
    input: str | list[dict[str, Any]]
    instructions: str | None = None
    max_output_tokens: int | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] = 1.0
    top_p: Annotated[float, Field(gt=0, le=1)] = 1.0
    seed: int | None = None
    stream: bool = False
    tools: list[ResponsesTool] | None = None
    tool_choice: Literal["auto", "none", "required"] | ResponsesToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextOptions | None = None
    reasoning: ReasoningOptions | None = None
    previous_response_id: str | None = None
    store: bool = True

    def chat(self, history: list[dict]) -> ChatRequest:
        """The same request as chat completions take it, after `history` (the earlier responses' turns)."""
        msgs = [*([{"role": "developer", "content": self.instructions}] if self.instructions else []), *history,
                *self.turns()]
        body: dict[str, Any] = {"model": self.model, "messages": msgs, "temperature": self.temperature,
                                "top_p": self.top_p, "seed": self.seed, "max_tokens": self.max_output_tokens,
                                "reasoning_effort": self.reasoning.effort if self.reasoning else None,
                                "parallel_tool_calls": self.parallel_tool_calls}
        if self.tools:
            body["tools"] = [{"type": "function", "function": t.model_dump(exclude={"type"}, exclude_none=True)}
                             for t in self.tools]
        if isinstance(self.tool_choice, ResponsesToolChoice):
            body["tool_choice"] = {"type": "function", "function": {"name": self.tool_choice.name}}
        elif self.tool_choice:
            body["tool_choice"] = self.tool_choice
        fmt = self.text.format if self.text else None
        if fmt and fmt.type == "json_schema":
            body["response_format"] = {"type": "json_schema", "json_schema": {
                "name": fmt.name or "response", "schema": fmt.schema_, "strict": fmt.strict}}
        elif fmt:
            body["response_format"] = {"type": fmt.type}
        try:
            return ChatRequest.model_validate(body)
        except ValidationError as e:
            raise validation_error(list(e.errors())) from None

    def turns(self) -> list[dict]:
        """`input` as chat messages: consecutive function_call items are one assistant turn's calls, a
        function_call_output a tool message; reasoning items are dropped (harmony drops earlier analysis)."""
        if isinstance(self.input, str):
            return [{"role": "user", "content": self.input}]
        out: list[dict] = []
        for i, item in enumerate(self.input):
            kind = item.get("type", "message")
            if kind == "message" or (kind not in ("function_call", "function_call_output", "reasoning")
                                     and "role" in item):
                content = item.get("content")
                if isinstance(content, list):  # input_text / output_text parts
                    content = "".join(p.get("text", "") for p in content if isinstance(p, dict))
                out.append({"role": item.get("role"), "content": content})
            elif kind == "function_call":
                call = {"id": item.get("call_id"), "type": "function",
                        "function": {"name": item.get("name"), "arguments": item.get("arguments")}}
                if out and out[-1]["role"] == "assistant" and out[-1].get("tool_calls") and not out[-1]["content"]:
                    out[-1]["tool_calls"].append(call)
                else:
                    out.append({"role": "assistant", "content": None, "tool_calls": [call]})
            elif kind == "function_call_output":
                out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": item.get("output")})
            elif kind != "reasoning":
                raise APIError(400, f"input item type {kind!r} is not supported", param=f"input.{i}.type",
                               code="invalid_value")
        return out
