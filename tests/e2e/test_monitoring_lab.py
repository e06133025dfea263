"""Monitoring for real: Prometheus on the converged lab host scrapes its daemon's /metrics over TLS with the
metrics key, and its node exporter; the alert rules are loaded; the play is idempotent and --check clean.
The Prometheus server is then removed again: the host stays as site.yml leaves it (no `monitoring` group)."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from deepseek_node.runner import RunConfig, RunResult, run

pytestmark = [pytest.mark.lab, pytest.mark.slow]

# Polls Prometheus' HTTP API on the target (9090 is not open to the controller): prints one JSON line.
QUERY = """python3 - <<'PY'
import json, urllib.parse, urllib.request
base = "http://127.0.0.1:9090/api/v1/"
def get(path):
    with urllib.request.urlopen(base + path, timeout=10) as r:
        return json.load(r)["data"]
out = {
    "targets": [
        {"job": t["labels"]["job"], "host": t["labels"].get("host"), "url": t["scrapeUrl"],
         "health": t["health"], "error": t["lastError"]}
        for t in get("targets")["activeTargets"]
    ],
    "rules": [r["name"] for g in get("rules")["groups"] for r in g["rules"]],
}
for q in ("deepseek_node:http_requests_total", "deepseek_node:engine_ready",
          "deepseek_node:tls_certificate_expiry_timestamp_seconds - time()", "node_load1"):
    out[q] = get("query?query=" + urllib.parse.quote(q))["result"]
print(json.dumps(out))
PY"""

CLEANUP = (
    "systemctl disable --now prometheus; "
    "DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq prometheus >/dev/null && "
    "DEBIAN_FRONTEND=noninteractive apt-get autoremove --purge -y -qq >/dev/null; "
    "rm -rf /etc/prometheus"
)


def _assert_ok(result: RunResult, what: str) -> None:
    assert result.ok, f"{what} failed:\n" + "\n".join(result.failures)


def _monitoring_inventory(inventory_dir: Path, server: str) -> Path:
    """The lab inventory plus a `monitoring` group holding `server` (beside it: same group_vars)."""
    hosts = yaml.safe_load((inventory_dir / "hosts.yml").read_text())
    hosts["all"].setdefault("children", {})["monitoring"] = {"hosts": {server: {}}}
    path = inventory_dir / "monitoring.yml"
    path.write_text(yaml.safe_dump(hosts, sort_keys=False))
    return path


def test_prometheus_scrapes_daemon_over_tls_and_node_exporter(site: dict, lab) -> None:
    _assert_ok(site["first"], "site.yml")
    name = site["hosts"][0].name
    inventory_dir = site["inventory_dir"]
    inventory = _monitoring_inventory(inventory_dir, name)

    def play(check: bool = False) -> RunResult:
        return run(
            RunConfig(
                inventory=inventory,
                playbook="playbooks/monitoring.yml",
                limit=name,
                tags=["monitoring"],
                check=check,
                artifacts_dir=inventory_dir / "runs",
            )
        )

    try:
        started = time.monotonic()
        first = play()
        _assert_ok(first, "the monitoring play")
        assert first.changed > 0
        converge_s = time.monotonic() - started

        out: dict = {}
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            res = lab.run(name, QUERY, check=False)
            if res.returncode == 0:
                out = json.loads(res.stdout.strip().splitlines()[-1])
                # Every inference node is a target; this test's host is the one rolled out.
                out["targets"] = [t for t in out["targets"] if t["job"] == "prometheus" or t["host"] == name]
                health = {t["job"]: t["health"] for t in out["targets"]}
                if (
                    health.get("deepseek-node") == "up"
                    and health.get("node") == "up"
                    and out["deepseek_node:http_requests_total"]
                ):
                    break
            time.sleep(3)
        targets = {t["job"]: t for t in out.get("targets", [])}
        assert set(targets) >= {"deepseek-node", "node", "prometheus"}, out
        daemon, node = targets["deepseek-node"], targets["node"]
        address = site["hosts"][0].address
        assert daemon["url"] == f"https://{address}:8443/metrics", daemon
        assert daemon["health"] == "up", daemon
        assert daemon["host"] == name
        assert node["url"] == f"http://{address}:9100/metrics" and node["health"] == "up", node
        # Prometheus' own scrapes are counted by the gateway: the series exists and has data.
        assert out["deepseek_node:http_requests_total"], out
        assert out["deepseek_node:engine_ready"][0]["value"][1] == "1"
        # The served certificate is the tls role's fresh one (tls_cert_valid_days: 397).
        left = float(out["deepseek_node:tls_certificate_expiry_timestamp_seconds - time()"][0]["value"][1])
        assert 390 * 86400 < left < 398 * 86400, left
        assert out["node_load1"]
        assert "DeepseekNodeCertificateExpiring" in out["rules"] and len(out["rules"]) >= 11

        perms = lab.run(name, "stat -c '%a %U %G' /etc/prometheus/deepseek-node-metrics.key").stdout
        assert perms.strip() == "640 root prometheus"

        again = play()
        _assert_ok(again, "the second monitoring play")
        assert again.changed == 0, f"second run changed {again.changed} tasks: {again.artifacts}"
        preview = play(check=True)
        _assert_ok(preview, "the --check monitoring play")
        assert preview.changed == 0, f"--check on a converged host predicts {preview.changed} changes"
        print(f"monitoring play converged in {converge_s:.0f} s")
    finally:
        inventory.unlink(missing_ok=True)
        lab.run(name, CLEANUP, check=False, timeout=300)
