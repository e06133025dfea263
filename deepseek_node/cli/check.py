"""`provision check`: the preflight role in check mode on every host — can it be provisioned, and does it get
the GPU stack? Nothing on the hosts changes; the answer is a table (or JSON) and the exit code."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from deepseek_node.cli.errors import fail

console = Console()
PREFLIGHT_PLAYBOOK = "playbooks/preflight.yml"


@dataclass
class HostCheck:
    host: str
    os: str = "?"
    kernel: str = "?"
    kernel_headers: str = "?"
    gpus: list[str] = field(default_factory=list)
    nvswitches: int = 0
    secure_boot: bool | None = None
    virtualization: str = "?"
    models_free_gib: float | None = None
    nvml: str = "?"
    gpu_stack: str = "?"
    reason: str = ""
    warnings: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    unreachable: bool = False

    @property
    def ok(self) -> bool:
        return not self.failures and not self.unreachable


class CheckCollector:
    """Runner event handler: picks each host's facts and decision out of the preflight run."""

    def __init__(self) -> None:
        self.hosts: dict[str, HostCheck] = {}

    def _host(self, name: str) -> HostCheck:
        return self.hosts.setdefault(name, HostCheck(name))

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event", "")
        data = event.get("event_data") or {}
        name = data.get("host")
        if not name or not kind.startswith("runner_on_"):
            return
        res = data.get("res") or {}
        h = self._host(name)
        if kind == "runner_on_unreachable":
            h.unreachable = True
            h.failures.append(str(res.get("msg", "unreachable")).strip())
            return
        if kind == "runner_on_failed" and not data.get("ignore_errors"):
            msg = res.get("msg") or res.get("stderr") or "failed"
            h.failures.append(f"{data.get('task', '')}: {str(msg).strip()}")
            return
        if kind != "runner_on_ok":
            return
        facts = res.get("ansible_facts") or {}
        if "ansible_distribution" in facts:
            h.os = f"{facts['ansible_distribution']} {facts.get('ansible_distribution_version', '')}".strip()
        if isinstance(res.get("facts"), dict) and "pci" in res["facts"]:
            self._probe(h, res["facts"])
        if isinstance(facts.get("preflight_gpu"), dict):
            self._decision(h, facts["preflight_gpu"])

    @staticmethod
    def _probe(h: HostCheck, probe: dict[str, Any]) -> None:
        h.kernel = probe.get("kernel") or "?"
        h.models_free_gib = (probe.get("disk") or {}).get("free_gib")
        nv = probe.get("nvml") or {}
        h.nvml = f"driver {nv.get('driver_version')}" if nv.get("available") else str(nv.get("error") or "-")

    @staticmethod
    def _decision(h: HostCheck, d: dict[str, Any]) -> None:
        gpus = d.get("nvml_gpus") or d.get("gpus") or []
        h.gpus = [
            g.get("name", "?") + (f" ({g['compute_capability']})" if g.get("compute_capability") else "")
            for g in gpus
        ]
        h.nvswitches = int(d.get("nvswitch_count") or 0)
        h.secure_boot = bool(d.get("secure_boot"))
        h.virtualization = d.get("virtualization") or "?"
        h.kernel_headers = d.get("kernel_headers") or "?"
        if d.get("install"):
            h.gpu_stack = "install (golden image)" if d.get("golden_image") else "install"
            if d.get("fabric_manager"):
                h.gpu_stack += " + Fabric Manager"
        else:
            h.gpu_stack = "skip"
        h.reason = d.get("reason") or ""
        h.warnings = list(d.get("warnings") or [])


def _gpu_summary(names: list[str]) -> str:
    if not names:
        return "none"
    counts: dict[str, int] = {}
    for n in names:
        counts[n] = counts.get(n, 0) + 1
    return ", ".join(f"{c}x {n}" for n, c in counts.items())


def check_table(hosts: list[HostCheck]) -> Table:
    table = Table(title="preflight (check mode: nothing was changed)")
    for col in (
        "host",
        "OS",
        "kernel (headers)",
        "GPUs",
        "NVSwitch",
        "Secure Boot",
        "virt",
        "free GiB",
        "GPU stack",
    ):
        table.add_column(col)
    for h in hosts:
        table.add_row(
            h.host,
            h.os,
            f"{h.kernel} ({h.kernel_headers})",
            _gpu_summary(h.gpus),
            str(h.nvswitches),
            "?" if h.secure_boot is None else ("on" if h.secure_boot else "off"),
            h.virtualization,
            "?" if h.models_free_gib is None else f"{h.models_free_gib:g}",
            "FAILED" if not h.ok else h.gpu_stack,
            style="red" if not h.ok else None,
        )
    return table


def register(app: typer.Typer) -> None:
    @app.command("check")
    def check_cmd(
        inventory: Path = typer.Option(..., "-i", "--inventory", help="Inventory file or directory."),
        limit: str = typer.Option(None, "--limit", "-l", help="Limit to hosts or groups (Ansible pattern)."),
        as_json: bool = typer.Option(False, "--json", help="Print the per-host results as JSON."),
        artifacts_dir: Path = typer.Option(
            None,
            help="Where run artifacts are kept (default ./artifacts/check, apart from `provision run`'s).",
        ),
        verbose: int = typer.Option(0, "--verbose", "-v", count=True),
    ) -> None:
        """Check every host can be provisioned and say whether it gets the GPU stack; changes nothing.

        Runs the preflight role in check mode: OS, kernel and its headers, GPUs by PCI id (NVML once a driver
        exists), NVSwitches, Secure Boot, virtualization, free disk. Exit 1 when any host cannot be provisioned.
        """
        from deepseek_node.paths import artifacts_root
        from deepseek_node.runner import RunConfig, RunError, run

        cfg = RunConfig(
            inventory=inventory,
            playbook=PREFLIGHT_PLAYBOOK,
            limit=limit,
            check=True,
            # ansible-runner keeps a run's --check and extra vars in its data dir for the next run there.
            artifacts_dir=artifacts_dir or artifacts_root() / "check",
            verbosity=verbose,
        )
        collector = CheckCollector()
        try:
            result = run(cfg, on_event=collector)
        except RunError as exc:
            fail(str(exc))
        hosts = [collector.hosts[n] for n in sorted(collector.hosts)]
        if as_json:
            print(json.dumps([asdict(h) | {"ok": h.ok} for h in hosts], indent=2))
        else:
            console.print(check_table(hosts))
            for h in hosts:
                if h.ok and h.reason:
                    console.print(f"[bold]{h.host}[/]: {h.reason}", highlight=False)
                for w in h.warnings:
                    console.print(f"[yellow]{h.host}: {w}[/]", highlight=False)
                for f in h.failures:
                    console.print(f"[red]{h.host}: cannot be provisioned: {f}[/]", highlight=False)
            for line in result.failures:
                if not any(line.startswith(h.host + ":") for h in hosts):
                    console.print(f"[red]failed:[/] {line}", highlight=False)
        if not result.ok or not all(h.ok for h in hosts):
            raise typer.Exit(1)
