"""`provision lab up|down|status|ssh`: throwaway Debian 12 or 13 targets on this machine (systemd-nspawn)."""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import time
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from deepseek_node.cli.errors import fail

if TYPE_CHECKING:
    from deepseek_node.lab import Lab

app = typer.Typer(
    help="Throwaway Debian 12 (or 13) target hosts on this machine (systemd-nspawn, needs root).",
    no_args_is_help=True,
)
console = Console()


def _lab(suite: str | None = None) -> Lab:
    # imported lazily so `provision --help` stays fast
    from deepseek_node.lab import Lab
    from deepseek_node.lab.rootfs import DEFAULT_SUITE

    if os.geteuid() != 0:
        fail("the lab needs root (it mounts overlays and boots containers): run `sudo provision lab ...`")
    logging.getLogger("deepseek_node.lab").setLevel(logging.INFO)
    if not any(isinstance(h, RichHandler) for h in logging.getLogger("deepseek_node.lab").handlers):
        handler = RichHandler(console=console, show_time=False, show_path=False, show_level=False)
        logging.getLogger("deepseek_node.lab").addHandler(handler)
    return Lab(suite=suite or DEFAULT_SUITE)


@app.command()
def up(
    hosts: int = typer.Option(1, "--hosts", "-n", min=1, max=254, help="How many target hosts to run."),
    timeout: float = typer.Option(90.0, help="Seconds to wait for sshd on every host."),
    suite: str = typer.Option(
        "bookworm",
        help="Debian release of the targets, as its apt suite: bookworm (Debian 12) or trixie (Debian 13). "
        "One lab runs one release: `lab down` before switching.",
    ),
) -> None:
    """Boot N targets (keeps running ones; builds the release's Debian rootfs once) and write the lab
    inventory."""
    from deepseek_node.lab import LabError
    from deepseek_node.lab.rootfs import validate_suite
    from deepseek_node.paths import ProjectNotFound

    try:
        validate_suite(suite)  # before the root check: a typo is named whoever runs it
    except ValueError as exc:
        fail(f"--suite: {exc}")
    lab = _lab(suite)
    start = time.monotonic()
    try:
        booted = lab.up(count=hosts, timeout=timeout)
    except ValueError as exc:
        fail(str(exc))
    except (LabError, ProjectNotFound) as exc:
        fail(str(exc), code=1)
    table = Table("host", "address", "controller", "supervisor pid")
    for h in booted:
        table.add_row(h.name, h.address, h.controller_address, str(h.pid))
    console.print(table)
    console.print(f"[green]lab up[/] in {time.monotonic() - start:.1f} s; inventory: {lab.inventory_path}")
    console.print(f"ssh: [bold]provision lab ssh {booted[0].name}[/]", highlight=False)


@app.command()
def down() -> None:
    """Stop every target and remove its overlay, veth link and the lab inventory."""
    from deepseek_node.lab import LabError
    from deepseek_node.paths import ProjectNotFound

    lab = _lab()
    try:
        lab.down()
    except (LabError, ProjectNotFound) as exc:
        fail(str(exc), code=1)
    console.print("[green]lab down[/]")


@app.command()
def status() -> None:
    """Show each target: address, supervisor pid, running, ssh reachable."""
    lab = _lab()
    rows = lab.status()
    if not rows:
        console.print("no lab hosts; start some with [bold]provision lab up --hosts N[/]")
        return
    table = Table("host", "address", "pid", "running", "ssh")
    yes, no = "[green]yes[/]", "[red]no[/]"
    for s in rows:
        table.add_row(s.name, s.address, str(s.pid or "-"), yes if s.running else no, yes if s.ssh_ok else no)
    console.print(table)


@app.command(context_settings={"allow_interspersed_args": False})
def ssh(
    name: str = typer.Argument(..., help="Lab host name, e.g. dsn1."),
    command: list[str] | None = typer.Argument(None, help="Command to run (after --); none: a shell."),
) -> None:
    """Open a root shell on a target, or run `-- CMD ...` there and exit with its status."""
    from deepseek_node.lab import LabError, UnknownHostError

    lab = _lab()
    try:
        argv = lab.ssh_argv(name)
    except UnknownHostError as exc:
        fail(str(exc))
    except LabError as exc:
        fail(str(exc), code=1)
    if command and command[0] == "--":  # click keeps the separator when interspersed args are off
        command = command[1:]
    if not command:
        os.execvp(argv[0], argv)
    # One argument is passed through as a shell command line; several are quoted word by word.
    remote = command[0] if len(command) == 1 else shlex.join(command)
    raise typer.Exit(subprocess.run([*argv, "--", remote]).returncode)
