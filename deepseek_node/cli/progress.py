"""A live per-host view of an Ansible run, and the final per-host summary table."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.live import Live
from rich.table import Table

from deepseek_node.runner import RunResult


class HostProgress:
    """Feed it runner events; it keeps one row per host: current task and running counts."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}
        self.play = ""

    def __call__(self, event: dict[str, Any]) -> None:
        kind = event.get("event", "")
        data = event.get("event_data", {})
        if kind == "playbook_on_play_start":
            self.play = data.get("play", "")
            return
        host = data.get("host")
        if not host or not kind.startswith("runner_on_"):
            return
        row = self.rows.setdefault(host, {"task": "", "ok": 0, "changed": 0, "failed": 0, "unreachable": 0})
        row["task"] = data.get("task", "")
        if kind == "runner_on_ok":
            row["ok"] += 1
            if (data.get("res") or {}).get("changed"):
                row["changed"] += 1
        elif kind == "runner_on_failed" and not data.get("ignore_errors"):
            row["failed"] += 1
        elif kind == "runner_on_unreachable":
            row["unreachable"] += 1

    def table(self) -> Table:
        table = Table(title=f"play: {self.play}" if self.play else None, expand=False)
        for col in ("host", "ok", "changed", "failed", "unreachable", "current task"):
            table.add_column(col)
        for host, row in sorted(self.rows.items()):
            style = "red" if row["failed"] or row["unreachable"] else None
            table.add_row(
                host, str(row["ok"]), str(row["changed"]), str(row["failed"]), str(row["unreachable"]),
                row["task"][:70], style=style,
            )  # fmt: skip
        return table


def run_with_progress(console: Console, fn, *args: Any) -> RunResult:
    """Run `fn(*args, on_event=...)` with a live table when attached to a terminal, else one line per task."""
    progress = HostProgress()
    if console.is_terminal:
        with Live(progress.table(), console=console, refresh_per_second=4) as live:

            def on_event(event: dict[str, Any]) -> None:
                progress(event)
                live.update(progress.table())

            return fn(*args, on_event=on_event)

    def on_line(event: dict[str, Any]) -> None:
        progress(event)
        data = event.get("event_data", {})
        if event.get("event") == "playbook_on_task_start":
            console.print(f"  task: {data.get('task', '')}", highlight=False)

    return fn(*args, on_event=on_line)


def summary_table(result: RunResult) -> Table:
    table = Table(title=f"{result.status} in {result.seconds:.0f}s", caption=f"artifacts: {result.artifacts}")
    for col in ("host", "ok", "changed", "failed", "unreachable", "skipped"):
        table.add_column(col)
    for host, s in sorted(result.hosts.items()):
        bad = s.failed or s.unreachable
        table.add_row(
            host, str(s.ok), str(s.changed), str(s.failed), str(s.unreachable), str(s.skipped),
            style="red" if bad else ("yellow" if s.changed else "green"),
        )  # fmt: skip
    return table
