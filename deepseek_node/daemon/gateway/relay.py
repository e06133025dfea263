"""The gateway's side of a relayed engine: forward an OpenAI request as sent, return the answer unchanged.

The gateway has already authenticated the key, checked its scope, model allow-list and limits; here the
body is checked only as far as the gateway needs it (a JSON object, the model, whether it streams) and
everything else is the engine's to validate, so its own 400s reach the client as it wrote them. The
answer's bytes pass through untouched; on the way the usage, finish reason (and, when content logging
is on, the text) are picked out for the audit line.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
from fastapi.responses import Response, StreamingResponse

__all__ = ["SseAudit", "parse_relay_body", "relay_response"]

log = logging.getLogger("deepseek_node.daemon.gateway.relay")

# Response headers worth passing on; hop-by-hop and framing headers are the gateway's own.
_PASS_HEADERS = ("content-type",)


class BadBody(ValueError):
    def __init__(self, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def parse_relay_body(raw: bytes) -> dict[str, Any]:
    """The request as a dict, checked for what the gateway itself relies on."""
    if not raw.strip():
        raise BadBody("the request body is empty: send a JSON object", code="invalid_json")
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadBody(f"the body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(body, dict):
        raise BadBody("the body must be a JSON object", code="invalid_json")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadBody("model: required, a string naming the served model", param="model")
    stream = body.get("stream", False)
    if stream is not None and not isinstance(stream, bool):
        raise BadBody("stream: must be true or false", param="stream")
    return body


def prompt_for_audit(body: dict[str, Any]) -> str:
    if isinstance(body.get("messages"), list):
        parts = []
        for m in body["messages"]:
            if isinstance(m, dict):
                content = m.get("content")
                text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
                parts.append(f"{m.get('role')}: {text}")
        return "\n".join(parts)
    prompt = body.get("prompt")
    return prompt if isinstance(prompt, str) else f"<{type(prompt).__name__} prompt>"


class SseAudit:
    """Picks usage, finish reason and (optionally) text out of an SSE stream without changing it."""

    def __init__(self, keep_text: bool) -> None:
        self.keep_text = keep_text
        self._buf = b""
        self.chunks = 0
        self.usage: dict[str, Any] | None = None
        self.finish_reason: str | None = None
        self.text: list[str] = []

    def feed(self, data: bytes) -> None:
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            if not line.startswith(b"data: {"):
                continue
            self.chunks += 1
            # Parse only the chunks that carry what the audit needs: the token chunks in between are
            # the bulk of a stream, and decoding each would cost the gateway more than relaying it.
            if not (self.keep_text or b'"usage":{' in line or b'"finish_reason":"' in line):
                continue
            try:
                ev = json.loads(line[6:])
            except ValueError:
                continue
            self._take(ev)

    def _take(self, ev: dict[str, Any]) -> None:
        if isinstance(ev.get("usage"), dict):
            self.usage = ev["usage"]
        for choice in ev.get("choices") or []:
            if choice.get("finish_reason"):
                self.finish_reason = choice["finish_reason"]
            if self.keep_text:
                delta = choice.get("delta") or {}
                piece = delta.get("content") if isinstance(delta, dict) else None
                piece = piece if piece is not None else choice.get("text")
                if isinstance(piece, str):
                    self.text.append(piece)


def _audit_usage(audit: dict[str, Any], usage: dict[str, Any] | None) -> None:
    if usage:
        audit["prompt_tokens"] = usage.get("prompt_tokens")
        audit["completion_tokens"] = usage.get("completion_tokens")


async def relay_response(
    resp: httpx.Response, done: Callable[[], object], stream: bool, audit: dict[str, Any], keep_text: bool
) -> Response:
    """The client's response for an engine response opened in streaming mode."""
    headers = {k: v for k, v in resp.headers.items() if k.lower() in _PASS_HEADERS}
    if (
        not stream
        or resp.status_code != 200
        or "text/event-stream" not in resp.headers.get("content-type", "")
    ):
        try:
            content = await resp.aread()
        finally:
            await resp.aclose()
            done()
        if resp.status_code == 200:
            try:
                body = json.loads(content)
            except ValueError:
                body = {}
            _audit_usage(audit, body.get("usage") if isinstance(body, dict) else None)
            choices = body.get("choices") if isinstance(body, dict) else None
            if choices:
                audit["finish_reason"] = choices[0].get("finish_reason")
                if keep_text:
                    msg = choices[0].get("message") or {}
                    audit["completion"] = (
                        msg.get("content") if isinstance(msg, dict) else choices[0].get("text")
                    )
        else:
            audit["error"] = f"engine_{resp.status_code}"
        return Response(content, status_code=resp.status_code, headers=headers)

    sse = SseAudit(keep_text)

    async def relay() -> AsyncIterator[bytes]:
        try:
            async for data in resp.aiter_raw():
                sse.feed(data)
                yield data
        finally:
            # Client gone or stream done: closing the engine's response makes vLLM abort the request.
            await resp.aclose()
            done()
            _audit_usage(audit, sse.usage)
            if sse.usage is None:
                audit["completion_tokens"] = max(0, sse.chunks - 1)  # role chunk aside, one token each
            audit["finish_reason"] = sse.finish_reason or "abort"
            if keep_text:
                audit["completion"] = "".join(sse.text)

    return StreamingResponse(
        relay(),
        status_code=200,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
