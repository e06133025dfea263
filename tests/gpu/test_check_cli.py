"""`provision check`: preflight in check mode, one row per host; nothing on the hosts changes."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from deepseek_node.cli.check import CheckCollector, HostCheck, check_table
from deepseek_node.cli.main import app

runner = CliRunner()


def _ok(host: str, res: dict) -> dict:
    return {"event": "runner_on_ok", "event_data": {"host": host, "task": "t", "res": res}}


def test_collector_reads_facts_probe_decision_and_failures() -> None:
    c = CheckCollector()
    c(
        _ok(
            "a",
            {"ansible_facts": {"ansible_distribution": "Debian", "ansible_distribution_version": "12.11"}},
        )
    )
    c(_ok("a", {"facts": {"pci": {}, "kernel": "6.1.0-37-amd64", "disk": {"free_gib": 812.5},
                          "nvml": {"available": True, "driver_version": "535.309.01"}}}))  # fmt: skip
    c(_ok("a", {"ansible_facts": {"preflight_gpu": {
        "install": True, "golden_image": False, "fabric_manager": True, "reason": "8 NVIDIA GPU(s) detected",
        "nvml_gpus": [{"name": "NVIDIA H100 80GB HBM3", "compute_capability": "9.0"}] * 8,
        "nvswitch_count": 4, "secure_boot": False, "virtualization": "none", "kernel_headers": "repository",
        "warnings": []}}}))  # fmt: skip
    c(
        {
            "event": "runner_on_failed",
            "event_data": {"host": "b", "task": "Stop here", "res": {"msg": "no GPU"}},
        }
    )
    c({"event": "runner_on_unreachable", "event_data": {"host": "c", "res": {"msg": "ssh: timed out"}}})
    a, b, cc = c.hosts["a"], c.hosts["b"], c.hosts["c"]
    assert a.ok and a.os == "Debian 12.11" and a.models_free_gib == 812.5 and a.nvml == "driver 535.309.01"
    assert a.gpu_stack == "install + Fabric Manager" and a.nvswitches == 4 and len(a.gpus) == 8
    assert not b.ok and b.failures == ["Stop here: no GPU"]
    assert cc.unreachable and not cc.ok
    table = check_table([a, b, cc])
    assert table.row_count == 3


def test_host_without_decision_shows_unknowns() -> None:
    assert check_table([HostCheck("x")]).row_count == 1


def test_check_refuses_a_missing_inventory(tmp_path) -> None:
    result = runner.invoke(app, ["check", "-i", str(tmp_path / "nope.yml")])
    assert result.exit_code == 2 and "does not exist" in result.output


@pytest.mark.lab
def test_check_on_a_bare_lab_host_changes_nothing(lab, tmp_path) -> None:
    bare = lab.names()[-1]
    before = lab.run(bare, "ls /etc/ansible/facts.d 2>/dev/null; ls /srv 2>/dev/null").stdout
    result = runner.invoke(
        app,
        ["check", "-i", str(lab.inventory_path), "--limit", bare, "--json", "--artifacts-dir", str(tmp_path)],
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)
    assert [r["host"] for r in rows] == [bare]
    row = rows[0]
    assert row["ok"] and row["os"].startswith("Debian 12") and row["gpu_stack"] == "skip"
    assert "no NVIDIA GPU detected" in row["reason"] and row["virtualization"] == "systemd-nspawn"
    assert lab.run(bare, "ls /etc/ansible/facts.d 2>/dev/null; ls /srv 2>/dev/null").stdout == before
