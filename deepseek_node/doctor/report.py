"""Findings for people (a rich table per host) and for tools (--json), and the exit code."""

from __future__ import annotations

from typing import Any

from rich.table import Table

from deepseek_node.doctor.checks import Finding
from deepseek_node.doctor.severity import Severity, exit_code, worst

_STYLE = {Severity.OK: "green", Severity.WARN: "yellow", Severity.FAIL: "bold red"}


def findings_table(host: str, findings: list[Finding], show_ok: bool = True) -> Table:
    status = worst(f.severity for f in findings)
    table = Table(title=f"{host}: {status.value}", title_justify="left", show_lines=False, expand=False)
    table.add_column("check", no_wrap=True)
    table.add_column("", no_wrap=True)
    table.add_column("seen")
    table.add_column("fix")
    order = sorted(findings, key=lambda f: -f.severity.rank)
    for f in order:
        if f.severity is Severity.OK and not show_ok:
            continue
        table.add_row(
            f.check,
            f"[{_STYLE[f.severity]}]{f.severity.value}[/]",
            f.seen,
            f.fix,
        )
    return table


def as_json(by_host: dict[str, list[Finding]], unreachable: dict[str, str] | None = None) -> dict[str, Any]:
    """`{"status", "exit_code", "hosts": [{"host", "status", "findings": [...]}]}`; unreachable hosts fail."""
    hosts = []
    severities: list[Severity] = []
    for host in sorted(set(by_host) | set(unreachable or {})):
        findings = list(by_host.get(host, []))
        if unreachable and host in unreachable:
            findings.append(
                Finding(host, "reachable", Severity.FAIL, unreachable[host], "check ssh to the host")
            )
        status = worst(f.severity for f in findings)
        severities.append(status)
        hosts.append({"host": host, "status": status.value, "findings": [f.to_dict() for f in findings]})
    overall = worst(severities)
    return {"status": overall.value, "exit_code": exit_code(severities), "hosts": hosts}
