"""`provision run`: site.yml through ansible-runner with a live per-host view."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from deepseek_node.cli.errors import fail
from deepseek_node.cli.progress import run_with_progress, summary_table

if TYPE_CHECKING:
    from deepseek_node.runner import RunConfig

console = Console()


def run_and_report(console: Console, cfg: RunConfig) -> None:
    """Run `cfg` with the live per-host view, print the summary and every failure; exit 1 on any."""
    from deepseek_node.runner import RunError, run

    try:
        result = run_with_progress(console, run, cfg)
    except RunError as exc:
        fail(str(exc))
    console.print(summary_table(result))
    for line in result.failures:
        console.print(f"[red]failed:[/] {line}", highlight=False)
    if not result.ok:
        raise typer.Exit(1)


def register(app: typer.Typer) -> None:
    @app.command("run")
    def run_cmd(
        inventory: Path = typer.Option(..., "-i", "--inventory", help="Inventory file or directory."),
        limit: str = typer.Option(None, "--limit", "-l", help="Limit to hosts or groups (Ansible pattern)."),
        tags: list[str] = typer.Option(
            [], "--tags", "-t", help="Run only these concerns (repeat or comma list)."
        ),
        skip_tags: list[str] = typer.Option([], "--skip-tags"),
        check: bool = typer.Option(False, "--check", help="Dry run: report what would change."),
        diff: bool = typer.Option(False, "--diff", help="Show file differences."),
        playbook: str = typer.Option("site.yml", help="Playbook relative to the project root."),
        artifacts_dir: Path = typer.Option(None, help="Where run artifacts are kept (default ./artifacts)."),
        canary_go: bool = typer.Option(
            False,
            "--canary-go",
            help="Go on past the inventory's `canary` group: a roll without it stops after the canary hosts.",
        ),
        verbose: int = typer.Option(0, "--verbose", "-v", count=True),
    ) -> None:
        """Run site.yml (or one playbook) against an inventory; non-zero exit on any failure."""
        from deepseek_node.runner import RunConfig

        cfg = RunConfig(
            inventory=inventory,
            playbook=playbook,
            limit=limit,
            tags=[t for tag in tags for t in tag.split(",") if t],
            skip_tags=[t for tag in skip_tags for t in tag.split(",") if t],
            check=check,
            diff=diff,
            artifacts_dir=artifacts_dir,
            verbosity=verbose,
            extravars={"deepseek_canary_go": True} if canary_go else {},
        )
        run_and_report(console, cfg)
