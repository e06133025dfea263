"""The HTTP layer: a thin router that authenticates, validates, maps errors, and hands work to the engine.

Every failure a client can cause is a 4xx with an OpenAI-style body `{"error": {message, type, param,
code}}`; a 5xx means a bug or a dying engine. Bodies are parsed here from raw bytes with strict pydantic
models (not FastAPI's body injection) so malformed JSON, wrong types and oversize bodies all take one
path with one error shape.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from deepseek_node import __version__ as _pkg_version
from deepseek_node.daemon.config import DaemonConfig
from deepseek_node.daemon.config import Scope as KeyScope
from deepseek_node.daemon.engines.interface import (
    Draining,
    Engine,
    EngineState,
    EngineUnavailable,
    NotReady,
    QueueFull,
    RelayEngine,
    RequestHandle,
    SamplingParams,
)
from deepseek_node.daemon.gateway import protocol as P
from deepseek_node.daemon.gateway import relay as R
from deepseek_node.daemon.gateway.admission import Admission, Lease, Refused
from deepseek_node.daemon.gateway.audit import AuditLog
from deepseek_node.daemon.gateway.auth import KeyStore, Principal
from deepseek_node.daemon.gateway.metrics import CONTENT_TYPE, Metrics

__all__ = ["APIError", "DaemonState", "create_app"]

log = logging.getLogger("deepseek_node.daemon.gateway.api")

_METHODS = frozenset({"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"})
_RID_RE = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# Prompts larger than this are tokenized off the event loop so one big request cannot stall the others.
_TOKENIZE_INLINE_CHARS = 16_384


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type_: str = "invalid_request_error",
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type_
        self.param = param
        self.code = code
        self.headers = headers or {}

    def response(self) -> JSONResponse:
        return JSONResponse(
            P.error_body(self.message, self.type, self.param, self.code),
            status_code=self.status,
            headers=self.headers,
        )


@dataclass
class DaemonState:
    config: DaemonConfig
    engine: Engine
    keys: KeyStore
    audit: AuditLog
    metrics: Metrics
    created: int = field(default_factory=P.now)
    load_plan: dict[str, Any] = field(default_factory=dict)
    draining: bool = False
    admission: Admission | None = None
    sampling_defaults: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.admission is None:
            self.admission = make_admission(self.config, relay=isinstance(self.engine, RelayEngine))


def make_admission(config: DaemonConfig, relay: bool) -> Admission:
    """Per-key ceilings always; a node ceiling where the engine's own queue is not bounded (vLLM's)."""
    e = config.engine
    return Admission(
        per_key_default=config.server.max_concurrent_per_key,
        per_key={k.id: k.max_concurrent for k in config.auth.api_keys if k.max_concurrent is not None},
        node_limit=e.max_running + e.max_queue if relay else None,
        retry_after_s=e.retry_after_s,
    )


# ------------------------------------------------------------------------------------------- middleware


class RequestContext:
    """Request id, body-size limit, audit line and HTTP metrics for every request (pure ASGI: cheap)."""

    def __init__(self, app: ASGIApp, state: DaemonState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        headers = dict(scope.get("headers") or [])
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if _RID_RE.match(given) else secrets.token_hex(12)
        audit: dict[str, Any] = {}
        scope.setdefault("state", {})
        scope["state"]["request_id"] = rid
        scope["state"]["audit"] = audit
        status_box = [500]
        recorded = [False]
        limit = self.state.config.server.max_body_bytes

        def record_once() -> None:
            if not recorded[0]:
                recorded[0] = True
                self._record(scope, rid, audit, status_box[0], time.perf_counter() - t0)

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
                message.setdefault("headers", [])
                message["headers"] = [*list(message["headers"]), (b"x-request-id", rid.encode())]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                # Written before the last byte leaves: a client that has its answer finds its audit line.
                record_once()
            await send(message)

        try:
            declared = int(headers.get(b"content-length", b"0") or 0)
        except ValueError:
            declared = -1
        if declared > limit or declared < 0:
            resp = APIError(
                413 if declared > limit else 400,
                f"request body exceeds {limit} bytes"
                if declared > limit
                else "invalid Content-Length header",
                code="request_too_large" if declared > limit else None,
            ).response()
            await resp(scope, receive, send_wrapper)
        else:
            received = [0]

            async def receive_wrapper() -> Message:
                message = await receive()
                if message["type"] == "http.request":
                    received[0] += len(message.get("body", b""))
                    if received[0] > limit:
                        raise APIError(413, f"request body exceeds {limit} bytes", code="request_too_large")
                return message

            try:
                await self.app(scope, receive_wrapper, send_wrapper)
            except Exception:
                # Starlette re-raises after it has sent the 500; it is logged there, recorded here.
                log.debug("request %s failed", rid, exc_info=True)
        record_once()  # the client went away before the response ended

    def _record(self, scope: Scope, rid: str, audit: dict[str, Any], status: int, elapsed: float) -> None:
        # Label by route template, never by raw path: random paths from a scanner must not grow the series.
        path = getattr(scope.get("route"), "path", None) or "(unmatched)"
        method = scope.get("method", "?")
        with contextlib.suppress(Exception):
            self.state.metrics.http_requests.labels(
                path, method if method in _METHODS else "other", str(status)
            ).inc()
        if path == "/health/live":
            return  # probes every few seconds would drown the audit trail
        client = scope.get("client")
        record = {
            "request_id": rid,
            "key_id": audit.get("key_id"),
            "client": client[0] if client else None,
            "method": scope.get("method"),
            "path": scope.get("path"),
            "model": audit.get("model"),
            "status": status,
            "prompt_tokens": audit.get("prompt_tokens"),
            "completion_tokens": audit.get("completion_tokens"),
            "finish_reason": audit.get("finish_reason"),
            "stream": audit.get("stream"),
            "error": audit.get("error"),
            "latency_ms": round(elapsed * 1000, 2),
        }
        if "prompt" in audit:
            record["prompt"] = self.state.audit.content(audit.get("prompt"))
            record["completion"] = self.state.audit.content(audit.get("completion"))
        self.state.audit.write(record)


# --------------------------------------------------------------------------------------------- helpers


def _state(request: Request) -> DaemonState:
    return request.app.state.daemon  # type: ignore[no-any-return]


def _event_stream(events: Any) -> StreamingResponse:
    return StreamingResponse(
        events,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _audit(request: Request) -> dict[str, Any]:
    return request.scope.setdefault("state", {}).setdefault("audit", {})  # type: ignore[no-any-return]


def _rid(request: Request) -> str:
    return str(request.scope.get("state", {}).get("request_id", "")) or secrets.token_hex(12)


def authorize(request: Request, scope: KeyScope | None) -> Principal:
    """The caller's principal; 401 without a valid key, 403 without the scope (None: any valid key)."""
    principal = _state(request).keys.authenticate(request.headers.get("authorization"))
    if principal is None:
        raise APIError(
            401,
            "missing or invalid API key: send 'Authorization: Bearer <key>'",
            code="invalid_api_key",
            headers={"WWW-Authenticate": "Bearer"},
        )
    _audit(request)["key_id"] = principal.key_id
    if scope is not None and not principal.has(scope):
        raise APIError(
            403,
            f"this API key lacks the '{scope.value}' scope",
            "permission_error",
            code="insufficient_scope",
        )
    return principal


M = TypeVar("M", bound=BaseModel)


async def parse_body(request: Request, model: type[M]) -> M:
    raw = await request.body()
    if not raw.strip():
        raise APIError(400, "the request body is empty: send a JSON object", code="invalid_json")
    try:
        return model.model_validate_json(raw)
    except ValidationError as exc:
        errs = exc.errors(include_url=False)
        first = errs[0] if errs else {"loc": (), "msg": "invalid request", "type": ""}
        if first.get("type") == "json_invalid":
            raise APIError(
                400, f"the body is not valid JSON: {first.get('msg')}", code="invalid_json"
            ) from None
        loc = ".".join(str(p) for p in first.get("loc", ()))
        msg = str(first.get("msg", "invalid value")).removeprefix("Value error, ")
        more = f" (and {len(errs) - 1} more problem{'s' if len(errs) > 2 else ''})" if len(errs) > 1 else ""
        cause = (first.get("ctx") or {}).get("error")
        raise APIError(
            400,
            f"{loc}: {msg}{more}" if loc else f"{msg}{more}",
            param=loc or None,
            code=cause.code if isinstance(cause, P.Unsupported) else None,
        ) from None


def check_model(state: DaemonState, principal: Principal, name: str) -> None:
    if name != state.config.model.served_name:
        raise APIError(
            404,
            f"the model '{name[:200]}' does not exist on this server",
            param="model",
            code="model_not_found",
        )
    if not principal.may_use(name):
        raise APIError(
            403,
            f"this API key may not use the model '{name}'",
            "permission_error",
            param="model",
            code="model_not_allowed",
        )


def require_ready(state: DaemonState) -> None:
    st = state.engine.state
    if st is EngineState.READY:
        return
    if st in (EngineState.DRAINING, EngineState.STOPPED):
        raise APIError(
            503,
            "the server is shutting down",
            "server_error",
            code="shutting_down",
            headers={"Retry-After": "5"},
        )
    raise APIError(
        503,
        "the model is not ready yet" if st is EngineState.LOADING else "the engine failed",
        "server_error",
        code="not_ready",
        headers={"Retry-After": "5"},
    )


def resolve_params(
    state: DaemonState,
    body: P.ChatCompletionRequest | P.CompletionRequest,
    n_prompt: int,
) -> SamplingParams:
    max_ctx = state.config.model.max_context
    requested = body.requested_max_tokens
    if n_prompt >= max_ctx:
        raise APIError(
            400,
            f"This model's maximum context length is {max_ctx} tokens. However, your prompt is {n_prompt} "
            "tokens, which leaves no room for a completion. Please shorten the prompt.",
            param="messages" if isinstance(body, P.ChatCompletionRequest) else "prompt",
            code="context_length_exceeded",
        )
    if requested is None:
        default = state.config.engine.default_max_tokens
        max_tokens = max_ctx - n_prompt if default is None else min(default, max_ctx - n_prompt)
    elif n_prompt + requested > max_ctx:
        raise APIError(
            400,
            f"This model's maximum context length is {max_ctx} tokens. However, you requested "
            f"{n_prompt + requested} tokens ({n_prompt} in the prompt, {requested} in the completion). "
            "Please reduce the prompt or max_tokens.",
            param="max_tokens",
            code="context_length_exceeded",
        )
    else:
        max_tokens = requested
    # Unset sampling parameters take the model's own recommendation (generation_config.json: 0.6 / 0.95
    # for DeepSeek-R1), as vLLM does, then OpenAI's defaults.
    defaults = state.sampling_defaults
    temperature = float(defaults.get("temperature", 1.0) if body.temperature is None else body.temperature)
    top_p = float(defaults.get("top_p", 1.0) if body.top_p is None else body.top_p)
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=temperature,
        top_p=top_p,
        seed=body.seed,
        stop=tuple(body.stop_list),
    )


def acquire(state: DaemonState, principal: Principal) -> Lease:
    assert state.admission is not None
    try:
        return state.admission.acquire(principal.key_id)
    except Refused as exc:
        state.metrics.rejected.labels("key_limit" if exc.scope == "key" else "queue_full").inc()
        raise APIError(
            429,
            str(exc),
            "rate_limit_error",
            code="key_concurrency_limit" if exc.scope == "key" else "server_overloaded",
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from None


def submit(state: DaemonState, ids: list[int], params: SamplingParams, rid: str) -> RequestHandle:
    try:
        return state.engine.submit(ids, params, rid)
    except QueueFull as exc:
        state.metrics.rejected.labels("queue_full").inc()
        raise APIError(
            429,
            "the server is at capacity; retry after the indicated time",
            "rate_limit_error",
            code="server_overloaded",
            headers={"Retry-After": str(exc.retry_after_s)},
        ) from None
    except Draining:
        state.metrics.rejected.labels("draining").inc()
        raise APIError(
            503,
            "the server is shutting down",
            "server_error",
            code="shutting_down",
            headers={"Retry-After": "5"},
        ) from None
    except NotReady:
        raise APIError(
            503, "the model is not ready", "server_error", code="not_ready", headers={"Retry-After": "5"}
        ) from None


async def _tokenize(fn: Callable[[], list[int]], size: int) -> list[int]:
    try:
        if size > _TOKENIZE_INLINE_CHARS:
            return await asyncio.to_thread(fn)
        return fn()
    except NotReady:
        raise APIError(
            503, "the model is not ready", "server_error", code="not_ready", headers={"Retry-After": "5"}
        ) from None
    except APIError:
        raise
    except Exception as exc:  # template errors on odd message sequences are the client's input
        raise APIError(
            400, f"the input could not be tokenized: {type(exc).__name__}: {str(exc)[:200]}"
        ) from None


async def _collect(handle: RequestHandle, request: Request) -> tuple[str, str]:
    """Run a non-streaming request to the end; cancel it if the client disconnects meanwhile."""

    async def watch() -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                handle.cancel()
                return

    watcher = asyncio.create_task(watch())
    parts: list[str] = []
    reason = "stop"
    try:
        async for ev in handle:
            if ev.error:
                raise APIError(503, f"generation failed: {ev.error}", "server_error", code="engine_error")
            parts.append(ev.text)
            if ev.finish_reason:
                reason = ev.finish_reason
    finally:
        watcher.cancel()
        handle.cancel()
    return "".join(parts), reason


def _sse(obj: dict[str, Any]) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


_DONE = b"data: [DONE]\n\n"


def _finish_audit(audit: dict[str, Any], handle: RequestHandle, text: str, reason: str | None) -> None:
    audit["prompt_tokens"] = handle.prompt_tokens
    audit["completion_tokens"] = handle.completion_tokens
    audit["finish_reason"] = reason
    if "prompt" in audit:
        audit["completion"] = text


def _usage(handle: RequestHandle) -> P.Usage:
    return P.Usage(
        prompt_tokens=handle.prompt_tokens,
        completion_tokens=handle.completion_tokens,
        total_tokens=handle.prompt_tokens + handle.completion_tokens,
    )


async def _stream(
    handle: RequestHandle,
    make_chunk: Callable[[str | None, str | None, P.Usage | None], dict[str, Any]],
    first: dict[str, Any] | None,
    include_usage: bool,
    audit: dict[str, Any],
    lease: Lease,
) -> AsyncIterator[bytes]:
    parts: list[str] = []
    reason: str | None = None
    try:
        if first is not None:
            yield _sse(first)
        async for ev in handle:
            if ev.error:
                reason = "error"
                yield _sse(
                    P.error_body(f"generation failed: {ev.error}", "server_error", code="engine_error")
                )
                break
            if ev.text:
                parts.append(ev.text)
                yield _sse(make_chunk(ev.text, None, None))
            if ev.finish_reason:
                reason = ev.finish_reason
                yield _sse(make_chunk("" if ev.text else None, ev.finish_reason, None))
        if include_usage and reason != "error":
            yield _sse(make_chunk(None, None, _usage(handle)))
        yield _DONE
    finally:
        # Client gone (generator closed) or done: either way the sequence must not keep decoding.
        handle.cancel()
        lease.release()
        _finish_audit(audit, handle, "".join(parts), reason or "abort")


# ----------------------------------------------------------------------------------------------- routes


def create_app(state: DaemonState, on_shutdown: Callable[[], Awaitable[None]] | None = None) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await state.engine.start()
        try:
            yield
        finally:
            # uvicorn has already waited (up to shutdown_grace_s) for open requests; stop what is left.
            state.engine.begin_drain()
            await state.engine.wait_idle(1.0)
            await state.engine.shutdown()
            if on_shutdown is not None:
                await on_shutdown()
            state.audit.close()

    app = FastAPI(
        title="deepseek-node",
        version=_pkg_version,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.daemon = state
    state.metrics.bind(state.engine.stats)
    fp = P.fingerprint(_pkg_version, state.config.model.served_name, str(state.config.model.max_context))

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> JSONResponse:
        _audit(request)["error"] = exc.code or exc.type
        return exc.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        type_ = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
        msg = {404: f"no route {request.url.path[:200]}", 405: "method not allowed"}.get(
            exc.status_code, str(exc.detail)
        )
        _audit(request)["error"] = type_
        return JSONResponse(P.error_body(msg, type_), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(P.error_body("invalid request", "invalid_request_error"), status_code=400)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error on %s", request.url.path)
        _audit(request)["error"] = "internal_error"
        return JSONResponse(P.error_body("internal server error", "server_error"), status_code=500)

    @app.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "alive"}

    @app.get("/health/ready")
    async def ready(request: Request) -> JSONResponse:
        authorize(request, None)
        st = state.engine.stats()
        body = {"status": st.state.value, "model": state.config.model.served_name, "backend": st.backend}
        if st.state is EngineState.READY:
            return JSONResponse(body)
        err = getattr(state.engine, "load_error", None)
        msg = f"not ready: {st.state.value}" + (f" ({err})" if err else "")
        return JSONResponse(
            {**P.error_body(msg, "server_error", code="not_ready"), **body},
            status_code=503,
            headers={"Retry-After": "5"},
        )

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        principal = authorize(request, KeyScope.INFERENCE)
        name = state.config.model.served_name
        return P.models_list([name] if principal.may_use(name) else [], state.created)

    @app.get("/v1/models/{model_id:path}")
    async def retrieve_model(request: Request, model_id: str) -> dict[str, Any]:
        principal = authorize(request, KeyScope.INFERENCE)
        name = state.config.model.served_name
        if model_id != name or not principal.may_use(name):  # a model the key may not use is not listed
            raise APIError(
                404,
                f"the model '{model_id[:200]}' does not exist on this server",
                param="model",
                code="model_not_found",
            )
        return P.model_card(name, state.created)

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        authorize(request, KeyScope.METRICS)
        body = state.metrics.render()
        if isinstance(state.engine, RelayEngine):
            body += await state.engine.metrics_text()
        return Response(body, media_type=CONTENT_TYPE)

    @app.get("/admin/status")
    async def admin_status(request: Request) -> dict[str, Any]:
        authorize(request, KeyScope.ADMIN)
        st = state.engine.stats()
        return {
            "version": _pkg_version,
            "model": state.config.model.served_name,
            "state": st.state.value,
            "backend": st.backend,
            "running": st.running,
            "waiting": st.waiting,
            "kv_cache_usage": st.kv_cache_usage,
            "load_plan": state.load_plan,
            "plan": state.config.plan,
            "limits": {
                "max_context": state.config.model.max_context,
                "max_running": state.config.engine.max_running,
                "max_queue": state.config.engine.max_queue,
            },
        }

    async def admit(request: Request, model_cls: type[M]) -> tuple[M, dict[str, Any], Lease]:
        """What every generation route does first: key, body, audit record, model allow-list, readiness,
        the key's concurrency ceiling."""
        principal = authorize(request, KeyScope.INFERENCE)
        body = await parse_body(request, model_cls)
        audit = _audit(request)
        audit["model"] = body.model[:256]
        audit["stream"] = body.stream
        check_model(state, principal, body.model)
        require_ready(state)
        return body, audit, acquire(state, principal)

    async def relay(request: Request, path: str) -> Response:
        """The same admission, then the request goes to the engine as sent and its answer comes back."""
        principal = authorize(request, KeyScope.INFERENCE)
        try:
            body = R.parse_relay_body(await request.body())
        except R.BadBody as exc:
            raise APIError(400, str(exc), param=exc.param, code=exc.code) from None
        audit = _audit(request)
        audit["model"] = body["model"][:256]
        audit["stream"] = bool(body.get("stream"))
        check_model(state, principal, body["model"])
        require_ready(state)
        keep = state.audit.config.log_content
        if keep:
            audit["prompt"] = R.prompt_for_audit(body)
        lease = acquire(state, principal)
        try:
            assert isinstance(state.engine, RelayEngine)
            resp, done = await state.engine.open(path, await request.body())
        except EngineUnavailable as exc:
            lease.release()
            raise APIError(
                503, str(exc), "server_error", code="engine_unavailable", headers={"Retry-After": "5"}
            ) from None
        except BaseException:
            lease.release()
            raise

        def finished() -> None:
            done()
            lease.release()

        return await R.relay_response(resp, finished, bool(body.get("stream")), audit, keep)

    async def answer(
        request: Request,
        body: P.ChatCompletionRequest | P.CompletionRequest,
        audit: dict[str, Any],
        ids: list[int],
        chat: bool,
        lease: Lease,
    ) -> Response:
        """What both generation routes do once the prompt is tokenized: submit, then stream or collect."""
        try:
            params = resolve_params(state, body, len(ids))
            handle = submit(state, ids, params, _rid(request))
        except BaseException:
            lease.release()
            raise
        created = P.now()
        # The completion id is the server's own: two clients sending the same X-Request-ID must not
        # receive the same id (the client's id is echoed in the header and audited, nothing more).
        cid = f"{'chatcmpl' if chat else 'cmpl'}-{secrets.token_hex(12)}"
        model = state.config.model.served_name
        if body.stream:
            extra: dict[str, Any] = {"system_fingerprint": fp, "include_usage": body.include_usage}
            build = P.chat_chunk if chat else P.completion_chunk

            def chunk(text: str | None, reason: str | None, usage: P.Usage | None) -> dict[str, Any]:
                if usage is not None:
                    return build(cid, model, created, None, usage=usage, **extra)
                content = ({"content": text} if text else {}) if chat else (text or "")
                return build(cid, model, created, content, reason, **extra)

            first = (
                P.chat_chunk(cid, model, created, {"role": "assistant", "content": ""}, **extra)
                if chat
                else None
            )
            return _event_stream(_stream(handle, chunk, first, body.include_usage, audit, lease))
        try:
            text, reason = await _collect(handle, request)
        finally:
            lease.release()
        _finish_audit(audit, handle, text, reason)
        respond = P.chat_response if chat else P.completion_response
        return JSONResponse(respond(cid, model, text, reason, _usage(handle), created, fp))

    relayed = isinstance(state.engine, RelayEngine)

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        if relayed:
            return await relay(request, "/v1/chat/completions")
        body, audit, lease = await admit(request, P.ChatCompletionRequest)
        try:
            messages = [
                {"role": "system" if m.role == "developer" else m.role, "content": m.text()}
                for m in body.messages
            ]
            size = sum(len(m["content"]) for m in messages)
            ids = await _tokenize(lambda: state.engine.encode_chat(messages), size)
        except BaseException:
            lease.release()
            raise
        if state.audit.config.log_content:
            audit["prompt"] = "\n".join(f"{m['role']}: {m['content']}" for m in messages)
        return await answer(request, body, audit, ids, chat=True, lease=lease)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        if relayed:
            return await relay(request, "/v1/completions")
        body, audit, lease = await admit(request, P.CompletionRequest)
        try:
            ids = await _completion_ids(body, audit)
        except BaseException:
            lease.release()
            raise
        return await answer(request, body, audit, ids, chat=False, lease=lease)

    async def _completion_ids(body: P.CompletionRequest, audit: dict[str, Any]) -> list[int]:
        prompt = body.prompt_text_or_ids()
        if isinstance(prompt, str):
            text_prompt = prompt
            ids = await _tokenize(lambda: state.engine.encode_text(text_prompt), len(text_prompt))
            if state.audit.config.log_content:
                audit["prompt"] = text_prompt
        else:
            vocab = state.engine.vocab_size
            bad = next((t for t in prompt if t < 0 or t >= vocab), None)
            if bad is not None:
                raise APIError(
                    400, f"prompt token id {bad} is outside the vocabulary (0..{vocab - 1})", param="prompt"
                )
            ids = prompt
            if state.audit.config.log_content:
                audit["prompt"] = f"<{len(ids)} token ids>"
        return ids

    return app


def wrap(app: FastAPI, state: DaemonState) -> ASGIApp:
    """The ASGI app uvicorn serves: the router inside the request-context middleware."""
    return RequestContext(app, state)
