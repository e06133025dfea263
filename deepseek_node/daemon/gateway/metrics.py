"""Prometheus metrics, named like vLLM's (`vllm:x` -> `deepseek_node:x`) so existing dashboards map over.

Each app gets its own registry (tests run several daemons in one process). Gauges that mirror engine state
are read at scrape time through a collector rather than updated on every change, and GPU telemetry comes
from NVML at scrape time; without a GPU (or NVML) those series are absent, never zero-filled.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from deepseek_node.daemon.engines.interface import EngineStats, Observer

__all__ = ["CONTENT_TYPE", "Metrics", "NvmlCollector", "certificate_not_after"]

log = logging.getLogger("deepseek_node.daemon.gateway.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
P = "deepseek_node:"

# Buckets from vLLM's defaults: TTFT and latencies span milliseconds (tiny prompts) to minutes.
_TTFT = (
    0.001,
    0.005,
    0.01,
    0.02,
    0.04,
    0.06,
    0.08,
    0.1,
    0.25,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    7.5,
    10.0,
    20.0,
    40.0,
    80.0,
)
_ITL = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.4,
    0.5,
    0.75,
    1.0,
    2.5,
    5.0,
    10.0,
)
_E2E = (
    0.01,
    0.05,
    0.1,
    0.3,
    0.5,
    0.8,
    1.0,
    2.5,
    5.0,
    10.0,
    15.0,
    20.0,
    30.0,
    40.0,
    50.0,
    60.0,
    120.0,
    240.0,
    480.0,
)
_TOKENS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768, 65536, 131072)


class _EngineCollector(Collector):
    def __init__(self, stats: Callable[[], EngineStats | None], model: str) -> None:
        self._stats = stats
        self._model = model

    def collect(self) -> Iterator[GaugeMetricFamily]:
        s = self._stats()
        if s is None:
            return
        labels = ["model_name"]
        g = GaugeMetricFamily(P + "num_requests_running", "Requests decoding in the batch.", labels=labels)
        g.add_metric([self._model], s.running)
        yield g
        g = GaugeMetricFamily(P + "num_requests_waiting", "Requests admitted and waiting.", labels=labels)
        g.add_metric([self._model], s.waiting)
        yield g
        if s.kv_cache_usage is not None:
            g = GaugeMetricFamily(P + "kv_cache_usage_perc", "KV-cache use, 0..1.", labels=labels)
            g.add_metric([self._model], s.kv_cache_usage)
            yield g
        g = GaugeMetricFamily(P + "engine_ready", "1 when the model is loaded and warm.", labels=labels)
        g.add_metric([self._model], 1.0 if s.state.value == "ready" else 0.0)
        yield g


class _GroupCollector(Collector):
    """The serving group this head drives: one series per worker, 1 while it is part of the engine."""

    def __init__(self, group: str, workers: list[str], missing: Callable[[], list[str]]) -> None:
        self._group, self._workers, self._missing = group, workers, missing

    def collect(self) -> Iterator[GaugeMetricFamily]:
        down = set(self._missing())
        g = GaugeMetricFamily(
            P + "serving_group_worker_connected",
            "1 while the worker server is connected to this head's engine.",
            labels=["group", "worker"],
        )
        for w in self._workers:
            g.add_metric([self._group, w], 0.0 if w in down else 1.0)
        yield g
        g = GaugeMetricFamily(
            P + "serving_group_info", "The serving group this node is the head of.", labels=["group", "role"]
        )
        g.add_metric([self._group, "head"], 1.0)
        yield g


def certificate_not_after(path: Path) -> float | None:
    """notAfter of the PEM certificate at `path` as a Unix time, or None when it cannot be read."""
    try:
        # The stdlib's own decoder (the daemon has no X.509 library): same fields as getpeercert().
        decoded = ssl._ssl._test_decode_cert(str(path))  # type: ignore[attr-defined]
        return float(ssl.cert_time_to_seconds(decoded["notAfter"]))
    except Exception:
        log.warning("cannot read the expiry of %s: tls_certificate_expiry is not exported", path)
        return None


class _CertificateCollector(Collector):
    def __init__(self, not_after: Callable[[], float | None]) -> None:
        self._not_after = not_after

    def collect(self) -> Iterator[GaugeMetricFamily]:
        value = self._not_after()
        if value is None:  # plain HTTP, or unreadable: absent rather than a 1970 expiry that would alert
            return
        yield GaugeMetricFamily(
            P + "tls_certificate_expiry_timestamp_seconds",
            "notAfter of the served TLS certificate (Unix time).",
            value=value,
        )


class NvmlCollector(Collector):
    """GPU utilisation, memory, temperature, power, ECC and Xid events via NVML (nvidia-ml-py); nothing
    when absent. Xid events are queued by the driver in an event set and drained at scrape time."""

    def __init__(self) -> None:
        self._nvml: Any = None
        self._events: Any = None
        self._xid_lock = threading.Lock()
        self._xids: dict[str, tuple[str, int, int]] = {}  # gpu index -> (name, count, last xid)
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception:  # no driver / no GPU (NVMLError_LibraryNotFound) / no package
            log.info("NVML not available: GPU metrics are not exported")
            return
        self._watch_xids()

    def _watch_xids(self) -> None:
        nv = self._nvml
        try:
            events = nv.nvmlEventSetCreate()
            for i in range(nv.nvmlDeviceGetCount()):
                h = nv.nvmlDeviceGetHandleByIndex(i)
                name = nv.nvmlDeviceGetName(h)
                name = name.decode() if isinstance(name, bytes) else str(name)
                try:
                    nv.nvmlDeviceRegisterEvents(h, nv.nvmlEventTypeXidCriticalError, events)
                except Exception:  # not supported on this board: no Xid series for it, never a fake 0
                    log.info("NVML cannot report Xid events for GPU %d", i)
                    continue
                self._xids[str(i)] = (name, 0, 0)
            self._events = events
        except Exception:
            log.info("NVML event sets unavailable: Xid events are not exported", exc_info=True)

    def _drain_xids(self) -> None:
        nv = self._nvml
        wait = getattr(nv, "nvmlEventSetWait_v2", None) or nv.nvmlEventSetWait
        while True:
            try:
                event = wait(self._events, 0)
            except Exception:  # NVML_ERROR_TIMEOUT: nothing pending
                return
            try:
                gpu = str(nv.nvmlDeviceGetIndex(event.device))
            except Exception:
                continue
            name, count, _ = self._xids.get(gpu, ("", 0, 0))
            self._xids[gpu] = (name, count + 1, int(event.eventData))

    @property
    def available(self) -> bool:
        return self._nvml is not None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        nv = self._nvml
        if nv is None:
            return
        lab = ["gpu", "name"]
        util = GaugeMetricFamily(P + "gpu_utilization_perc", "GPU utilisation, 0..1.", labels=lab)
        used = GaugeMetricFamily(P + "gpu_memory_used_bytes", "GPU memory in use.", labels=lab)
        total = GaugeMetricFamily(P + "gpu_memory_total_bytes", "GPU memory in total.", labels=lab)
        temp = GaugeMetricFamily(P + "gpu_temperature_celsius", "GPU core temperature.", labels=lab)
        power = GaugeMetricFamily(P + "gpu_power_watts", "GPU power draw.", labels=lab)
        ecc = CounterMetricFamily(
            P + "gpu_ecc_errors_uncorrected",
            "Uncorrected ECC errors since the driver loaded (volatile).",
            labels=lab,
        )
        try:
            count = nv.nvmlDeviceGetCount()
        except Exception:
            return
        for i in range(count):
            try:
                h = nv.nvmlDeviceGetHandleByIndex(i)
                name = nv.nvmlDeviceGetName(h)
                name = name.decode() if isinstance(name, bytes) else str(name)
                lv = [str(i), name]
                util.add_metric(lv, nv.nvmlDeviceGetUtilizationRates(h).gpu / 100.0)
                mem = nv.nvmlDeviceGetMemoryInfo(h)
                used.add_metric(lv, float(mem.used))
                total.add_metric(lv, float(mem.total))
                temp.add_metric(lv, float(nv.nvmlDeviceGetTemperature(h, nv.NVML_TEMPERATURE_GPU)))
                with contextlib.suppress(Exception):  # some boards do not report power
                    power.add_metric(lv, nv.nvmlDeviceGetPowerUsage(h) / 1000.0)
                with contextlib.suppress(Exception):  # boards without ECC, or with ECC off
                    ecc.add_metric(
                        lv,
                        float(
                            nv.nvmlDeviceGetTotalEccErrors(
                                h, nv.NVML_MEMORY_ERROR_TYPE_UNCORRECTED, nv.NVML_VOLATILE_ECC
                            )
                        ),
                    )
            except Exception:
                log.debug("NVML query failed for GPU %d", i, exc_info=True)
        yield from (util, used, total, temp, power, ecc)
        if self._events is None:
            return
        xid = CounterMetricFamily(
            P + "gpu_xid_errors", "Critical Xid events since the daemon started.", labels=lab
        )
        last = GaugeMetricFamily(P + "gpu_last_xid", "Code of the last critical Xid event.", labels=lab)
        with self._xid_lock:
            self._drain_xids()
            for gpu, (name, count, code) in sorted(self._xids.items()):
                xid.add_metric([gpu, name], float(count))
                if count:
                    last.add_metric([gpu, name], float(code))
        yield from (xid, last)


class Metrics(Observer):
    def __init__(self, model_name: str, gpu: bool = True, tls_cert: Path | None = None) -> None:
        self.model = model_name
        self.registry = CollectorRegistry(auto_describe=True)
        self._stats: Callable[[], EngineStats | None] = lambda: None
        m = ["model_name"]
        r = self.registry
        self.http_requests = Counter(
            P + "http_requests",
            "HTTP requests by route and status.",
            ["route", "method", "status"],
            registry=r,
        )
        self.request_success = Counter(
            P + "request_success",
            "Finished generation requests by reason.",
            [*m, "finished_reason"],
            registry=r,
        )
        self.prompt_tokens = Counter(P + "prompt_tokens", "Prompt tokens processed.", m, registry=r)
        self.generation_tokens = Counter(P + "generation_tokens", "Tokens generated.", m, registry=r)
        self.ttft = Histogram(
            P + "time_to_first_token_seconds", "Arrival to first token.", m, buckets=_TTFT, registry=r
        )
        self.itl = Histogram(
            P + "inter_token_latency_seconds", "Time between output tokens.", m, buckets=_ITL, registry=r
        )
        self.e2e = Histogram(
            P + "e2e_request_latency_seconds", "Arrival to last token.", m, buckets=_E2E, registry=r
        )
        self.queue_time = Histogram(
            P + "request_queue_time_seconds", "Time waiting for a batch slot.", m, buckets=_E2E, registry=r
        )
        self.prompt_hist = Histogram(
            P + "request_prompt_tokens", "Prompt length per request.", m, buckets=_TOKENS, registry=r
        )
        self.gen_hist = Histogram(
            P + "request_generation_tokens", "Output length per request.", m, buckets=_TOKENS, registry=r
        )
        self.rejected = Counter(
            P + "requests_rejected", "Requests refused before generation, by reason.", ["reason"], registry=r
        )
        r.register(_EngineCollector(lambda: self._stats(), model_name))
        self._cert_not_after: float | None = None
        r.register(_CertificateCollector(lambda: self._cert_not_after))
        if tls_cert is not None:
            self.served_certificate(tls_cert)
        self.nvml = NvmlCollector() if gpu else None
        if self.nvml is not None and self.nvml.available:
            r.register(self.nvml)

    def served_certificate(self, path: Path) -> None:
        """Record the expiry of the certificate now served: at startup and after each TLS reload."""
        self._cert_not_after = certificate_not_after(path)

    def bind(self, stats: Callable[[], EngineStats | None]) -> None:
        self._stats = stats

    def serving_group(self, group: str, workers: list[str], missing: Callable[[], list[str]]) -> None:
        """Series naming this head's serving group and whether each worker is connected."""
        self.registry.register(_GroupCollector(group, workers, missing))

    # Observer hooks (called on the event loop by BatchingEngine)

    def tokens(self, handle: Any, count: int, prev: float | None, now: float) -> None:
        if handle.request_id == "warmup":
            return
        if prev is None:
            self.ttft.labels(self.model).observe(max(0.0, now - handle.arrival))
            count -= 1
        if prev is not None and count > 0:
            gap = (now - prev) / count
            hist = self.itl.labels(self.model)
            for _ in range(count):
                hist.observe(gap)

    def request_finished(self, handle: Any) -> None:
        if handle.request_id == "warmup":
            return
        m = self.model
        self.request_success.labels(m, handle.finish_reason or "unknown").inc()
        self.prompt_tokens.labels(m).inc(handle.prompt_tokens)
        self.generation_tokens.labels(m).inc(handle.completion_tokens)
        self.prompt_hist.labels(m).observe(handle.prompt_tokens)
        self.gen_hist.labels(m).observe(handle.completion_tokens)
        end = handle.last_token_at or handle.finished_at
        if end is not None:
            self.e2e.labels(m).observe(max(0.0, end - handle.arrival))
        if handle.started_at is not None:
            self.queue_time.labels(m).observe(max(0.0, handle.started_at - handle.arrival))

    def render(self) -> bytes:
        return generate_latest(self.registry)
