"""The Grafana dashboard and the alert rules name only series the daemon exports (the gateway's, NVML's
and vLLM's), checked against a real render of the daemon's /metrics with a stand-in NVML."""

from __future__ import annotations

import datetime
import json
import re
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from deepseek_node.daemon.engines.interface import EngineState, EngineStats
from deepseek_node.paths import project_root
from tests.unit.test_alert_rules import promtool, render_rules

DASHBOARD = project_root() / "roles" / "monitoring" / "files" / "deepseek-node-dashboard.json"
NAME = re.compile(r"\b((?:deepseek_node|vllm):[A-Za-z0-9_]+)")

# vLLM's v1 series (served unchanged by the gateway where vLLM is the engine), with their exposition suffixes.
VLLM = {
    *(f"vllm:{n}" for n in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc")),
    *(
        f"vllm:{n}{s}"
        for n in ("time_to_first_token_seconds", "e2e_request_latency_seconds", "inter_token_latency_seconds")
        for s in ("_bucket", "_sum", "_count")
    ),
    *(
        f"vllm:{n}_total"
        for n in ("prompt_tokens", "generation_tokens", "request_success", "num_preemptions")
    ),
}


def fake_nvml(xid_events: list[tuple[int, int]]) -> types.ModuleType:
    """A pynvml stand-in: one H100 with ECC, and `xid_events` [(gpu, xid)] queued in the event set."""
    nv = types.ModuleType("pynvml")
    queue = list(xid_events)

    class Timeout(Exception):
        pass

    def wait(_events: Any, _timeout_ms: int) -> Any:
        if not queue:
            raise Timeout
        gpu, xid = queue.pop(0)
        return types.SimpleNamespace(device=gpu, eventData=xid)

    gib = 1 << 30
    nv.__dict__.update(
        NVML_TEMPERATURE_GPU=0,
        NVML_MEMORY_ERROR_TYPE_UNCORRECTED=1,
        NVML_VOLATILE_ECC=0,
        nvmlEventTypeXidCriticalError=8,
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 1,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetIndex=lambda h: h,
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=42),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=60 * gib, total=80 * gib),
        nvmlDeviceGetTemperature=lambda h, sensor: 61,
        nvmlDeviceGetPowerUsage=lambda h: 350_000,
        nvmlDeviceGetTotalEccErrors=lambda h, kind, counter: 3,
        nvmlEventSetCreate=lambda: object(),
        nvmlDeviceRegisterEvents=lambda h, kinds, events: None,
        nvmlEventSetWait_v2=wait,
    )
    return nv


def self_signed(path: Path, days: int) -> Path:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "node")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=days))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return path


@pytest.fixture
def exported(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> dict[str, Any]:
    """{sample name: sample} from the daemon's metrics with GPU, engine stats and a served certificate."""
    from deepseek_node.daemon.gateway.metrics import Metrics

    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([(0, 79)]))
    metrics = Metrics("m", gpu=True, tls_cert=self_signed(tmp_path / "server.crt", days=30))
    metrics.bind(
        lambda: EngineStats(waiting=1, running=2, kv_cache_usage=0.5, state=EngineState.READY, backend="x")
    )
    # Labelled counters and histograms export series once they have a child.
    metrics.http_requests.labels("/v1/chat/completions", "POST", "200").inc()
    metrics.rejected.labels("queue_full").inc()
    for family in (metrics.request_success,):
        family.labels("m", "stop").inc()
    for c in (metrics.prompt_tokens, metrics.generation_tokens):
        c.labels("m").inc()
    for h in (
        metrics.ttft,
        metrics.itl,
        metrics.e2e,
        metrics.queue_time,
        metrics.prompt_hist,
        metrics.gen_hist,
    ):
        h.labels("m").observe(0.1)
    out: dict[str, Any] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            out[sample.name] = sample
    return out


def dashboard_exprs() -> list[str]:
    data = json.loads(DASHBOARD.read_text())
    return [t["expr"] for p in data["panels"] for t in p.get("targets", [])]


def rule_exprs() -> list[str]:
    rules = yaml.safe_load(render_rules())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def test_gpu_ecc_xid_and_certificate_series(exported: dict[str, Any]) -> None:
    assert exported["deepseek_node:gpu_ecc_errors_uncorrected_total"].value == 3
    xid = exported["deepseek_node:gpu_xid_errors_total"]
    assert xid.value == 1 and xid.labels == {"gpu": "0", "name": "NVIDIA H100 80GB HBM3"}
    assert exported["deepseek_node:gpu_last_xid"].value == 79
    left = exported["deepseek_node:tls_certificate_expiry_timestamp_seconds"].value - time.time()
    assert 29 * 86400 < left <= 30 * 86400


def test_certificate_series_is_absent_without_a_readable_certificate(tmp_path: Path) -> None:
    from deepseek_node.daemon.gateway.metrics import Metrics

    (tmp_path / "bad.crt").write_text("not a certificate")
    for cert in (None, tmp_path / "bad.crt", tmp_path / "missing.crt"):
        text = Metrics("m", gpu=False, tls_cert=cert).render().decode()
        assert "tls_certificate_expiry" not in text, cert


def test_xid_counter_starts_at_zero_and_counts_each_event(monkeypatch: pytest.MonkeyPatch) -> None:
    from deepseek_node.daemon.gateway.metrics import NvmlCollector

    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([]))
    collector = NvmlCollector()

    def sample(name: str) -> list[float]:
        return [s.value for f in collector.collect() for s in f.samples if s.name == name]

    # Present at 0 before any event, so that increase() sees the first one.
    assert sample("deepseek_node:gpu_xid_errors_total") == [0.0]
    assert sample("deepseek_node:gpu_last_xid") == []
    collector._nvml = fake_nvml([(0, 48), (0, 63)])
    assert sample("deepseek_node:gpu_xid_errors_total") == [2.0]
    assert sample("deepseek_node:gpu_last_xid") == [63.0]


@pytest.mark.parametrize("source", ["dashboard", "rules"])
def test_every_series_named_is_exported(source: str, exported: dict[str, Any]) -> None:
    exprs = dashboard_exprs() if source == "dashboard" else rule_exprs()
    names = {n for e in exprs for n in NAME.findall(e)}
    assert names, f"no deepseek_node:/vllm: series in the {source}"
    known = set(exported) | VLLM
    missing = sorted(names - known)
    assert not missing, f"the {source} names series the daemon does not export: {missing}"


def test_dashboard_is_importable_and_covers_the_essentials() -> None:
    data = json.loads(DASHBOARD.read_text())
    assert [i["name"] for i in data["__inputs"]] == ["DS_PROMETHEUS"]
    assert data["uid"] and data["title"] and isinstance(data["schemaVersion"], int)
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in data["panels"]:
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
    text = " ".join(dashboard_exprs())
    for needed in (
        "time_to_first_token_seconds_bucket",
        "e2e_request_latency_seconds_bucket",
        "generation_tokens_total",
        "num_requests_waiting",
        "gpu_utilization_perc",
        "gpu_memory_used_bytes",
        "gpu_temperature_celsius",
        'status=~"5.."',
    ):
        assert needed in text, f"the dashboard has no panel on {needed}"


def test_dashboard_queries_are_valid_promql(tmp_path: Path) -> None:
    tool = promtool()
    rules = [
        {"record": f"dashboard:q{i}", "expr": e.replace("$__rate_interval", "5m").replace("$host", ".*")}
        for i, e in enumerate(dashboard_exprs())
    ]
    (tmp_path / "d.yml").write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [tool, "check", "rules", "d.yml"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert shutil.which("promtool")
