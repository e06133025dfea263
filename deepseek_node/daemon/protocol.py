"""OpenAI-compatible request and response shapes (the subset this daemon serves).

Requests are parsed strictly from the raw JSON body (`"5"` is not an integer, `true` is not a number): a
client bug should be a 400 that names the field, not a silently different generation. Unknown top-level
fields are ignored, as OpenAI-compatible servers do, because SDKs add new optional fields over time;
fields we know but cannot honour (n > 1, logprobs, penalties, tools) are refused rather than ignored.
"""

from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "ErrorBody",
    "Usage",
    "error_body",
]

# Hard ceilings that hold whatever the config says; the per-node limits (max_context) are checked later.
MAX_STOP_SEQUENCES = 4
MAX_STOP_LEN = 256
MAX_MESSAGES = 4096
MAX_TOKENS_CEILING = 1 << 31


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Req):
    type: Literal["text"]
    text: str


class ChatMessage(_Req):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, v: Any) -> Any:
        # Refuse image/audio parts with a clear message instead of a type error on a union.
        if isinstance(v, list):
            for i, part in enumerate(v):
                if isinstance(part, dict) and part.get("type") not in (None, "text"):
                    raise ValueError(f"content[{i}]: only text parts are supported, not {part.get('type')!r}")
        return v

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Req):
    include_usage: bool = False


class _SamplingFields(_Req):
    model: str = Field(min_length=1, max_length=256)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(1 << 63), lt=1 << 64)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logprobs: bool | int | None = None
    user: str | None = Field(None, max_length=256)

    @field_validator("stop")
    @classmethod
    def _stop(cls, v: str | list[str] | None) -> list[str] | None:
        if v is None:
            return None
        stops = [v] if isinstance(v, str) else v
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences are allowed")
        for s in stops:
            if not s:
                raise ValueError("stop sequences must not be empty")
            if len(s) > MAX_STOP_LEN:
                raise ValueError(f"stop sequences must be at most {MAX_STOP_LEN} characters")
        return stops

    @model_validator(mode="after")
    def _unsupported(self) -> _SamplingFields:
        # Accepting these and ignoring them would return something other than what was asked for.
        if self.presence_penalty not in (None, 0.0) or self.frequency_penalty not in (None, 0.0):
            raise ValueError("presence_penalty and frequency_penalty are not supported (leave them at 0)")
        if self.logprobs not in (None, False, 0):
            raise ValueError("logprobs are not supported")
        if self.stream_options is not None and not self.stream:
            raise ValueError("stream_options is only allowed when stream is true")
        return self

    @property
    def stop_list(self) -> list[str]:
        return list(self.stop or [])  # type: ignore[arg-type]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1, lt=MAX_TOKENS_CEILING)
    max_completion_tokens: int | None = Field(None, ge=1, lt=MAX_TOKENS_CEILING)
    tools: list[Any] | None = None
    tool_choice: Any = None
    response_format: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _chat_unsupported(self) -> ChatCompletionRequest:
        if self.tools:
            raise ValueError("tools are not supported by this server")
        fmt = (self.response_format or {}).get("type", "text")
        if fmt != "text":
            raise ValueError("response_format other than text is not supported")
        both = self.max_tokens is not None and self.max_completion_tokens is not None
        if both and self.max_tokens != self.max_completion_tokens:
            raise ValueError("max_tokens and max_completion_tokens disagree: send one of them")
        return self

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_SamplingFields):
    # A string, a one-element list of strings, or one list of token ids (what the OpenAI SDK can send).
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=1, lt=MAX_TOKENS_CEILING)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1, le=1)

    @model_validator(mode="after")
    def _prompt(self) -> CompletionRequest:
        if self.echo:
            raise ValueError("echo is not supported")
        if self.suffix:
            raise ValueError("suffix is not supported")
        p = self.prompt
        if isinstance(p, list):
            if not p:
                raise ValueError("prompt must not be empty")
            if isinstance(p[0], list):
                if len(p) != 1:
                    raise ValueError("only one prompt per request is supported")
                if not p[0]:
                    raise ValueError("prompt must not be empty")
            elif isinstance(p[0], str) and len(p) != 1:
                raise ValueError("only one prompt per request is supported")
        return self

    def prompt_text_or_ids(self) -> str | list[int]:
        p = self.prompt
        if isinstance(p, str):
            return p
        if isinstance(p[0], str):
            return p[0]  # type: ignore[return-value]
        if isinstance(p[0], list):
            return list(p[0])  # type: ignore[arg-type]
        return list(p)  # type: ignore[arg-type]

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


# ---------------------------------------------------------------------------------------------- responses


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


def error_body(message: str, type_: str, param: str | None = None, code: str | None = None) -> dict[str, Any]:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def now() -> int:
    return int(time.time())


def chat_response(
    rid: str, model: str, text: str, finish_reason: str, usage: Usage, created: int
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text},
                "finish_reason": finish_reason,
                "logprobs": None,
            }
        ],
        "usage": usage.model_dump(),
    }


def chat_chunk(
    rid: str,
    model: str,
    created: int,
    delta: dict[str, Any] | None,
    finish_reason: str | None = None,
    usage: Usage | None = None,
) -> dict[str, Any]:
    choices = (
        []
        if delta is None
        else [{"index": 0, "delta": delta, "finish_reason": finish_reason, "logprobs": None}]
    )
    out: dict[str, Any] = {
        "id": rid,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        out["usage"] = usage.model_dump()
    return out


def completion_response(
    rid: str, model: str, text: str, finish_reason: str, usage: Usage, created: int
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}],
        "usage": usage.model_dump(),
    }


def completion_chunk(
    rid: str,
    model: str,
    created: int,
    text: str | None,
    finish_reason: str | None = None,
    usage: Usage | None = None,
) -> dict[str, Any]:
    choices = (
        [] if text is None else [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}]
    )
    out: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "choices": choices,
    }
    if usage is not None:
        out["usage"] = usage.model_dump()
    return out


def models_list(names: list[str], created: int, owned_by: str = "deepseek-node") -> dict[str, Any]:
    return {
        "object": "list",
        "data": [{"id": n, "object": "model", "created": created, "owned_by": owned_by} for n in names],
    }
