"""`provision serve`: run the inference daemon in the foreground on a local model directory.

It builds the same `DaemonConfig` the Ansible role renders as YAML, so a local trial exercises exactly the
production daemon (TLS, API keys, audit, metrics). Without --api-key a key is generated and shown once;
only its hash is kept, as on a node.
"""

from __future__ import annotations

import os
from pathlib import Path

import typer

from deepseek_node.cli.errors import fail


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        model_dir: Path = typer.Option(
            ..., "--model-dir", help="Hugging Face model directory (local files only)."
        ),
        host: str = typer.Option("127.0.0.1", help="Address to listen on."),
        port: int = typer.Option(8443, min=1, max=65535, help="Port to listen on."),
        api_key: str | None = typer.Option(
            None, "--api-key", envvar="DEEPSEEK_NODE_API_KEY", help="Client key (default: generate one)."
        ),
        tls_cert: Path | None = typer.Option(None, "--tls-cert", help="PEM certificate (with --tls-key)."),
        tls_key: Path | None = typer.Option(None, "--tls-key", help="PEM private key (with --tls-cert)."),
        served_name: str | None = typer.Option(
            None, "--served-name", help="Model id in the API (default: dir name)."
        ),
        max_context: int = typer.Option(2048, "--max-context", min=16, help="Prompt + completion tokens."),
        device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    ) -> None:
        """Serve a model over the OpenAI-compatible API in the foreground (Ctrl-C drains and stops)."""
        from deepseek_node.daemon.auth import generate_key, hash_key
        from deepseek_node.daemon.config import ConfigError, parse_config

        if not model_dir.is_dir():
            fail(f"--model-dir {model_dir} is not a directory")
        if (tls_cert is None) != (tls_key is None):
            fail("--tls-cert and --tls-key go together: give both (HTTPS) or neither (plain HTTP)")
        for f in (tls_cert, tls_key):
            if f is not None and not f.is_file():
                fail(f"{f} does not exist")
        generated = api_key is None
        key = api_key or generate_key()
        data = {
            "model": {
                "path": str(model_dir.resolve()),
                "served_name": served_name or model_dir.resolve().name,
                "max_context": max_context,
                "device": device,
            },
            "server": {
                "host": host,
                "port": port,
                "tls_cert": str(tls_cert) if tls_cert else None,
                "tls_key": str(tls_key) if tls_key else None,
            },
            "engine": {"default_max_tokens": min(256, max_context // 2)},
            "auth": {
                "api_keys": [
                    {"id": "local", "sha256": hash_key(key), "scopes": ["inference", "metrics", "admin"]}
                ]
            },
            "audit": {"path": None, "log_content": False, "redact": True},
            "plan": {"source": "provision serve"},
        }
        try:
            config = parse_config(data, "provision serve")
        except ConfigError as exc:
            fail(str(exc))
        if generated:
            # Shown once on stderr (stdout carries the audit JSON lines); only the hash is kept.
            typer.echo(f"API key (shown once, keep it): {key}", err=True)
        scheme = "https" if tls_cert else "http"
        typer.echo(
            f"OpenAI base URL: {scheme}://{host}:{port}/v1  model: {config.model.served_name}", err=True
        )
        os.environ["HF_HUB_OFFLINE"] = "1"
        from deepseek_node.daemon.server import run

        code = run(config)
        if code:
            raise typer.Exit(code)
