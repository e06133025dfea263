"""The engine seam: what the HTTP layer needs from an inference engine, and the one this daemon runs.

`Engine` is the abstract interface (tests drive the API with a fake one). `BatchingEngine` is the real one:
it owns admission (a bounded queue in front of at most `max_running` decoding sequences), turns token ids
into text deltas, applies stop sequences and max_tokens, counts usage, and records metrics; the token-level
work is done by a `Backend` running in its own thread:

* `engine_cb.ContinuousBatchingBackend` drives transformers' `ContinuousBatchingManager` (paged KV cache,
  sequences join and leave the running batch token by token);
* `engine_step.StepBackend` is this package's own batched decode loop over the model's regular KV cache,
  used for architectures the paged cache cannot hold (DeepSeek-V2/V3's MLA caches compressed latents).

Backends report tokens from their thread; everything else runs on the event loop, so per-request state
needs no locks.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from deepseek_node.daemon.engines.builtin.detok import IncrementalDetokenizer, StopMatcher
from deepseek_node.daemon.engines.interface import (
    Draining,
    EngineState,
    EngineStats,
    NotReady,
    Observer,
    QueueFull,
    RequestHandle,
    SamplingParams,
    StreamEvent,
    TokenEngine,
)

__all__ = [
    "Backend",
    "BackendSequence",
    "BatchingEngine",
    "Sink",
    "TokenUpdate",
]

log = logging.getLogger("deepseek_node.daemon.engines.builtin.engine")


# --------------------------------------------------------------------------------------- backend contract


@dataclass
class BackendSequence:
    """What a backend needs to generate one sequence."""

    seq_id: str
    prompt_ids: list[int]
    max_new_tokens: int
    eos_ids: tuple[int, ...]
    temperature: float
    top_p: float
    seed: int  # always set: requests without one get a random seed, so sampling is one code path


@dataclass
class TokenUpdate:
    """New tokens for a sequence, reported by a backend (from its own thread)."""

    seq_id: str
    token_ids: list[int]
    finished: bool = False
    error: str | None = None


Sink = Callable[[list[TokenUpdate]], None]


class Backend(ABC):
    """Token-level generation in a background thread. `add`/`cancel` are called from the event loop."""

    name: str = "backend"

    @abstractmethod
    def start(self, sink: Sink) -> None: ...

    @abstractmethod
    def add(self, seq: BackendSequence) -> None: ...

    @abstractmethod
    def cancel(self, seq_id: str) -> None: ...

    @abstractmethod
    def stop(self, timeout: float = 10.0) -> None: ...

    def kv_cache_usage(self) -> float | None:
        return None

    def fatal_error(self) -> str | None:
        """Why the backend can no longer generate, or None while it is healthy."""
        return None


# --------------------------------------------------------------------------------------- batching engine


@dataclass(eq=False)
class _Handle(RequestHandle):
    """One request's state. Tokens arrive from the backend as ids; text is made when the consumer reads.

    Detokenizing at read time coalesces: when the client (or the event loop) falls behind the engine, the
    tokens of several steps become one text delta and one SSE event instead of one each, so per-token
    cost on the event loop stays flat under load. Requests with stop sequences are detokenized on arrival
    instead, because the stop must be found (and the sequence cancelled) as soon as it is generated.
    """

    engine: BatchingEngine
    seq_id: str  # the engine's own key for this sequence; never taken from the client
    request_id: str  # the client-visible id: echoed and audited only
    prompt_ids: list[int]
    params: SamplingParams
    arrival: float
    detok: IncrementalDetokenizer
    stopper: StopMatcher
    completion_tokens: int = 0
    finish_reason: str | None = None
    error: str | None = None
    first_token_at: float | None = None
    last_token_at: float | None = None
    finished_at: float | None = None
    started_at: float | None = None
    cancelled: bool = False
    pending_ids: list[int] = field(default_factory=list)  # not yet detokenized (no stop sequences)
    pending_text: str = ""  # detokenized on arrival (stop sequences)
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    consumed: bool = False

    @property
    def prompt_tokens(self) -> int:  # type: ignore[override]
        return len(self.prompt_ids)

    @property
    def eager(self) -> bool:
        return bool(self.params.stop)

    @property
    def done(self) -> bool:
        return self.finish_reason is not None

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[StreamEvent]:
        while not self.consumed:
            if not self.pending_ids and not self.pending_text and self.finish_reason is None:
                self.wake.clear()
                await self.wake.wait()
            text, self.pending_text = self.pending_text, ""
            if self.pending_ids:
                ids, self.pending_ids = self.pending_ids, []
                text += self.detok.push(ids)
            if self.finish_reason is None:
                if text:
                    yield StreamEvent(text)
                continue
            self.consumed = True
            if self.error is None and not self.eager:
                text += self.detok.flush()  # the held-back bytes of a last, incomplete character
            yield StreamEvent(text, finish_reason=self.finish_reason, error=self.error)

    def cancel(self) -> None:
        self.engine._cancel(self)


class BatchingEngine(TokenEngine):
    """Admission, detokenization, stop sequences and accounting over a token-level `Backend`.

    `loader` runs in a worker thread and returns (backend, tokenizer, info); keeping it a callable lets the
    same engine run a real model (see `build_engine`) or a test backend.
    """

    def __init__(
        self,
        *,
        served_name: str,
        max_context: int,
        max_running: int,
        max_queue: int,
        retry_after_s: int,
        loader: Callable[[], tuple[Backend, Any, dict[str, Any]]],
        warmup: bool = True,
        seed: int | None = None,
        observer: Observer | None = None,
        on_fatal: Callable[[str], None] | None = None,
        abort_load: Callable[[], None] | None = None,
    ) -> None:
        self.served_name = served_name
        self._abort_load = abort_load
        self.max_context = max_context
        self.vocab_size = 0
        self.max_running = max_running
        self.max_queue = max_queue
        self.retry_after_s = retry_after_s
        self.observer = observer or Observer()
        self.on_fatal = on_fatal
        self.info: dict[str, Any] = {}
        self.load_error: str | None = None
        self._loader = loader
        self._warmup = warmup
        self._seed = seed
        self._seed_counter = 0
        self._seq_counter = 0
        self._state = EngineState.LOADING
        self._backend: Backend | None = None
        self._tokenizer: Any = None
        self._eos_ids: tuple[int, ...] = ()
        self._waiting: deque[_Handle] = deque()
        self._running: dict[str, _Handle] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._idle = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()

    # -- lifecycle

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def backend_name(self) -> str | None:
        return self._backend.name if self._backend else None

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._idle.set()
        task = asyncio.create_task(self._load(), name="engine-load")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _load(self) -> None:
        t0 = time.monotonic()
        try:
            backend, tokenizer, info = await asyncio.to_thread(self._loader)
            if self._state is EngineState.STOPPED:  # shut down while the model was loading
                await asyncio.to_thread(backend.stop)
                return
            self._tokenizer = tokenizer
            self.vocab_size = len(tokenizer)
            self._eos_ids = tuple(info.get("eos_ids", ()))
            self.info = info
            self._backend = backend
            backend.start(self._sink)
            if self._warmup:
                await self._warm_up()
        except Exception as exc:  # any load failure must surface as a clear message, not a traceback
            if self._state in (EngineState.DRAINING, EngineState.STOPPED):
                return  # shut down while loading: the load was aborted on purpose
            self.load_error = f"{type(exc).__name__}: {exc}"
            self._state = EngineState.FAILED
            log.error("model load failed: %s", self.load_error, exc_info=log.isEnabledFor(logging.DEBUG))
            if self.on_fatal:
                self.on_fatal(f"model load failed: {self.load_error}")
            return
        if self._state is EngineState.LOADING:
            self._state = EngineState.READY
        log.info(
            "engine ready: backend=%s load+warmup=%.1fs",
            self.backend_name,
            time.monotonic() - t0,
        )
        watchdog = asyncio.create_task(self._watch(), name="engine-watchdog")
        self._tasks.add(watchdog)
        watchdog.add_done_callback(self._tasks.discard)

    async def _warm_up(self) -> None:
        """One real generation through the whole path, so readiness means the model answers."""
        ids = self.encode_chat([{"role": "user", "content": "Hello"}])
        handle = self._admit(ids, SamplingParams(max_tokens=4, temperature=0.0), "warmup", force=True)
        async for ev in handle:
            if ev.error:
                raise RuntimeError(f"warm-up generation failed: {ev.error}")
        if handle.completion_tokens < 1:
            raise RuntimeError("warm-up generation produced no token")

    async def _watch(self) -> None:
        # A dead backend thread cannot recover in-process: fail readiness and let systemd restart us.
        while self._state in (EngineState.READY, EngineState.DRAINING):
            await asyncio.sleep(0.5)
            err = self._backend.fatal_error() if self._backend else None
            if err:
                self._state = EngineState.FAILED
                self.load_error = err
                log.error("engine backend died: %s", err)
                for h in list(self._running.values()) + list(self._waiting):
                    self._finish(h, "error", error="the inference engine failed")
                if self.on_fatal:
                    self.on_fatal(f"engine backend died: {err}")
                return

    def begin_drain(self) -> None:
        if self._state in (EngineState.READY, EngineState.LOADING):
            self._state = EngineState.DRAINING

    async def wait_idle(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def shutdown(self) -> None:
        loading = self._backend is None and self._state is not EngineState.FAILED
        if self._state is not EngineState.FAILED:
            self._state = EngineState.STOPPED
        if loading and self._abort_load is not None:
            self._abort_load()  # a model load can take minutes; systemd's stop timeout is shorter
        for h in list(self._waiting) + list(self._running.values()):
            self._finish(h, "error", error="the server is shutting down")
        if self._backend is not None:
            await asyncio.to_thread(self._backend.stop)
        for t in list(self._tasks):
            t.cancel()

    # -- tokenization

    def _need_tokenizer(self) -> Any:
        if self._tokenizer is None:
            raise NotReady("the model is still loading")
        return self._tokenizer

    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]:
        tok = self._need_tokenizer()
        if getattr(tok, "chat_template", None):
            out = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
            ids = out["input_ids"] if isinstance(out, dict) or hasattr(out, "keys") else out
            return list(ids)
        # No template: a plain transcript, so base models still get something sensible.
        text = "".join(f"{m['role']}: {m['content']}\n" for m in messages) + "assistant:"
        return self.encode_text(text)

    def encode_text(self, text: str) -> list[int]:
        return list(self._need_tokenizer().encode(text, add_special_tokens=True))

    # -- admission

    def submit(self, prompt_ids: list[int], params: SamplingParams, request_id: str) -> RequestHandle:
        if self._state is EngineState.DRAINING or self._state is EngineState.STOPPED:
            raise Draining("the server is shutting down")
        if self._state is not EngineState.READY:
            raise NotReady(
                "the model is not ready" if self._state is EngineState.LOADING else "the engine failed"
            )
        return self._admit(prompt_ids, params, request_id)

    def _admit(
        self, prompt_ids: list[int], params: SamplingParams, request_id: str, force: bool = False
    ) -> _Handle:
        if not force and len(self._running) >= self.max_running and len(self._waiting) >= self.max_queue:
            raise QueueFull(self.retry_after_s)
        self._seq_counter += 1
        handle = _Handle(
            engine=self,
            seq_id=f"seq-{self._seq_counter}",
            request_id=request_id,
            prompt_ids=list(prompt_ids),
            params=params,
            arrival=time.monotonic(),
            detok=IncrementalDetokenizer(self._tokenizer, prompt_ids[-6:]),
            stopper=StopMatcher(list(params.stop)),
        )
        self._idle.clear()
        if len(self._running) < self.max_running and not self._waiting:
            self._start(handle)
        else:
            self._waiting.append(handle)
        return handle

    def _next_seed(self) -> int:
        if self._seed is None:
            return secrets.randbits(63)
        self._seed_counter += 1
        return (self._seed << 20) ^ self._seed_counter

    def _start(self, h: _Handle) -> None:
        assert self._backend is not None
        h.started_at = time.monotonic()
        self._running[h.seq_id] = h
        p = h.params
        self._backend.add(
            BackendSequence(
                seq_id=h.seq_id,
                prompt_ids=h.prompt_ids,
                max_new_tokens=p.max_tokens,
                eos_ids=self._eos_ids,
                temperature=p.temperature,
                top_p=p.top_p,
                seed=p.seed if p.seed is not None else self._next_seed(),
            )
        )

    def _release(self, h: _Handle) -> None:
        """Free h's slot and start waiting requests in its place."""
        if self._running.pop(h.seq_id, None) is None:
            with contextlib.suppress(ValueError):
                self._waiting.remove(h)
        while self._waiting and len(self._running) < self.max_running:
            self._start(self._waiting.popleft())
        if not self._running and not self._waiting:
            self._idle.set()

    def _cancel(self, h: _Handle) -> None:
        if h.done:
            return
        h.cancelled = True
        was_running = h.seq_id in self._running
        self._finish(h, "abort")
        if was_running and self._backend is not None:
            self._backend.cancel(h.seq_id)

    def _finish(self, h: _Handle, reason: str, error: str | None = None) -> None:
        if h.done:
            return
        h.finish_reason = reason
        h.error = error
        h.finished_at = time.monotonic()
        if error is None and h.eager:
            h.pending_text += h.stopper.finish()
        h.wake.set()
        self._release(h)
        with contextlib.suppress(Exception):  # metrics must never break serving
            self.observer.request_finished(h)

    # -- token delivery (backend thread -> event loop)

    def _sink(self, updates: list[TokenUpdate]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        with contextlib.suppress(RuntimeError):  # loop closed during shutdown
            loop.call_soon_threadsafe(self._deliver, updates)

    def _deliver(self, updates: list[TokenUpdate]) -> None:
        now = time.monotonic()
        for up in updates:
            h = self._running.get(up.seq_id)
            if h is None or h.done:
                continue  # cancelled or already finished: late tokens are dropped
            if up.error is not None:
                self._finish(h, "error", error=up.error)
                continue
            reason = self._consume(h, up.token_ids, now)
            if reason is None and up.finished:
                reason = "length" if h.completion_tokens >= h.params.max_tokens else "stop"
            if reason is not None and h.eager and not h.stopper.stopped:
                h.pending_text += h.stopper.feed(h.detok.flush())  # natural end: release held-back bytes
            if reason is not None:
                if not up.finished and self._backend is not None:
                    self._backend.cancel(h.seq_id)  # stop sequence or limit hit before the backend knew
                self._finish(h, reason)
            else:
                h.wake.set()

    def _consume(self, h: _Handle, token_ids: list[int], now: float) -> str | None:
        """Account new tokens; the finish reason if generation must end with them."""
        reason = None
        take = token_ids
        # Every token the model produced counts, EOS and the one completing a stop sequence included (as
        # vLLM counts), so usage matches the compute spent; nothing after the end is counted.
        room = h.params.max_tokens - h.completion_tokens
        if len(take) >= room:
            take, reason = take[:room], "length"
        eos = self._eos_ids
        for i, tid in enumerate(take):
            if tid in eos:
                take, reason = take[: i + 1], "stop"
                break
        visible = take[:-1] if reason == "stop" else take
        if h.eager:
            text = ""
            for i, tid in enumerate(visible):
                text += h.stopper.feed(h.detok.push([tid]))
                if h.stopper.stopped:
                    take, reason = take[: i + 1], "stop"
                    break
            h.pending_text += text
        else:
            h.pending_ids.extend(visible)
        if take:
            prev = h.last_token_at
            if h.first_token_at is None:
                h.first_token_at = now
            h.completion_tokens += len(take)
            h.last_token_at = now
            with contextlib.suppress(Exception):
                self.observer.tokens(h, len(take), prev, now)
        return reason

    # -- introspection

    def stats(self) -> EngineStats:
        usage = None
        if self._backend is not None:
            with contextlib.suppress(Exception):
                usage = self._backend.kv_cache_usage()
        return EngineStats(
            waiting=len(self._waiting),
            running=len(self._running),
            kv_cache_usage=usage,
            state=self._state,
            backend=self.backend_name,
        )
