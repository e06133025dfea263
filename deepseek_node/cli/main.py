"""Entry point of `provision`: each concern registers its commands from its own module."""

from __future__ import annotations

import typer

from deepseek_node.cli import bundle, check, demo, doctor, history, lab, model, plan, run, serve
from deepseek_node.cli.errors import fail

app = typer.Typer(
    name="provision",
    help="Turn air-gapped bare-metal GPU servers into hardened DeepSeek inference nodes.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(lab.app, name="lab")
app.add_typer(bundle.app, name="bundle")
app.add_typer(model.app, name="model")
app.add_typer(history.app, name="history")
run.register(app)
serve.register(app)
plan.register(app)
demo.register(app)
check.register(app)
doctor.register(app)


def _version(value: bool) -> None:
    if value:
        from deepseek_node import __version__

        typer.echo(f"deepseek-node {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """Turn air-gapped bare-metal GPU servers into hardened DeepSeek inference nodes."""


def main() -> None:
    """Console entry: errors every command can hit are reported as one clear line, not a traceback."""
    from deepseek_node.paths import ProjectNotFound

    try:
        app()
    except ProjectNotFound as exc:
        fail(str(exc))


if __name__ == "__main__":
    main()
