"""site.yml through ansible-runner: a config object, `run()` thin over it, events to a plain callable.

The CLI's progress view and the tests use the same function; every run's artifacts (events, stdout,
status) are kept under the artifacts directory for the audit trail.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from deepseek_node import history
from deepseek_node.paths import artifacts_root, project_root

EventHandler = Callable[[dict[str, Any]], None]
STAT_KEYS = ("ok", "changed", "failures", "dark", "skipped", "rescued", "ignored")


class RunError(RuntimeError):
    pass


@dataclass
class RunConfig:
    inventory: Path
    playbook: str = "site.yml"
    limit: str | None = None
    tags: list[str] = field(default_factory=list)
    skip_tags: list[str] = field(default_factory=list)
    check: bool = False
    diff: bool = False
    extravars: dict[str, Any] = field(default_factory=dict)
    artifacts_dir: Path | None = None
    verbosity: int = 0
    # Runs kept under the artifacts directory (never fewer); None: DEEPSEEK_NODE_KEEP_RUNS, else 50.
    keep_runs: int | None = None


@dataclass
class HostStats:
    ok: int = 0
    changed: int = 0
    failed: int = 0
    unreachable: int = 0
    skipped: int = 0


@dataclass
class RunResult:
    status: str
    rc: int
    hosts: dict[str, HostStats]
    artifacts: Path
    seconds: float
    failures: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        # A run that matched no host did nothing: for an operator that is a mistake, not a success.
        return (
            self.rc == 0
            and bool(self.hosts)
            and all(h.failed == 0 and h.unreachable == 0 for h in self.hosts.values())
        )

    @property
    def changed(self) -> int:
        return sum(h.changed for h in self.hosts.values())


def validate(cfg: RunConfig) -> None:
    """Bad input fails here, before ansible starts."""
    try:
        history.keep_runs(cfg.keep_runs)
    except history.HistoryError as exc:
        raise RunError(str(exc)) from None
    if not cfg.inventory.exists():
        raise RunError(
            f"inventory {cfg.inventory} does not exist: pass -i with a hosts file or inventory directory"
        )
    root = project_root()
    if not (root / cfg.playbook).is_file():
        raise RunError(f"playbook {cfg.playbook} not found in {root}: use site.yml or one of playbooks/*.yml")


def stats_from_event(data: dict[str, Any]) -> dict[str, HostStats]:
    """Per-host totals from a playbook_on_stats event (pure, so it is unit tested)."""
    hosts: dict[str, HostStats] = {}
    names = set()
    for key in STAT_KEYS:
        names |= set((data.get(key) or {}).keys())
    for name in sorted(names):
        hosts[name] = HostStats(
            ok=(data.get("ok") or {}).get(name, 0),
            changed=(data.get("changed") or {}).get(name, 0),
            failed=(data.get("failures") or {}).get(name, 0),
            unreachable=(data.get("dark") or {}).get(name, 0),
            skipped=(data.get("skipped") or {}).get(name, 0),
        )
    return hosts


def failure_line(event: dict[str, Any]) -> str | None:
    if event.get("event") not in ("runner_on_failed", "runner_on_unreachable"):
        return None
    data = event.get("event_data", {})
    if data.get("ignore_errors"):
        return None
    res = data.get("res") or {}
    msg = res.get("msg") or res.get("module_stderr") or ""
    if isinstance(msg, list):
        msg = " ".join(map(str, msg))
    # A failed command's reason is on its stderr; "non-zero return code" alone tells an operator nothing.
    stderr = str(res.get("stderr") or "").strip()
    if stderr and stderr not in str(msg):
        msg = f"{msg}: {stderr}" if msg else stderr
    return f"{data.get('host')}: {data.get('task')}: {str(msg).strip()[:2000]}"


def _prune_old_runs(base: Path, keep: int) -> None:
    runs = sorted((p for p in base.iterdir() if p.is_dir() and p.name[:8].isdigit()), key=lambda p: p.name)
    for old in runs[:-keep] if len(runs) > keep else []:
        shutil.rmtree(old, ignore_errors=True)


def _rollout_vars(inventory: Path) -> dict[str, Any]:
    """The inventory's deepseek_serial / deepseek_max_fail_percentage (play keywords cannot read them)."""
    from deepseek_node.inventory import InventoryLoadError, load_inventory
    from deepseek_node.rollout import RolloutError, rollout_extravars

    try:
        return rollout_extravars(load_inventory(inventory))
    except (InventoryLoadError, RolloutError) as exc:
        raise RunError(f"{inventory}: {exc}") from exc


def run(cfg: RunConfig, on_event: EventHandler | None = None) -> RunResult:
    import ansible_runner

    validate(cfg)
    extravars = {**_rollout_vars(cfg.inventory), **cfg.extravars}
    root = project_root()
    base = (cfg.artifacts_dir or artifacts_root()).resolve()
    # Run artifacts hold extra vars and full task results: keep them private to the operator.
    base.mkdir(parents=True, exist_ok=True, mode=0o700)
    base.chmod(0o700)
    # One private data dir per run: ansible-runner re-reads env/cmdline and env/extravars from it, so a
    # shared one would silently carry a previous run's --check or extra vars into this one.
    artifacts = base / (time.strftime("%Y%m%dT%H%M%S") + f"-{uuid.uuid4().hex[:8]}")
    artifacts.mkdir(mode=0o700)
    _prune_old_runs(base, keep=history.keep_runs(cfg.keep_runs))
    recorder = history.SummaryRecorder()
    started_at = datetime.now(UTC)
    # ansible-playbook must be the one beside this interpreter (the venv), not whatever PATH finds first.
    bindir = str(Path(sys.executable).parent)
    envvars = {
        "ANSIBLE_CONFIG": str(root / "ansible.cfg"),
        "PATH": bindir + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_FORCE_COLOR": "0",
        # ansible-runner turns host key checking off by default; an operator's fleet keeps it on.
        "ANSIBLE_HOST_KEY_CHECKING": "True",
    }
    cmdline = []
    if cfg.check:
        cmdline.append("--check")
    if cfg.diff:
        cmdline.append("--diff")
    if cfg.skip_tags:
        cmdline += ["--skip-tags", ",".join(cfg.skip_tags)]
    failures: list[str] = []
    hosts: dict[str, HostStats] = {}

    def handler(event: dict[str, Any]) -> bool:
        nonlocal hosts
        line = failure_line(event)
        if line:
            failures.append(line)
        if event.get("event") == "playbook_on_stats":
            hosts = stats_from_event(event.get("event_data", {}))
        recorder(event)
        if on_event:
            on_event(event)
        return True

    started = time.monotonic()
    old_path = os.environ.get("PATH", "")
    os.environ["PATH"] = envvars["PATH"]
    try:
        r = ansible_runner.run(
            private_data_dir=str(artifacts),
            project_dir=str(root),
            playbook=cfg.playbook,
            inventory=str(cfg.inventory.resolve()),
            limit=cfg.limit,
            tags=",".join(cfg.tags) if cfg.tags else None,
            extravars=extravars or None,
            cmdline=" ".join(cmdline) or None,
            envvars=envvars,
            event_handler=handler,
            quiet=True,
            verbosity=cfg.verbosity or None,
        )
    finally:
        os.environ["PATH"] = old_path
    if r.rc == 0 and not hosts:
        failures.append("no hosts matched: check the inventory's inference_nodes group and --limit")
    result = RunResult(
        status=r.status,
        rc=r.rc,
        hosts=hosts,
        artifacts=Path(r.config.artifact_dir),
        seconds=time.monotonic() - started,
        failures=failures,
    )
    # The audit trail: who ran what, where, and what changed (`provision history`).
    summary = history.build_summary(
        run_id=artifacts.name, cfg=cfg, recorder=recorder, result=result, started_at=started_at
    )
    try:
        history.write_summary(artifacts, summary)
    except OSError as exc:
        result.failures.append(f"the run's summary could not be written to {artifacts}: {exc}")
    return result
