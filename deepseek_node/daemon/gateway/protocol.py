"""OpenAI-compatible request and response shapes (the subset this daemon serves).

Requests are parsed strictly from the raw JSON body (`"5"` is not an integer, `true` is not a number): a
client bug should be a 400 that names the field, not a silently different generation. `null` is accepted
for every optional field, as OpenAI does. Unknown top-level fields are ignored, as vLLM and other
OpenAI-compatible servers do, because SDKs add new optional fields over time; fields that would change the
output and that we cannot honour (n > 1, logprobs, penalties, logit_bias, tools, structured output,
audio, vLLM's extra samplers) are declared here only to be refused, with a 400 that names them (code
`unsupported_parameter` / `unsupported_value`), never ignored. Harmless metadata (user, metadata, store,
service_tier, parallel_tool_calls, prediction, message `name`) is accepted.
"""

from __future__ import annotations

import hashlib
import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

__all__ = [
    "ChatCompletionRequest",
    "ChatMessage",
    "CompletionRequest",
    "ErrorBody",
    "Unsupported",
    "Usage",
    "error_body",
]

# Hard ceilings that hold whatever the config says; the per-node limits (max_context) are checked later.
MAX_STOP_SEQUENCES = 4
MAX_STOP_LEN = 256
MAX_MESSAGES = 4096
MAX_TOKENS_CEILING = 1 << 31


class Unsupported(ValueError):
    """A parameter (or value) this server knows but does not implement: a 400 naming it, not an ignore."""

    def __init__(self, message: str, code: str = "unsupported_parameter") -> None:
        super().__init__(message)
        self.code = code


def _value(message: str) -> Unsupported:
    return Unsupported(message, "unsupported_value")


class _Req(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)


class TextPart(_Req):
    type: Literal["text"]
    text: str


class ChatMessage(_Req):
    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None  # accepted; the chat templates we serve have no place for it
    tool_calls: list[Any] | None = None
    function_call: Any = None

    @field_validator("role", mode="before")
    @classmethod
    def _role(cls, v: Any) -> Any:
        if v in ("tool", "function"):
            raise _value(f"{v!r} messages are not supported: this server does not do tool calling")
        return v

    @field_validator("content", mode="before")
    @classmethod
    def _parts(cls, v: Any) -> Any:
        # Refuse image/audio parts with a clear message instead of a type error on a union.
        if isinstance(v, list):
            for i, part in enumerate(v):
                if isinstance(part, dict) and part.get("type") not in (None, "text"):
                    raise _value(f"content[{i}]: only text parts are supported, not {part.get('type')!r}")
        return v

    @field_validator("tool_calls")
    @classmethod
    def _tool_calls(cls, v: list[Any] | None) -> list[Any] | None:
        if v:
            raise Unsupported("not supported: this server does not do tool calling")
        return v

    @field_validator("function_call")
    @classmethod
    def _function_call(cls, v: Any) -> Any:
        if v is not None:
            raise Unsupported("not supported: this server does not do tool calling")
        return v

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class StreamOptions(_Req):
    include_usage: bool = False

    @field_validator("include_usage", mode="before")
    @classmethod
    def _null_usage(cls, v: Any) -> Any:
        return False if v is None else v


# Parameters that change sampling and are not implemented: accepted only at the value that changes nothing.
# (top_k, min_p and repetition_penalty are vLLM's extras that OpenAI-compatible tooling sends.)
_NEUTRAL: dict[str, tuple[tuple[Any, ...], str]] = {
    "presence_penalty": ((None, 0.0), "leave it at 0"),
    "frequency_penalty": ((None, 0.0), "leave it at 0"),
    "logit_bias": ((None, {}), "leave it empty"),
    "top_k": ((None, -1, 0), "leave it unset, or -1"),
    "min_p": ((None, 0.0), "leave it unset, or 0"),
    "repetition_penalty": ((None, 1.0), "leave it unset, or 1"),
}


class _SamplingFields(_Req):
    model: str = Field(min_length=1, max_length=256)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int | None = Field(None, ge=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(1 << 63), lt=1 << 64)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    logit_bias: dict[str, Any] | None = None
    user: str | None = Field(None, max_length=256)
    # Not OpenAI's, but vLLM's extras that OpenAI-compatible tooling sends: honoured only at their neutral value.
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None

    @field_validator("stream", mode="before")
    @classmethod
    def _null_stream(cls, v: Any) -> Any:
        return False if v is None else v

    @field_validator("n")
    @classmethod
    def _n(cls, v: int | None) -> int | None:
        if v is not None and v > 1:
            raise _value("only 1 is supported: this server returns one choice per request")
        return v

    @field_validator("stream_options")
    @classmethod
    def _stream_options(cls, v: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if v is not None and not info.data.get("stream"):
            raise ValueError("only allowed when stream is true")
        return v

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

    @field_validator(*_NEUTRAL)
    @classmethod
    def _neutral(cls, v: Any, info: ValidationInfo) -> Any:
        neutral, hint = _NEUTRAL[info.field_name or ""]
        if v not in neutral:
            raise Unsupported(f"not supported ({hint})")
        return v

    @property
    def stop_list(self) -> list[str]:
        return list(self.stop or [])  # type: ignore[arg-type]

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)


_NO_TOOLS = "this server does not do tool calling"


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_tokens: int | None = Field(None, ge=1, lt=MAX_TOKENS_CEILING)
    max_completion_tokens: int | None = Field(None, ge=1, lt=MAX_TOKENS_CEILING)
    logprobs: bool | None = None
    top_logprobs: int | None = Field(None, ge=0, le=20)
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None
    modalities: list[str] | None = None
    audio: Any = None
    web_search_options: Any = None
    reasoning_effort: Any = None
    verbosity: Any = None

    @field_validator("max_completion_tokens")
    @classmethod
    def _max_completion_tokens(cls, v: int | None, info: ValidationInfo) -> int | None:
        other = info.data.get("max_tokens")
        if v is not None and other is not None and v != other:
            raise ValueError("disagrees with max_tokens: send one of them")
        return v

    @field_validator("logprobs", "top_logprobs")
    @classmethod
    def _logprobs(cls, v: bool | int | None) -> bool | int | None:
        if v:
            raise Unsupported("log probabilities are not supported")
        return v

    @field_validator("tools", "functions")
    @classmethod
    def _tools(cls, v: list[Any] | None) -> list[Any] | None:
        if v:
            raise Unsupported(f"not supported: {_NO_TOOLS}")
        return v

    @field_validator("tool_choice", "function_call")
    @classmethod
    def _tool_choice(cls, v: Any) -> Any:
        if v not in (None, "none", "auto"):
            raise _value(f"only 'none' or 'auto' is supported: {_NO_TOOLS}")
        return v

    @field_validator("response_format")
    @classmethod
    def _response_format(cls, v: dict[str, Any] | None) -> dict[str, Any] | None:
        kind = (v or {}).get("type", "text")
        if kind != "text":
            raise _value(f"type {str(kind)[:64]!r} is not supported: only 'text' is")
        return v

    @field_validator("modalities")
    @classmethod
    def _modalities(cls, v: list[str] | None) -> list[str] | None:
        if v and any(m != "text" for m in v):
            raise _value("only the 'text' modality is supported")
        return v

    @field_validator("audio", "web_search_options", "reasoning_effort", "verbosity")
    @classmethod
    def _absent(cls, v: Any) -> Any:
        if v is not None:
            raise Unsupported("not supported by this model")
        return v

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_SamplingFields):
    # A string, a one-element list of strings, or one list of token ids (what the OpenAI SDK can send).
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(None, ge=1, lt=MAX_TOKENS_CEILING)
    logprobs: int | None = Field(None, ge=0, le=5)
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = Field(None, ge=1)

    @field_validator("echo", mode="before")
    @classmethod
    def _null_echo(cls, v: Any) -> Any:
        return False if v is None else v

    @field_validator("prompt")
    @classmethod
    def _prompt(
        cls, p: str | list[str] | list[int] | list[list[int]]
    ) -> str | list[str] | list[int] | list[list[int]]:
        if isinstance(p, list):
            if not p:
                raise ValueError("prompt must not be empty")
            if isinstance(p[0], list):
                if len(p) != 1:
                    raise _value("only one prompt per request is supported")
                if not p[0]:
                    raise ValueError("prompt must not be empty")
            elif isinstance(p[0], str) and len(p) != 1:
                raise _value("only one prompt per request is supported")
        return p

    @field_validator("logprobs")
    @classmethod
    def _logprobs(cls, v: int | None) -> int | None:
        # Even 0 asks for the sampled tokens' log probabilities; only null means "none".
        if v is not None:
            raise Unsupported("log probabilities are not supported (send null or leave it out)")
        return v

    @field_validator("echo", "suffix")
    @classmethod
    def _echo_suffix(cls, v: bool | str | None) -> bool | str | None:
        if v:
            raise Unsupported("not supported")
        return v

    @field_validator("best_of")
    @classmethod
    def _best_of(cls, v: int | None) -> int | None:
        if v is not None and v > 1:
            raise _value("only 1 is supported")
        return v

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


def fingerprint(*parts: str) -> str:
    """`system_fingerprint`: changes when what serves the model (version, model, its limits) changes."""
    return "fp_" + hashlib.sha256("\0".join(parts).encode()).hexdigest()[:12]


def _usage_field(out: dict[str, Any], usage: Usage | None, include_usage: bool) -> dict[str, Any]:
    # With include_usage, OpenAI puts `usage` on every chunk: null on all but the final, choice-less one.
    if usage is not None:
        out["usage"] = usage.model_dump()
    elif include_usage:
        out["usage"] = None
    return out


def chat_response(
    rid: str,
    model: str,
    text: str,
    finish_reason: str,
    usage: Usage,
    created: int,
    system_fingerprint: str | None = None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "system_fingerprint": system_fingerprint,
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": text, "refusal": None},
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
    *,
    system_fingerprint: str | None = None,
    include_usage: bool = False,
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
        "system_fingerprint": system_fingerprint,
        "choices": choices,
    }
    return _usage_field(out, usage, include_usage)


def completion_response(
    rid: str,
    model: str,
    text: str,
    finish_reason: str,
    usage: Usage,
    created: int,
    system_fingerprint: str | None = None,
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": system_fingerprint,
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
    *,
    system_fingerprint: str | None = None,
    include_usage: bool = False,
) -> dict[str, Any]:
    choices = (
        [] if text is None else [{"index": 0, "text": text, "finish_reason": finish_reason, "logprobs": None}]
    )
    out: dict[str, Any] = {
        "id": rid,
        "object": "text_completion",
        "created": created,
        "model": model,
        "system_fingerprint": system_fingerprint,
        "choices": choices,
    }
    return _usage_field(out, usage, include_usage)


def model_card(name: str, created: int, owned_by: str = "deepseek-node") -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": owned_by}


def models_list(names: list[str], created: int, owned_by: str = "deepseek-node") -> dict[str, Any]:
    return {"object": "list", "data": [model_card(n, created, owned_by) for n in names]}
