"""`provision history`: every run's summary (who, when, what, where, what changed, result), newest first."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from deepseek_node.cli.errors import fail

app = typer.Typer(
    help="The trail of every `provision run`: who ran what, where, and what changed.",
    invoke_without_command=True,
    no_args_is_help=False,
)

ARTIFACTS_HELP = "Where run artifacts are kept (default ./artifacts, as for `provision run`)."


def _base(artifacts_dir: Path | None) -> Path:
    from deepseek_node.paths import artifacts_root

    return (artifacts_dir or artifacts_root()).resolve()


def _who(run: dict[str, Any]) -> str:
    user = str(run.get("user") or "?")
    return f"{run['sudo_user']} (as {user})" if run.get("sudo_user") else user


def _what(run: dict[str, Any]) -> str:
    parts = [str(run.get("playbook") or "?")]
    if run.get("tags"):
        parts.append("tags " + ",".join(run["tags"]))
    if run.get("limit"):
        parts.append(f"limit {run['limit']}")
    if run.get("check"):
        parts.append("--check")
    return " ".join(parts)


def _totals(run: dict[str, Any]) -> dict[str, int]:
    hosts = run.get("hosts") or {}
    return {
        k: sum(int((h or {}).get(k) or 0) for h in hosts.values())
        for k in ("ok", "changed", "failed", "unreachable")
    }


def history_lines(runs: list[dict[str, Any]]) -> list[str]:
    """Two lines per run (rich markup): what identifies it, then what it did; readable in any terminal."""
    lines = []
    for r in runs:
        t = _totals(r)
        result = "[green]ok[/]" if r.get("result") == "ok" else "[bold red]failed[/]"
        started = str(r.get("started_at", "?")).replace("+00:00", "").replace("T", " ")[:16]
        took = f"{float(r.get('duration_s') or 0):.0f}s"
        lines.append(f"[bold]{r['id']}[/]  {started} UTC  {result}  {_who(r)}  {took}")
        hosts = len(r.get("hosts") or {})
        lines.append(
            f"    {_what(r)}: {hosts} host(s), {t['changed']} changed, {t['failed']} failed, "
            f"{t['unreachable']} unreachable"
        )
    return lines


@app.callback()
def history_cmd(
    ctx: typer.Context,
    inventory: Path = typer.Option(None, "-i", "--inventory", help="Only runs against this inventory."),
    as_json: bool = typer.Option(False, "--json", help="Print the summaries as JSON."),
    limit: int = typer.Option(20, "--limit", "-n", help="Show at most this many runs (0: all)."),
    artifacts_dir: Path = typer.Option(None, help=ARTIFACTS_HELP),
) -> None:
    """List runs newest first: who ran them, the command, tags and limit, hosts, changes and the result.

    Each `provision run` keeps summary.json in its artifacts directory; the directory keeps the newest
    DEEPSEEK_NODE_KEEP_RUNS runs (50 by default) and prunes older ones.
    """
    if ctx.invoked_subcommand is not None:
        return
    console = Console()
    from deepseek_node.history import list_runs

    if limit < 0:
        fail(f"--limit {limit}: give a number of runs >= 0 (0 shows all)")
    if inventory is not None and not inventory.exists():
        fail(f"inventory {inventory} does not exist: pass -i with the inventory the runs used")
    runs = list_runs(_base(artifacts_dir), inventory)
    shown = runs[:limit] if limit else runs
    if as_json:
        print(json.dumps(shown, indent=2))
        return
    if not runs:
        console.print(f"no runs recorded under {_base(artifacts_dir)}", highlight=False)
        return
    for line in history_lines(shown):
        console.print(line, highlight=False, soft_wrap=True)
    if len(shown) < len(runs):
        console.print(
            f"{len(runs) - len(shown)} older run(s) not shown: --limit 0 shows all", highlight=False
        )


@app.command("show")
def show_cmd(
    run: str = typer.Argument(..., help="A run id from `provision history` (a unique prefix will do)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON."),
    artifacts_dir: Path = typer.Option(None, help=ARTIFACTS_HELP),
) -> None:
    """One run in full: who, when, the command, tags, limit, check mode, bundle, and per host what changed."""
    from deepseek_node.history import HistoryError, find_run

    console = Console()
    try:
        summary = find_run(_base(artifacts_dir), run)
    except HistoryError as exc:
        fail(str(exc))
    if as_json:
        print(json.dumps(summary, indent=2))
        return
    for label, value in (
        ("run", summary["id"]),
        ("result", f"{summary.get('result')} (ansible {summary.get('status')}, rc {summary.get('rc')})"),
        ("who", _who(summary)),
        ("started", summary.get("started_at")),
        ("finished", summary.get("finished_at")),
        ("duration", f"{float(summary.get('duration_s') or 0):.1f}s"),
        ("command", summary.get("command")),
        ("playbook", summary.get("playbook")),
        ("inventory", summary.get("inventory")),
        ("tags", ",".join(summary.get("tags") or []) or "(all)"),
        ("skip tags", ",".join(summary.get("skip_tags") or []) or "-"),
        ("limit", summary.get("limit") or "-"),
        ("check mode", "yes" if summary.get("check") else "no"),
        ("bundle", summary.get("bundle_dir") or "?"),
        ("manifest sha256", summary.get("bundle_manifest_sha256") or "?"),
    ):
        console.print(f"[bold]{label}:[/] {value}", highlight=False)
    # Per host as lines, not a table: task names are long and the trail is read (and grepped) in full.
    for host, h in sorted((summary.get("hosts") or {}).items()):
        counts = " ".join(f"{k}={h.get(k, 0)}" for k in ("ok", "changed", "failed", "unreachable"))
        bad = h.get("failed") or h.get("unreachable")
        console.print(f"[bold {'red' if bad else 'green'}]{host}[/] {counts}", highlight=False)
        for task in h.get("changed_tasks") or []:
            console.print(f"  changed: {task}", highlight=False, soft_wrap=True)
        for task in h.get("failed_tasks") or []:
            console.print(f"  [red]failed:[/] {task}", highlight=False, soft_wrap=True)
    for line in summary.get("failures") or []:
        console.print(f"[red]failed:[/] {line}", highlight=False)
