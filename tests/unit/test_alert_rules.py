"""The monitoring role's alert rules: valid for promtool, and each seeded threshold fires once crossed and
stays quiet below it (promtool's own rule unit tests, roles/monitoring/files/tests/)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from deepseek_node.paths import project_root

ROLE = project_root() / "roles" / "monitoring"
RULES_TEMPLATE = ROLE / "templates" / "deepseek-node.rules.yml.j2"
RULES_TESTS = ROLE / "files" / "tests" / "deepseek-node.rules.test.yml"


def promtool() -> str:
    """promtool's path; skip (fail under CI) where the `prometheus` package is not installed."""
    path = shutil.which("promtool")
    if path is None:
        reason = "promtool is not installed: apt-get install -y prometheus (scripts/setup.sh does)"
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}", pytrace=False)
        pytest.skip(reason)
    return path


def render_rules(**overrides: Any) -> str:
    """The rules file as the role writes it, with its defaults (and `overrides`) for the thresholds."""
    header, _, body = RULES_TEMPLATE.read_text().partition("\n")
    assert header.startswith("#jinja2:"), "the rules template must keep its [[ ]] delimiter header"
    env = jinja2.Environment(
        variable_start_string="[[", variable_end_string="]]", undefined=jinja2.StrictUndefined
    )
    defaults = yaml.safe_load((ROLE / "defaults" / "main.yml").read_text())
    return env.from_string(body).render({**defaults, **overrides})


def run(tool: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([tool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


def test_rules_pass_promtool_check(tmp_path: Path) -> None:
    tool = promtool()
    (tmp_path / "deepseek-node.rules.yml").write_text(render_rules())
    result = run(tool, "check", "rules", "deepseek-node.rules.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_each_threshold_fires_above_and_stays_quiet_below(tmp_path: Path) -> None:
    tool = promtool()
    (tmp_path / "deepseek-node.rules.yml").write_text(render_rules())
    shutil.copy(RULES_TESTS, tmp_path / RULES_TESTS.name)
    result = run(tool, "test", "rules", RULES_TESTS.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    rules = yaml.safe_load(render_rules())
    alerts = {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}
    tests = yaml.safe_load(RULES_TESTS.read_text())
    tested = {case["alertname"] for t in tests["tests"] for case in t.get("alert_rule_test", [])}
    fired = {
        case["alertname"]
        for t in tests["tests"]
        for case in t.get("alert_rule_test", [])
        if case["exp_alerts"]
    }
    quiet = {
        case["alertname"]
        for t in tests["tests"]
        for case in t.get("alert_rule_test", [])
        if not case["exp_alerts"]
    }
    assert alerts == tested, f"alerts without a test: {alerts - tested}; tests of no alert: {tested - alerts}"
    assert alerts <= fired, f"alerts never shown firing: {alerts - fired}"
    # The certificate test shows quiet and firing hosts in one evaluation.
    assert alerts - {"DeepseekNodeCertificateExpiring"} <= quiet, f"never shown quiet: {alerts - quiet}"


def test_thresholds_come_from_role_variables() -> None:
    text = render_rules(
        monitoring_alert_gpu_temperature_celsius=90,
        monitoring_alert_latency_p99_seconds=2.5,
        monitoring_alert_queue_window="30m",
        monitoring_alert_cert_expiry_days=7,
    )
    assert "deepseek_node:gpu_temperature_celsius >= 90" in text
    assert ") > 2.5" in text
    assert "delta(deepseek_node:num_requests_waiting[30m])" in text
    assert "< 7 * 86400" in text


def test_rules_with_other_thresholds_still_pass_promtool(tmp_path: Path) -> None:
    tool = promtool()
    (tmp_path / "r.yml").write_text(
        render_rules(
            monitoring_alert_for="10m", monitoring_alert_error_ratio=0.01, monitoring_alert_queue_window="1h"
        )
    )
    result = run(tool, "check", "rules", "r.yml", cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
