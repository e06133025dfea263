"""The runner's pure parts: stats parsing, failure lines, input validation, the progress view."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepseek_node.cli.progress import HostProgress, summary_table
from deepseek_node.runner import (
    HostStats,
    RunConfig,
    RunError,
    RunResult,
    failure_line,
    stats_from_event,
    validate,
)


def test_stats_from_event_collects_every_host() -> None:
    data = {
        "ok": {"a": 5, "b": 3},
        "changed": {"a": 2},
        "failures": {"b": 1},
        "dark": {"c": 1},
        "skipped": {},
    }
    hosts = stats_from_event(data)
    assert hosts["a"] == HostStats(ok=5, changed=2)
    assert hosts["b"].failed == 1 and hosts["c"].unreachable == 1


def test_result_ok_needs_hosts_and_no_failures(tmp_path: Path) -> None:
    good = RunResult("successful", 0, {"a": HostStats(ok=3)}, tmp_path, 1.0)
    assert good.ok and good.changed == 0
    assert not RunResult("successful", 0, {}, tmp_path, 1.0).ok
    assert not RunResult("failed", 2, {"a": HostStats(failed=1)}, tmp_path, 1.0).ok


def test_failure_line_skips_ignored_errors() -> None:
    ev = {"event": "runner_on_failed", "event_data": {"host": "h", "task": "t", "res": {"msg": "boom"}}}
    assert failure_line(ev) == "h: t: boom"
    ev["event_data"]["ignore_errors"] = True
    assert failure_line(ev) is None
    assert failure_line({"event": "runner_on_ok", "event_data": {}}) is None


def test_validate_rejects_missing_inventory_and_playbook(tmp_path: Path) -> None:
    with pytest.raises(RunError, match="inventory"):
        validate(RunConfig(inventory=tmp_path / "nope"))
    with pytest.raises(RunError, match="playbook"):
        validate(RunConfig(inventory=tmp_path, playbook="nope.yml"))


def test_progress_counts_per_host(tmp_path: Path) -> None:
    p = HostProgress()
    p({"event": "playbook_on_play_start", "event_data": {"play": "Inference"}})
    p({"event": "runner_on_ok", "event_data": {"host": "h1", "task": "x", "res": {"changed": True}}})
    p({"event": "runner_on_failed", "event_data": {"host": "h1", "task": "y", "res": {}}})
    assert p.rows["h1"] == {"task": "y", "ok": 1, "changed": 1, "failed": 1, "unreachable": 0}
    assert p.table().row_count == 1
    assert summary_table(RunResult("failed", 2, {"h1": HostStats(failed=1)}, tmp_path, 2.0)).row_count == 1
