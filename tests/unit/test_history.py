"""Run summaries from recorded ansible-runner events, `provision history`, and pruning that keeps N runs."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sys
import types
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from deepseek_node import history
from deepseek_node.cli.main import app
from deepseek_node.runner import RunConfig, RunError, RunResult, _prune_old_runs, stats_from_event, validate

STATS = {
    "ok": {"gpu-a01": 41, "gpu-a02": 12},
    "changed": {"gpu-a01": 3},
    "failures": {"gpu-a02": 1},
    "dark": {"gpu-a03": 1},
    "skipped": {"gpu-a01": 7},
}
EVENTS: list[dict[str, Any]] = [
    {"event": "playbook_on_start", "event_data": {"playbook": "site.yml"}},
    {
        "event": "runner_on_ok",
        "event_data": {"host": "gpu-a01", "task": "Install the driver", "res": {"changed": True}},
    },
    {
        "event": "runner_on_ok",
        "event_data": {"host": "gpu-a01", "task": "Read the manifest", "res": {"changed": False}},
    },
    # A loop reports every item; the trail names the task once.
    {
        "event": "runner_on_ok",
        "event_data": {"host": "gpu-a01", "task": "Copy the model", "res": {"changed": True}},
    },
    {
        "event": "runner_on_ok",
        "event_data": {"host": "gpu-a01", "task": "Copy the model", "res": {"changed": True}},
    },
    {
        "event": "runner_on_ok",
        "event_data": {"host": "gpu-a01", "task": "Write daemon.yaml", "res": {"changed": True}},
    },
    {
        "event": "runner_on_failed",
        "event_data": {
            "host": "gpu-a02",
            "task": "Probe readiness",
            "ignore_errors": True,
            "res": {"msg": "503"},
        },
    },
    {
        "event": "runner_on_failed",
        "event_data": {"host": "gpu-a02", "task": "Start the daemon", "res": {"msg": "x"}},
    },
    {
        "event": "runner_on_unreachable",
        "event_data": {"host": "gpu-a03", "task": "Gathering Facts", "res": {}},
    },
    {"event": "playbook_on_stats", "event_data": STATS},
]


@pytest.fixture
def inventory(tmp_path: Path) -> Path:
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    (bundle / "manifest.json").write_text('{"files": {}}\n')
    inv = tmp_path / "inv"
    (inv / "group_vars").mkdir(parents=True)
    (inv / "hosts.yml").write_text("all:\n  children:\n    inference_nodes:\n      hosts: {gpu-a01: {}}\n")
    (inv / "group_vars" / "inference_nodes.yml").write_text(f"deepseek_bundle_dir: {bundle}\n")
    return inv


def recorded_summary(inventory: Path, **cfg_kw: Any) -> dict[str, Any]:
    recorder = history.SummaryRecorder()
    for ev in EVENTS:
        recorder(ev)
    cfg = RunConfig(inventory=inventory, tags=["gpu", "inference"], limit="gpu-a0*", check=True, **cfg_kw)
    result = RunResult(
        "failed", 2, stats_from_event(STATS), inventory, 83.44, ["gpu-a02: Start the daemon: x"]
    )
    return history.build_summary(
        run_id="20261120T091403-1a2b3c4d",
        cfg=cfg,
        recorder=recorder,
        result=result,
        started_at=dt.datetime(2026, 11, 20, 9, 14, 3, tzinfo=dt.UTC),
        argv=["provision", "run", "-i", str(inventory), "--tags", "gpu,inference", "--check"],
        env={"SUDO_USER": "alice"},
    )


def test_summary_from_recorded_events(inventory: Path) -> None:
    s = recorded_summary(inventory, extravars={"secret_thing": "hunter2"})
    assert s["sudo_user"] == "alice" and s["user"]
    assert s["started_at"] == "2026-11-20T09:14:03+00:00" and s["finished_at"] == "2026-11-20T09:15:26+00:00"
    assert s["duration_s"] == 83.4
    assert s["command"].startswith("provision run -i ") and s["command"].endswith(
        "--tags gpu,inference --check"
    )
    assert (s["playbook"], s["tags"], s["limit"], s["check"]) == (
        "site.yml",
        ["gpu", "inference"],
        "gpu-a0*",
        True,
    )
    assert s["result"] == "failed" and s["rc"] == 2
    a01, a02, a03 = (s["hosts"][h] for h in ("gpu-a01", "gpu-a02", "gpu-a03"))
    assert (a01["ok"], a01["changed"], a01["failed"], a01["unreachable"]) == (41, 3, 0, 0)
    assert a01["changed_tasks"] == ["Install the driver", "Copy the model", "Write daemon.yaml"]
    assert a02["failed"] == 1 and a02["failed_tasks"] == ["Start the daemon"]  # the ignored error is not one
    assert a03["unreachable"] == 1
    manifest = Path(s["bundle_dir"]) / "manifest.json"
    assert s["bundle_manifest_sha256"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    # Extra vars are named, never recorded: they may hold secrets.
    assert s["extravars"] == ["secret_thing"] and "hunter2" not in json.dumps(s)


def test_summary_without_a_bundle(tmp_path: Path) -> None:
    (tmp_path / "hosts.yml").write_text("all: {}\n")
    s = recorded_summary(tmp_path / "hosts.yml")
    assert s["bundle_dir"] is None and s["bundle_manifest_sha256"] is None


def _write_runs(base: Path, inventory: Path) -> None:
    for i, (stamp, result) in enumerate(
        (("20261118T100000", "ok"), ("20261120T091403", "failed"), ("20261119T120000", "ok"))
    ):
        run_dir = base / f"{stamp}-0000000{i}"
        run_dir.mkdir(parents=True)
        s = recorded_summary(inventory) | {
            "id": run_dir.name,
            "started_at": dt.datetime.strptime(stamp, "%Y%m%dT%H%M%S").replace(tzinfo=dt.UTC).isoformat(),
            "result": result,
        }
        history.write_summary(run_dir, s)
    (base / "20261117T000000-deadbeef").mkdir()  # a run that never finished: no summary, not listed


def test_list_and_find_runs(tmp_path: Path, inventory: Path) -> None:
    base = tmp_path / "artifacts"
    _write_runs(base, inventory)
    runs = history.list_runs(base)
    assert [r["id"][:15] for r in runs] == ["20261120T091403", "20261119T120000", "20261118T100000"]
    assert history.list_runs(base, inventory=tmp_path) == []
    assert len(history.list_runs(base, inventory=inventory)) == 3
    assert history.find_run(base, "20261119")["result"] == "ok"
    with pytest.raises(history.HistoryError, match="matches 3 runs"):
        history.find_run(base, "2026")
    with pytest.raises(history.HistoryError, match="provision history"):
        history.find_run(base, "1999")
    assert (base / runs[0]["id"] / "summary.json").stat().st_mode & 0o777 == 0o600


def test_history_cli(tmp_path: Path, inventory: Path) -> None:
    base = tmp_path / "artifacts"
    _write_runs(base, inventory)
    runner = CliRunner()
    out = runner.invoke(app, ["history", "--json", "--limit", "2", "--artifacts-dir", str(base)])
    assert out.exit_code == 0, out.output
    runs = json.loads(out.stdout)
    assert [r["result"] for r in runs] == ["failed", "ok"]
    table = runner.invoke(app, ["history", "--artifacts-dir", str(base)])
    assert table.exit_code == 0 and "alice" in table.stdout
    shown = runner.invoke(app, ["history", "show", "20261120", "--artifacts-dir", str(base)])
    assert shown.exit_code == 0, shown.output
    assert "  changed: Install the driver\n" in shown.stdout and "failed: Start the daemon" in shown.stdout
    as_json = runner.invoke(app, ["history", "show", "20261120", "--json", "--artifacts-dir", str(base)])
    assert json.loads(as_json.stdout)["hosts"]["gpu-a01"]["changed"] == 3
    missing = runner.invoke(app, ["history", "show", "1999", "--artifacts-dir", str(base)])
    assert missing.exit_code == 2 and "no run '1999'" in missing.output
    bad = runner.invoke(app, ["history", "--limit", "-1", "--artifacts-dir", str(base)])
    assert bad.exit_code == 2


def test_keep_runs_setting(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(history.KEEP_RUNS_ENV, raising=False)
    assert history.keep_runs() == 50
    monkeypatch.setenv(history.KEEP_RUNS_ENV, "200")
    assert history.keep_runs() == 200 and history.keep_runs(7) == 7
    for bad in ("0", "ten", "-3"):
        monkeypatch.setenv(history.KEEP_RUNS_ENV, bad)
        with pytest.raises(history.HistoryError, match="DEEPSEEK_NODE_KEEP_RUNS"):
            history.keep_runs()
        with pytest.raises(RunError, match="DEEPSEEK_NODE_KEEP_RUNS"):
            validate(RunConfig(inventory=tmp_path))


def test_prune_keeps_the_configured_count(tmp_path: Path) -> None:
    for day in range(10, 20):
        (tmp_path / f"202611{day}T000000-aaaaaaaa").mkdir()
    (tmp_path / "check").mkdir()  # `provision check`'s own runs live apart and are not counted
    _prune_old_runs(tmp_path, keep=4)
    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == [f"202611{day}T000000-aaaaaaaa" for day in range(16, 20)] + ["check"]


def test_runner_writes_the_summary(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, inventory: Path) -> None:
    """runner.run with ansible-runner replaced by one that replays the recorded events."""
    from deepseek_node import runner

    def fake_run(**kw: Any) -> Any:
        for ev in EVENTS:
            kw["event_handler"](ev)
        artifact_dir = Path(kw["private_data_dir"]) / "artifacts" / "x"
        return types.SimpleNamespace(
            rc=2, status="failed", config=types.SimpleNamespace(artifact_dir=artifact_dir)
        )

    monkeypatch.setitem(sys.modules, "ansible_runner", types.SimpleNamespace(run=fake_run))
    monkeypatch.setenv("SUDO_USER", "bob")
    for old in ("20261101T000000-00000000", "20261102T000000-00000000"):
        (tmp_path / "artifacts" / old).mkdir(parents=True)
    cfg = RunConfig(inventory=inventory, limit="gpu-a01", artifacts_dir=tmp_path / "artifacts", keep_runs=2)
    result = runner.run(cfg)
    assert not result.ok
    runs = history.list_runs(tmp_path / "artifacts")
    assert len(runs) == 1 and runs[0]["sudo_user"] == "bob" and runs[0]["limit"] == "gpu-a01"
    assert runs[0]["hosts"]["gpu-a01"]["changed_tasks"] == [
        "Install the driver",
        "Copy the model",
        "Write daemon.yaml",
    ]
    # keep_runs=2: the oldest run went, the newer one and this one stay.
    assert sorted(p.name for p in (tmp_path / "artifacts").iterdir())[0] == "20261102T000000-00000000"
    assert len(list((tmp_path / "artifacts").iterdir())) == 2


def test_cancelled_run_counts_from_events(inventory: Path) -> None:
    """A run stopped before its final stats still says what each host did."""
    recorder = history.SummaryRecorder()
    for ev in EVENTS[:-1]:  # no playbook_on_stats
        recorder(ev)
    cfg = RunConfig(inventory=inventory)
    result = RunResult("canceled", 254, {}, inventory, 12.0)
    s = history.build_summary(
        run_id="r",
        cfg=cfg,
        recorder=recorder,
        result=result,
        started_at=dt.datetime.now(dt.UTC),
        argv=[],
        env={},
    )
    assert s["result"] == "failed" and s["status"] == "canceled"
    a01 = s["hosts"]["gpu-a01"]
    assert (a01["ok"], a01["changed"]) == (5, 4) and len(a01["changed_tasks"]) == 3
    assert s["hosts"]["gpu-a02"]["failed"] == 1 and s["hosts"]["gpu-a03"]["unreachable"] == 1
