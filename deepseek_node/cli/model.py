"""`provision model` commands."""

from __future__ import annotations

from pathlib import Path

import typer

from deepseek_node.cli.errors import fail

app = typer.Typer(
    help="Models: build a tiny test model; roll a fleet back to its previous model version.",
    no_args_is_help=True,
)


@app.command("make-tiny")
def make_tiny(
    out: Path = typer.Option(..., "--out", help="Directory to create (must be empty or absent)."),
    arch: str = typer.Option("deepseek_v3", help="deepseek_v3 (MLA + MoE) or llama."),
    layers: int = typer.Option(2, min=1, max=16),
    hidden_size: int = typer.Option(64, min=16, max=1024),
    fp8: bool = typer.Option(
        False,
        "--fp8",
        help="Write DeepSeek-R1's native fp8 checkpoint (128x128 block-quantized weights); loading it "
        "needs an fp8-capable GPU.",
    ),
) -> None:
    """Create a small random-weight DeepSeek-architecture model with a locally trained tokenizer.

    The DeepSeek-V3 model is written in the published checkpoint layout, so it loads in transformers
    and in vLLM alike.
    """
    from deepseek_node.tiny_model import TinyModelSpec, check_out, check_spec, make_tiny_model

    if arch not in ("deepseek_v3", "llama"):
        fail(f"--arch {arch!r} is not supported: use deepseek_v3 or llama")
    if fp8 and arch != "deepseek_v3":
        fail("--fp8 writes DeepSeek-V3/R1's native checkpoint format: use it with --arch deepseek_v3")
    spec = TinyModelSpec(arch=arch, layers=layers, hidden_size=hidden_size, fp8=fp8)  # type: ignore[arg-type]
    try:
        check_spec(spec)
    except ValueError as exc:
        fail(f"--hidden-size: {exc}")
    try:
        check_out(out)  # before the slow imports of torch and transformers
        path = make_tiny_model(out, spec)
    except OSError as exc:
        if exc.strerror:  # a system error, e.g. no space or permission denied
            where = f" ({exc.filename})" if exc.filename else ""
            fail(f"cannot write the model to {out}: {exc.strerror}{where}; nothing was left behind")
        fail(str(exc))
    typer.echo(f"tiny {arch}{' fp8' if fp8 else ''} model written to {path}")


@app.command("rollback")
def rollback(
    inventory: Path = typer.Option(..., "-i", "--inventory", help="Inventory file or directory."),
    limit: str = typer.Option(None, "--limit", "-l", help="Limit to hosts or groups (Ansible pattern)."),
    to: str = typer.Option(
        None,
        "--to",
        help="Version to return to (a directory under <models_dir>/<name>/); default: the previous one.",
    ),
    artifacts_dir: Path = typer.Option(None, help="Where run artifacts are kept (default ./artifacts)."),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True),
) -> None:
    """Point each host's model back at the version it served before (or --to), restart the daemon and
    check it answers: host by host like a rollout (deepseek_serial), stopping at the first host that fails."""
    import re

    from rich.console import Console

    from deepseek_node.cli.run import run_and_report
    from deepseek_node.runner import RunConfig

    if to is not None and (not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", to) or to == "current"):
        fail(
            f"--to {to!r} is not a model version: use the version's directory name (letters, digits, '.', '_', '-')"
        )
    console = Console()
    cfg = RunConfig(
        inventory=inventory,
        playbook="playbooks/model_rollback.yml",
        limit=limit,
        extravars={"inference_daemon_model_rollback_to": to} if to else {},
        artifacts_dir=artifacts_dir,
        verbosity=verbose,
    )
    run_and_report(console, cfg)
