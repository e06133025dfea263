"""`provision doctor`: why is a node slow or down? The troubleshooting tables as checks over every host.

A thin layer: `gather()` maps hosts to readings (the collector through Ansible, or on this machine),
deepseek_node.doctor.checks turns readings into findings, and the report prints them.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from deepseek_node.cli.errors import fail

console = Console()
DOCTOR_PLAYBOOK = "deepseek_node/doctor/collect.yml"
COLLECT_TASK = "Read GPUs, kernel log, services, health, certificate and disk"


@dataclass
class Gathered:
    readings: dict[str, Any] = field(default_factory=dict)  # host -> Readings
    unreachable: dict[str, str] = field(default_factory=dict)  # host -> why no readings came back
    failures: list[str] = field(default_factory=list)  # run-level failures (no host matched, ...)


class ReadingsCollector:
    """Runner event handler: each host's collector JSON, or why there is none."""

    def __init__(self) -> None:
        self.gathered = Gathered()

    def __call__(self, event: dict[str, Any]) -> None:
        from deepseek_node.doctor.readings import Readings

        kind = event.get("event", "")
        data = event.get("event_data") or {}
        host = data.get("host")
        if not host or not kind.startswith("runner_on_"):
            return
        res = data.get("res") or {}
        if kind == "runner_on_unreachable":
            self.gathered.unreachable[host] = f"unreachable: {str(res.get('msg', '')).strip()}"
        elif kind == "runner_on_failed":
            msg = res.get("msg") or res.get("stderr") or res.get("stdout") or "failed"
            self.gathered.unreachable[host] = f"the collector failed: {str(msg).strip()[:500]}"
        elif kind == "runner_on_ok" and data.get("task") == COLLECT_TASK:
            try:
                data = json.loads(res.get("stdout") or "")
                if isinstance(data, dict) and "error" in data and "gpu_source" not in data:
                    self.gathered.unreachable[host] = f"the collector refused its options: {data['error']}"
                    return
                self.gathered.readings[host] = Readings.from_dict(data, host=host)
            except ValueError as exc:
                self.gathered.unreachable[host] = f"the collector's output is not readings JSON: {exc}"


def gather_local() -> Gathered:
    """This machine, read in-process (no Ansible): the API key for /health/ready from DEEPSEEK_NODE_API_KEY."""
    from deepseek_node.doctor.collect import collect
    from deepseek_node.doctor.readings import Readings

    data = collect({"api_key": os.environ.get("DEEPSEEK_NODE_API_KEY", "")})
    return Gathered(readings={data["host"]: Readings.from_dict(data)})


def gather_inventory(
    inventory: Path, limit: str | None, artifacts_dir: Path | None, verbose: int
) -> Gathered:
    from deepseek_node.paths import artifacts_root
    from deepseek_node.runner import RunConfig, run

    cfg = RunConfig(
        inventory=inventory,
        playbook=DOCTOR_PLAYBOOK,
        limit=limit,
        artifacts_dir=artifacts_dir or artifacts_root() / "doctor",
        verbosity=verbose,
    )
    collector = ReadingsCollector()
    result = run(cfg, on_event=collector)
    gathered = collector.gathered
    gathered.failures = [
        line for line in result.failures if not any(line.startswith(f"{h}:") for h in gathered.unreachable)
    ]
    return gathered


def gather(inventory: Path | None, limit: str | None, artifacts_dir: Path | None, verbose: int) -> Gathered:
    """Hosts -> readings: the seam tests replace with recorded readings."""
    if inventory is None:
        return gather_local()
    return gather_inventory(inventory, limit, artifacts_dir, verbose)


def register(app: typer.Typer) -> None:
    @app.command("doctor")
    def doctor_cmd(
        inventory: Path = typer.Option(
            None, "-i", "--inventory", help="Inventory file or directory (default: check this machine)."
        ),
        limit: str = typer.Option(None, "--limit", "-l", help="Limit to hosts or groups (Ansible pattern)."),
        as_json: bool = typer.Option(False, "--json", help="Print the findings as JSON."),
        problems_only: bool = typer.Option(
            False, "--problems", help="Leave the passing checks out of the table."
        ),
        artifacts_dir: Path = typer.Option(
            None,
            help="Where run artifacts are kept (default ./artifacts/doctor, apart from `provision run`'s).",
        ),
        verbose: int = typer.Option(0, "--verbose", "-v", count=True),
    ) -> None:
        """Find why a node is slow or down; changes nothing.

        Checks driver/CUDA and driver/library versions, persistence mode, clock throttling and its reason,
        power cap, temperature, ECC errors and remapped rows, Xid events in this boot's kernel log, GPU
        memory against the plan, the daemon's units and /health/ready, certificate expiry and disk space
        where models live. Each finding says what was seen and the fix.

        Without -i it checks this machine (the API key for /health/ready from DEEPSEEK_NODE_API_KEY).
        Limits are inventory variables: deepseek_doctor_temperature_warn_c (80), _temperature_fail_c (85),
        _cert_warn_days (14), _disk_warn_free_pct (10), _disk_fail_free_pct (3), _memory_warn_pct (95).

        Exit code: 0 all ok, 1 warnings only, 2 failures (an unreachable host or bad input counts as a failure).
        """
        from deepseek_node.doctor.checks import Finding, run_checks
        from deepseek_node.doctor.report import as_json as report_json
        from deepseek_node.doctor.report import findings_table
        from deepseek_node.runner import RunError

        if limit and inventory is None:
            fail("--limit needs an inventory: pass -i INVENTORY (without -i, doctor checks this machine)")
        try:
            gathered = gather(inventory, limit, artifacts_dir, verbose)
        except RunError as exc:
            fail(str(exc))
        if not gathered.readings and not gathered.unreachable:
            fail("; ".join(gathered.failures) or "no host answered: check the inventory and --limit")
        by_host: dict[str, list[Finding]] = {}
        for host, readings in gathered.readings.items():
            try:
                by_host[host] = run_checks(readings)
            except ValueError as exc:  # a threshold variable that is not a number
                fail(f"{host}: {exc}")
        report = report_json(by_host, gathered.unreachable)
        if as_json:
            print(json.dumps(report, indent=2))
        else:
            for host in sorted(by_host):
                console.print(findings_table(host, by_host[host], show_ok=not problems_only))
            for host, why in sorted(gathered.unreachable.items()):
                console.print(f"[bold red]{host}: no readings[/]: {why}", highlight=False)
            for line in gathered.failures:
                console.print(f"[red]failed:[/] {line}", highlight=False)
            console.print(f"overall: {report['status']}", highlight=False)
        raise typer.Exit(report["exit_code"])
