"""The trail of every run: `summary.json` beside each run's artifacts, and reading them back.

runner.run feeds its events to a SummaryRecorder and writes the summary when the run ends: who ran it (the
local user and, under sudo, SUDO_USER), when, the command line and playbook, tags, limit, check mode, per host
ok/changed/failed/unreachable and the names of the tasks that changed (or would, under --check), the result,
the duration and the sha256 of the bundle manifest the run used. `provision history` lists them.
"""

from __future__ import annotations

import datetime as dt
import getpass
import hashlib
import json
import os
import shlex
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

SUMMARY = "summary.json"
SCHEMA = 1
KEEP_RUNS_ENV = "DEEPSEEK_NODE_KEEP_RUNS"
DEFAULT_KEEP_RUNS = 50


class HistoryError(ValueError):
    pass


def keep_runs(value: int | str | None = None) -> int:
    """How many runs the artifacts directory keeps (never fewer): the argument, DEEPSEEK_NODE_KEEP_RUNS, or 50."""
    raw = value if value is not None else os.environ.get(KEEP_RUNS_ENV) or DEFAULT_KEEP_RUNS
    try:
        n = int(raw)
    except (TypeError, ValueError):
        n = 0
    if n < 1 or str(raw).strip() != str(n):
        raise HistoryError(
            f"{KEEP_RUNS_ENV}={raw!r} is not a whole number of runs >= 1: set it like {KEEP_RUNS_ENV}=200"
        )
    return n


class SummaryRecorder:
    """Runner event handler: what each host changed and where it failed."""

    def __init__(self) -> None:
        self.changed: dict[str, list[str]] = {}
        self.failed: dict[str, list[str]] = {}
        self.hosts: set[str] = set()
        # Counted from the events too: a cancelled run ends without the final per-host stats.
        self.counts: dict[str, dict[str, int]] = {}
        self.playbook: str | None = None

    def __call__(self, event: Mapping[str, Any]) -> None:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        if kind == "playbook_on_start" and data.get("playbook"):
            self.playbook = str(data["playbook"])
        host = data.get("host")
        if not host or not kind.startswith("runner_on_"):
            return
        self.hosts.add(host)
        counts = self.counts.setdefault(
            host, {"ok": 0, "changed": 0, "failed": 0, "unreachable": 0, "skipped": 0}
        )
        task = str(data.get("task") or data.get("task_action") or "?")
        res = data.get("res") or {}
        if kind == "runner_on_ok":
            counts["ok"] += 1
        elif kind == "runner_on_skipped":
            counts["skipped"] += 1
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            counts["failed"] += 1
        elif kind == "runner_on_unreachable":
            counts["unreachable"] += 1
        if kind == "runner_on_ok" and res.get("changed"):
            counts["changed"] += 1
            names = self.changed.setdefault(host, [])
            if task not in names:  # a loop reports once per item; the trail names the task once
                names.append(task)
        elif kind in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
            self.failed.setdefault(host, []).append(task)


def _find_key(node: Any, key: str) -> Any:
    if isinstance(node, Mapping):
        if key in node:
            return node[key]
        for value in node.values():
            found = _find_key(value, key)
            if found is not None:
                return found
    return None


def bundle_dir(inventory: Path, extravars: Mapping[str, Any] | None = None) -> Path | None:
    """deepseek_bundle_dir from the extra vars or the inventory's own files (not templated, not vaulted)."""
    import yaml

    value = (extravars or {}).get("deepseek_bundle_dir")
    if not value:
        root = inventory if inventory.is_dir() else inventory.parent
        files = [inventory] if inventory.is_file() else sorted(inventory.glob("*.y*ml"))
        for sub in ("group_vars", "host_vars"):
            files += sorted(
                p for p in (root / sub).rglob("*") if p.is_file() and p.suffix in (".yml", ".yaml", "")
            )
        for path in files:
            try:
                found = _find_key(yaml.safe_load(path.read_text(encoding="utf-8")), "deepseek_bundle_dir")
            except (OSError, UnicodeDecodeError, yaml.YAMLError):
                continue
            if isinstance(found, str) and "{{" not in found:
                value = found
                break
    return Path(str(value)).expanduser() if value else None


def manifest_sha256(bundle: Path | None) -> str | None:
    if bundle is None:
        return None
    try:
        return hashlib.sha256((bundle / "manifest.json").read_bytes()).hexdigest()
    except OSError:
        return None


def build_summary(
    *,
    run_id: str,
    cfg: Any,
    recorder: SummaryRecorder,
    result: Any,
    started_at: dt.datetime,
    argv: list[str] | None = None,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The summary of one finished run (pure apart from reading the bundle manifest; tested from events)."""
    env = os.environ if env is None else env
    hosts = {}
    for name in sorted(set(result.hosts) | recorder.hosts):
        stats = result.hosts.get(name)
        counted = recorder.counts.get(name, {})
        hosts[name] = {
            k: getattr(stats, k) if stats else counted.get(k, 0)
            for k in ("ok", "changed", "failed", "unreachable", "skipped")
        } | {
            "changed_tasks": recorder.changed.get(name, []),
            "failed_tasks": recorder.failed.get(name, []),
        }
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid()) if hasattr(os, "getuid") else "?"
    bundle = bundle_dir(cfg.inventory, cfg.extravars)
    return {
        "schema": SCHEMA,
        "id": run_id,
        "user": user,
        "sudo_user": env.get("SUDO_USER") or None,
        "started_at": started_at.isoformat(timespec="seconds"),
        "finished_at": (started_at + dt.timedelta(seconds=result.seconds)).isoformat(timespec="seconds"),
        "duration_s": round(result.seconds, 1),
        "command": shlex.join(argv if argv is not None else sys.argv),
        "playbook": cfg.playbook,
        "inventory": str(Path(cfg.inventory).resolve()),
        "tags": list(cfg.tags),
        "skip_tags": list(cfg.skip_tags),
        "limit": cfg.limit,
        "check": bool(cfg.check),
        # Names only: extra vars may hold secrets.
        "extravars": sorted(cfg.extravars or {}),
        "hosts": hosts,
        "status": result.status,
        "rc": result.rc,
        "result": "ok" if result.ok else "failed",
        "failures": list(result.failures)[:50],
        "bundle_dir": str(bundle) if bundle else None,
        "bundle_manifest_sha256": manifest_sha256(bundle),
    }


def write_summary(run_dir: Path, summary: Mapping[str, Any]) -> Path:
    path = run_dir / SUMMARY
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(summary, fh, indent=2)
        fh.write("\n")
    tmp.replace(path)
    return path


def _runs(base: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    if not base.is_dir():
        return
    for run_dir in base.iterdir():
        path = run_dir / SUMMARY
        if not path.is_file():
            continue
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            yield run_dir, data


def list_runs(base: Path, inventory: Path | None = None) -> list[dict[str, Any]]:
    """Every summarized run under `base`, newest first; with `inventory`, only runs against it."""
    runs = [data | {"id": data.get("id") or run_dir.name} for run_dir, data in _runs(base)]
    if inventory is not None:
        want = str(inventory.resolve())
        runs = [r for r in runs if str(Path(str(r.get("inventory", ""))).resolve()) == want]
    return sorted(runs, key=lambda r: (str(r.get("started_at", "")), str(r["id"])), reverse=True)


def find_run(base: Path, run: str) -> dict[str, Any]:
    """One run by its id or a unique prefix of it; the error lists what would match."""
    runs = list_runs(base)
    exact = [r for r in runs if r["id"] == run]
    matches = exact or [r for r in runs if str(r["id"]).startswith(run)]
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise HistoryError(f"no run {run!r} under {base}: `provision history` lists the run ids")
    ids = ", ".join(str(r["id"]) for r in matches[:5])
    raise HistoryError(f"{run!r} matches {len(matches)} runs ({ids}, ...): give more of the id")
