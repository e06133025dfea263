"""The vLLM engine behind the gateway: a vLLM OpenAI server on loopback, reached with an internal key.

The gateway keeps what vLLM does not do (TLS, hashed scoped keys, audit, request ids, admission); vLLM
does the serving (paged KV, chunked prefill, prefix caching, tensor/pipeline/expert parallelism, DeepSeek's
fp8 kernels and MLA). Requests are relayed as the client sent them and answers come back unchanged, SSE
streams included; the only header the engine sees from the outside is none: it gets a fresh request id
of the gateway's own (vLLM keys its sequences by request id, so a client's X-Request-ID must never reach
it) and the internal credential.

Readiness follows vLLM's `/health`: loading until it first answers, not ready while it does not, and in
the managed mode an engine process that exits makes the daemon exit 1 for systemd to restart the pair.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from deepseek_node.daemon.config import DaemonConfig, VllmConfig
from deepseek_node.daemon.engines.interface import EngineState, EngineStats, EngineUnavailable, RelayEngine
from deepseek_node.daemon.engines.vllm import group as serving_group
from deepseek_node.daemon.engines.vllm.process import VllmProcess, free_loopback_port

__all__ = ["EngineUnavailable", "VllmEngine", "engine_series"]

log = logging.getLogger("deepseek_node.engine.vllm")

# Failures before any response byte: the request was not processed, so sending it once more is safe.
_NOT_DELIVERED = (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError)


def engine_series(exposition: bytes) -> bytes:
    """Only the `vllm:` families of vLLM's /metrics, unrenamed, so existing vLLM dashboards and alerts
    work on the gateway's /metrics; vLLM's process_* and python_* series would collide with the gateway's."""
    keep = []
    for line in exposition.splitlines():
        if line.startswith(b"vllm:") or line.startswith((b"# HELP vllm:", b"# TYPE vllm:")):
            keep.append(line)
    return b"\n".join(keep) + b"\n" if keep else b""


def _read_key(path: Path) -> str:
    """The key alone, or the `VLLM_API_KEY=...` line of the environment file the engine unit also reads
    (one file, so the two can never disagree)."""
    try:
        key = path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise RuntimeError(f"cannot read the engine's key file {path}: {exc.strerror or exc}") from None
    key = key.removeprefix("VLLM_API_KEY=").strip().strip('"')
    if len(key) < 16:
        raise RuntimeError(f"the engine's key file {path} holds no key of at least 16 characters")
    return key


class VllmEngine(RelayEngine):
    def __init__(self, config: DaemonConfig, on_fatal: Callable[[str], None] | None = None) -> None:
        assert config.vllm is not None
        self.cfg: VllmConfig = config.vllm
        self.group = config.group
        self.missing_workers: list[tuple[str, str]] = []
        self.served_name = config.model.served_name
        self.max_context = config.model.max_context
        self.on_fatal = on_fatal
        self.load_error: str | None = None
        self.in_flight = 0
        self._state = EngineState.LOADING
        self._proc: VllmProcess | None = None
        self._base_url = self.cfg.url or ""
        self._key = ""
        self._client: httpx.AsyncClient | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._kv_usage: float | None = None

    # -- lifecycle

    @property
    def state(self) -> EngineState:
        return self._state

    @property
    def ready(self) -> bool:
        return self._state is EngineState.READY

    async def start(self) -> None:
        if self.cfg.managed:
            assert self.cfg.python is not None
            port = free_loopback_port()
            self._key = secrets.token_urlsafe(32)
            self._base_url = f"http://127.0.0.1:{port}"
            self._proc = VllmProcess(self.cfg.python, self.cfg.args, self.cfg.env, port, self._key)
            try:
                self._proc.start()
            except OSError as exc:
                self._fail(f"cannot start vLLM ({self.cfg.python}): {exc.strerror or exc}")
                return
        else:
            assert self.cfg.api_key_file is not None
            try:
                self._key = _read_key(self.cfg.api_key_file)
            except RuntimeError as exc:
                self._fail(str(exc))
                return
        # No pool limit: admission bounds what is in flight; a pool limit would queue invisibly. Idle
        # connections expire before vLLM's own 5 s keep-alive closes them, so a request is not sent on a
        # socket the engine is closing; the pool is kept small because it is scanned on every request.
        self._client = httpx.AsyncClient(
            base_url=self._base_url,
            headers={"Authorization": f"Bearer {self._key}"},
            timeout=httpx.Timeout(None, connect=5.0),
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=64, keepalive_expiry=2.0),
        )
        self._watcher = asyncio.create_task(self._watch())

    def _fail(self, reason: str) -> None:
        self.load_error = reason
        self._state = EngineState.FAILED
        log.error("%s", reason)
        if self.on_fatal is not None:
            self.on_fatal(reason)

    async def _healthy(self) -> bool:
        assert self._client is not None
        try:
            r = await self._client.get("/health", timeout=5.0)
        except httpx.HTTPError:
            return False
        return r.status_code == 200

    def _group_missing(self) -> list[tuple[str, str]]:
        """Workers of this head's serving group that are not connected to it (none without a group)."""
        if self.group is None:
            return []
        peers = serving_group.connected_peers(serving_group.read_sockets())
        return serving_group.missing_workers(((w.host, w.address) for w in self.group.workers), peers)

    async def _watch(self) -> None:
        t0 = time.monotonic()
        while self._state not in (EngineState.STOPPED,):
            if self._proc is not None and self._proc.exit_code() is not None:
                if self._state not in (EngineState.DRAINING,):
                    self._fail(f"vLLM exited with status {self._proc.exit_code()}: {self._proc.failure()}")
                return
            ok = await self._healthy()
            missing = self._group_missing()
            self.missing_workers = missing
            if self._state is EngineState.DRAINING:
                pass
            elif ok and missing and self.group is not None:
                lost = self._state is EngineState.READY
                self._state = EngineState.FAILED if lost else EngineState.LOADING
                self.load_error = serving_group.describe_missing(self.group.name, missing)
                if lost:
                    log.error("%s", self.load_error)
                    if self.group.restart_engine_on_loss:
                        unit = self.group.engine_unit
                        pids = await asyncio.to_thread(serving_group.stop_unit_processes, unit)
                        if pids:
                            log.warning(
                                "stopped the head's engine (%s, pids %s): it restarts and waits for the "
                                "group to form again",
                                unit,
                                " ".join(map(str, pids)),
                            )
                    t0 = time.monotonic()
            elif ok and self._state is not EngineState.READY:
                log.info("vLLM is ready after %.1fs", time.monotonic() - t0)
                self._state, self.load_error = EngineState.READY, None
            elif not ok and self._state is EngineState.READY:
                self._state = EngineState.FAILED
                self.load_error = "the vLLM engine stopped answering its health check"
                log.error("%s", self.load_error)
            elif (
                not ok
                and self._state is EngineState.LOADING
                and time.monotonic() - t0 > self.cfg.startup_timeout_s
            ):
                self._fail(f"vLLM did not become ready within {self.cfg.startup_timeout_s:.0f}s")
                return
            await asyncio.sleep(self.cfg.health_interval_s if self.ready else 0.5)

    def begin_drain(self) -> None:
        if self._state is not EngineState.STOPPED:
            self._state = EngineState.DRAINING

    async def wait_idle(self, timeout: float) -> bool:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._idle.wait(), timeout)
        return self._idle.is_set()

    async def shutdown(self) -> None:
        self._state = EngineState.STOPPED
        if self._watcher is not None:
            self._watcher.cancel()
        if self._client is not None:
            await self._client.aclose()
        if self._proc is not None:
            await asyncio.to_thread(self._proc.stop)

    # -- requests

    def stats(self) -> EngineStats:
        return EngineStats(
            waiting=0,
            running=self.in_flight,
            kv_cache_usage=self._kv_usage,
            state=self._state,
            backend="vllm",
        )

    def _enter(self) -> None:
        self.in_flight += 1
        self._idle.clear()

    def _exit(self) -> None:
        self.in_flight -= 1
        if self.in_flight <= 0:
            self._idle.set()

    async def open(self, path: str, body: bytes) -> tuple[httpx.Response, Callable[[], object]]:
        """Send one OpenAI request to vLLM; the streaming response and a `done()` to call when finished."""
        assert self._client is not None
        internal_id = secrets.token_hex(16)
        req = self._client.build_request(
            "POST",
            path,
            content=body,
            headers={"Content-Type": "application/json", "X-Request-Id": internal_id},
        )
        self._enter()
        try:
            try:
                resp = await self._client.send(req, stream=True)
            except _NOT_DELIVERED:
                # A pooled connection the engine closed at that moment: the request never reached it.
                resp = await self._client.send(req, stream=True)
        except httpx.HTTPError as exc:
            self._exit()
            raise EngineUnavailable(f"the engine did not take the request: {type(exc).__name__}") from None
        closed = [False]

        def done() -> None:
            if not closed[0]:
                closed[0] = True
                self._exit()

        return resp, done

    async def metrics_text(self) -> bytes:
        if self._client is None or self._state in (EngineState.LOADING, EngineState.STOPPED):
            return b""
        try:
            r = await self._client.get("/metrics", timeout=5.0)
        except httpx.HTTPError:
            return b""
        if r.status_code != 200:
            return b""
        series = engine_series(r.content)
        for line in series.splitlines():
            if line.startswith(b"vllm:kv_cache_usage_perc") or line.startswith(b"vllm:gpu_cache_usage_perc"):
                with contextlib.suppress(ValueError, IndexError):
                    self._kv_usage = float(line.rsplit(b" ", 1)[1])
        return series
