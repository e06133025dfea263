"""`provision demo`: the whole product on the local lab, end to end."""

from __future__ import annotations

import time
from pathlib import Path

import typer
from rich.console import Console
from rich.panel import Panel

from deepseek_node.cli.errors import fail
from deepseek_node.cli.progress import run_with_progress, summary_table

console = Console()


def register(app: typer.Typer) -> None:
    @app.command()
    def demo(
        hosts: int = typer.Option(1, "--hosts", min=1, max=8, help="Lab targets to provision."),
        bundle_out: Path = typer.Option(
            None, "--bundle", help="Where to build the bundle (default in the cache)."
        ),
        prompt: str = typer.Option("Hello! What can you do?", help="The chat message to send."),
    ) -> None:
        """Lab up → offline bundle → site.yml → a chat completion from the target over TLS."""
        from deepseek_node.bundle.manifest import BundleError
        from deepseek_node.demo import build_demo_bundle, chat, endpoint_for, write_lab_group_vars
        from deepseek_node.lab import Lab, LabError
        from deepseek_node.paths import cache_dir
        from deepseek_node.runner import RunConfig, RunError, run

        started = time.monotonic()

        def step(msg: str) -> None:
            console.print(
                f"[bold cyan]==>[/] {msg} [dim]({time.monotonic() - started:.0f}s)[/]", highlight=False
            )

        try:
            step(f"lab: booting {hosts} Debian 12 target(s) with no route out")
            lab = Lab()
            targets = lab.up(count=hosts)
            for t in targets:
                console.print(f"    {t.name} at {t.address} (controller side {t.controller_address})")
            out = (bundle_out or cache_dir() / "demo-bundle").resolve()
            step(f"bundle: building {out}")
            build_demo_bundle(out, say=lambda m: console.print(f"    {m}", highlight=False))
            inventory_dir = lab.inventory_path.parent
            write_lab_group_vars(inventory_dir, out)
            step(f"site.yml: provisioning {', '.join(t.name for t in targets)} through ansible-runner")
            result = run_with_progress(console, run, RunConfig(inventory=lab.inventory_path))
        except (LabError, BundleError, RunError) as exc:
            fail(str(exc))
        console.print(summary_table(result))
        if not result.ok:
            for line in result.failures:
                console.print(f"[red]failed:[/] {line}", highlight=False)
            fail(f"site.yml failed; run artifacts in {result.artifacts}", code=1)

        ep = endpoint_for(targets[0].address, inventory_dir)
        step(f"chat: POST {ep.base_url}/chat/completions (TLS, lab CA, API key)")
        answer = chat(ep, prompt)
        streamed = chat(ep, prompt, stream=True)
        console.print(
            Panel(
                f"[bold]user:[/] {prompt}\n[bold]{ep.model}:[/] {answer}\n[bold]{ep.model} (streamed):[/] {streamed}",
                title=f"{targets[0].name} answered over TLS",
                subtitle="random-weight tiny model: the words are noise, the path is real",
            )
        )
        step("done")
        console.print(
            f"Try it: provision lab ssh {targets[0].name}   |   "
            f'curl --cacert {ep.ca_cert} -H "Authorization: Bearer $(cat {inventory_dir}/secrets/api_key)" '
            f"{ep.base_url}/models   |   tear down: provision lab down",
            highlight=False,
            soft_wrap=True,
        )
