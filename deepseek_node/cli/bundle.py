"""`provision bundle` commands."""

from __future__ import annotations

import typer

app = typer.Typer(help="bundle", no_args_is_help=True)
