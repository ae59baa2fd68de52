"""The OpenAI request shapes we accept and the error shape we answer with.

Requests are validated here, before any engine sees them, so every engine answers a bad
request the same way: HTTP 4xx with `{"error": {"message", "type", "param", "code"}}`.
Unknown fields are accepted and ignored, as OpenAI-compatible servers do (clients such as
LangChain send extras).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

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


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    # an earlier assistant turn sent back with its reasoning (either field name): accepted;
    # harmony drops earlier turns' analysis from the prompt, so it is not rendered
    reasoning_content: str | None = None
    reasoning: str | None = None

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


class ChatRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1)]
    reasoning_effort: str | None = None

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
