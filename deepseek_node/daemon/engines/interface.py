"""What the gateway needs from an engine: one interface, two implementations.

* `engines.builtin.BatchingEngine`: this package's transformers engine. The gateway tokenizes, submits
  token ids and formats OpenAI responses itself (`TokenEngine`).
* `engines.vllm.VllmEngine`: a vLLM OpenAI server; the gateway relays requests and answers as they are
  (`RelayEngine`).

Both share the lifecycle (`Engine`): loading -> ready, draining on SIGTERM, stats for /metrics and
/health/ready. The exceptions map to HTTP answers in the gateway (QueueFull 429, NotReady/Draining 503).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

__all__ = [
    "Draining",
    "Engine",
    "EngineState",
    "EngineStats",
    "EngineUnavailable",
    "NotReady",
    "Observer",
    "QueueFull",
    "RelayEngine",
    "RequestHandle",
    "SamplingParams",
    "StreamEvent",
    "TokenEngine",
]


# ------------------------------------------------------------------------------------------ public types


class EngineState(StrEnum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


class QueueFull(Exception):
    """Admission refused: the running batch and the waiting queue are both full (HTTP 429)."""

    def __init__(self, retry_after_s: int) -> None:
        super().__init__("the server is at capacity: retry later")
        self.retry_after_s = retry_after_s


class EngineUnavailable(Exception):
    """A relayed engine did not take the request (connection refused or reset) (HTTP 503)."""


class NotReady(Exception):
    """The model is not loaded (yet, or any more) (HTTP 503)."""


class Draining(NotReady):
    """The daemon is shutting down and admits nothing new (HTTP 503)."""


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class StreamEvent:
    """One step of a request's output: a text delta, and on the last event the finish reason."""

    text: str
    finish_reason: str | None = None  # "stop" | "length" | "abort" | "error"
    error: str | None = None


@dataclass
class EngineStats:
    waiting: int
    running: int
    kv_cache_usage: float | None  # 0..1, None when the backend cannot tell
    state: EngineState
    backend: str | None


# ------------------------------------------------------------------------------------------- engine API


class RequestHandle(ABC):
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str | None

    @abstractmethod
    def __aiter__(self) -> AsyncIterator[StreamEvent]: ...

    @abstractmethod
    def cancel(self) -> None:
        """The client went away: free its slot; no further events."""


class Engine(ABC):
    """The lifecycle every engine has; `TokenEngine` or `RelayEngine` says how requests reach it."""

    served_name: str
    max_context: int
    load_error: str | None = None

    @property
    @abstractmethod
    def state(self) -> EngineState: ...

    @property
    def ready(self) -> bool:
        return self.state is EngineState.READY

    @abstractmethod
    async def start(self) -> None:
        """Begin loading; returns at once (readiness turns true when loading and warm-up succeeded)."""

    @abstractmethod
    def stats(self) -> EngineStats: ...

    @abstractmethod
    def begin_drain(self) -> None:
        """Stop admitting; what was admitted still runs to completion."""

    @abstractmethod
    async def wait_idle(self, timeout: float) -> bool:
        """Wait until nothing is queued or running; False if the timeout passed first."""

    @abstractmethod
    async def shutdown(self) -> None:
        """Stop the backend; anything still running is failed."""


class TokenEngine(Engine):
    """The gateway tokenizes, submits token ids and builds the OpenAI responses from text deltas."""

    vocab_size: int

    @abstractmethod
    def encode_chat(self, messages: list[dict[str, str]]) -> list[int]: ...

    @abstractmethod
    def encode_text(self, text: str) -> list[int]: ...

    @abstractmethod
    def submit(self, prompt_ids: list[int], params: SamplingParams, request_id: str) -> RequestHandle:
        """Admit a request or raise QueueFull / NotReady / Draining."""


class RelayEngine(Engine):
    """The engine speaks the OpenAI API itself: the gateway relays requests and answers unchanged."""

    @abstractmethod
    async def open(self, path: str, body: bytes) -> tuple[Any, Callable[[], object]]:
        """Send one request; the engine's streaming response and a `done()` to call once it is finished.
        Raises EngineUnavailable when the engine does not take it."""

    @abstractmethod
    async def metrics_text(self) -> bytes:
        """The engine's own Prometheus series, to serve beside the gateway's."""


class Observer:
    """Hooks for metrics; the default does nothing (metrics.py supplies the Prometheus one)."""

    def request_finished(self, handle: Any) -> None:
        pass

    def tokens(self, handle: Any, count: int, prev: float | None, now: float) -> None:
        """`count` new tokens at `now`; `prev` is when the previous ones came (None for the first)."""
