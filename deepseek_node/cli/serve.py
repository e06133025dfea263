"""`provision serve`: run the inference daemon in the foreground on a local model directory.

It builds the same `DaemonConfig` the Ansible role renders as YAML, so a local trial exercises exactly the
production daemon (TLS, API keys, audit, metrics) in front of the same engine a node would choose: vLLM
where a vLLM build runs here (`--engine auto`), the builtin engine otherwise. Without --api-key-file (or
DEEPSEEK_NODE_API_KEY) a key is generated and shown once; only its hash is kept, as on a node. A key is
never taken on the command line: every local user can read a process's argv.
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import struct
from pathlib import Path
from typing import TYPE_CHECKING, Any

import typer

from deepseek_node.cli.errors import fail

if TYPE_CHECKING:
    from deepseek_node.daemon.config import ModelConfig

_MODEL_HINT = (
    "give a Hugging Face model directory (config.json, *.safetensors, tokenizer files), "
    "e.g. one made by `provision model make-tiny --out DIR`"
)
_REQUIRED_SIZES = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
_MAX_SAFETENSORS_HEADER = 100 * 2**20


def _check_model(model: ModelConfig) -> None:
    """The daemon's own pre-listen checks, plus what it would otherwise find only while loading (in a
    child process, after the server has started): config sizes, tokenizer JSON, safetensors headers."""
    from deepseek_node.daemon.config import ConfigError
    from deepseek_node.daemon.engines.builtin.loading import check_model_dir

    try:
        data = check_model_dir(model)
    except ConfigError as exc:
        message = str(exc).replace("model.path", "--model-dir").replace("model.max_context", "--max-context")
        if "max_position_embeddings" in message:
            fail(message.replace("lower max_context in the plan", "lower --max-context"))
        fail(f"{message}: {_MODEL_HINT}")
    text: Any = data.get("text_config") if isinstance(data.get("text_config"), dict) else data
    bad = [k for k in _REQUIRED_SIZES if not isinstance(text.get(k), int) or text[k] <= 0]
    if bad:
        fail(
            f"--model-dir {model.path}/config.json lacks positive integers for {', '.join(bad)}: "
            "restore the checkpoint's config.json"
        )
    for name in ("tokenizer.json", "tokenizer_config.json"):
        path = model.path / name
        if path.is_file():
            try:
                ok = isinstance(json.loads(path.read_text(encoding="utf-8")), dict)
            except (OSError, ValueError):
                ok = False
            if not ok:
                fail(
                    f"--model-dir {path} is not a valid JSON object: restore the checkpoint's tokenizer files"
                )
    for path in sorted(model.path.glob("*.safetensors")):
        problem = _safetensors_problem(path)
        if problem:
            fail(f"--model-dir {path} {problem}: copy the weights again (or rebuild the model)")


def _safetensors_problem(path: Path) -> str | None:
    """A safetensors file starts with an 8-byte little-endian length and that many bytes of JSON."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                return "is too short to be a safetensors file"
            (length,) = struct.unpack("<Q", head)
            if length > min(size - 8, _MAX_SAFETENSORS_HEADER):
                return "is not a safetensors file (its header length is impossible)"
            header = json.loads(fh.read(length).decode("utf-8"))
    except OSError as exc:
        return f"cannot be read ({exc.strerror or exc})"
    except ValueError:
        return "is not a safetensors file (its header is not JSON)"
    if not isinstance(header, dict):
        return "is not a safetensors file (its header is not a JSON object)"
    return None


def _check_tls(cert: Path, key: Path) -> None:
    """Load the pair as the server will; a passphrase-protected key is refused, not prompted for."""
    try:
        cert_text = cert.read_text(encoding="utf-8", errors="replace")
        key_text = key.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        fail(f"cannot read {exc.filename}: {exc.strerror or exc}; fix its permissions or give another file")
    if "-----BEGIN CERTIFICATE-----" not in cert_text:
        fail(f"--tls-cert {cert} is not a PEM certificate: give the server certificate (BEGIN CERTIFICATE)")
    if "ENCRYPTED" in key_text:
        fail(
            f"--tls-key {key} is passphrase-protected: the daemon cannot prompt for it; give an unencrypted "
            "copy (`openssl pkey -in KEY -out KEY.plain`, readable only by you)"
        )
    if "PRIVATE KEY-----" not in key_text:
        fail(f"--tls-key {key} is not a PEM private key: give the certificate's key (BEGIN PRIVATE KEY)")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(str(cert), str(key), password=lambda: b"")
    except OSError as exc:  # ssl.SSLError included
        reason = getattr(exc, "reason", None)
        detail = (
            "the key does not belong to the certificate"
            if reason == "KEY_VALUES_MISMATCH"
            else reason or re.sub(r"\s*\(_ssl\.c:\d+\)", "", str(exc.strerror or exc))
        )
        fail(
            f"--tls-cert {cert} / --tls-key {key} cannot be used ({detail}): give a PEM certificate and "
            "its matching unencrypted PEM private key"
        )


def _check_listen(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        fail(
            f"--host {host!r} is not an address of this machine ({getattr(exc, 'strerror', None) or exc}): "
            "use e.g. 127.0.0.1 (local only) or 0.0.0.0 (all interfaces)"
        )
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does
        try:
            probe.bind(address)
        except OSError as exc:
            fail(
                f"cannot listen on {host}:{port} ({exc.strerror or exc}): choose another --port, stop what "
                "holds this one, or give an address of this machine to --host"
            )


_MIN_KEY_LEN = 16


def _read_api_key(path: Path | None) -> str | None:
    """The client key from --api-key-file or DEEPSEEK_NODE_API_KEY; None: generate one."""
    if path is not None:
        try:
            key = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            fail(f"--api-key-file {path}: cannot read it ({exc.strerror or exc}); give a readable file")
        source = f"--api-key-file {path}"
    else:
        env = os.environ.get("DEEPSEEK_NODE_API_KEY")
        if env is None:
            return None
        key, source = env.strip(), "DEEPSEEK_NODE_API_KEY"
    if len(key) < _MIN_KEY_LEN:
        fail(
            f"{source} holds a key of {len(key)} characters: use at least {_MIN_KEY_LEN} (e.g. "
            "`openssl rand -base64 32`), or give none to have one generated and shown once"
        )
    return key


def _vllm_python_default() -> Path | None:
    from deepseek_node.paths import project_root

    for candidate in (
        project_root() / ".venv-vllm/bin/python",
        Path("/opt/deepseek-node/vllm-venv/bin/python"),
    ):
        if candidate.is_file():
            return candidate
    return None


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""
    return next((line for line in text.splitlines() if line.startswith("flags")), "")


def _choose_engine(requested: str, device: str, vllm_python: Path | None) -> Path | None:
    """The vLLM interpreter when vLLM serves, None for the builtin engine; refuses what cannot run here."""
    import platform

    from deepseek_node.planner import EngineUnavailableError, choose_engine

    if requested not in ("auto", "vllm", "builtin"):
        fail(f"--engine {requested!r} is not an engine: use auto, vllm or builtin")
    if requested == "builtin":
        return None
    python = vllm_python or _vllm_python_default()
    try:
        chosen, reason = choose_engine(
            requested,
            device="cuda" if device == "cuda" else "cpu",
            cpu_arch=platform.machine(),
            cpu_flags=_cpu_flags(),
        )
    except EngineUnavailableError as exc:
        fail(f"--engine vllm: {exc}; use --engine builtin")
    if chosen.value != "vllm":
        typer.echo(f"engine: builtin ({reason})", err=True)
        return None
    if python is None or not python.is_file():
        where = python or ".venv-vllm/bin/python or /opt/deepseek-node/vllm-venv/bin/python"
        if requested == "vllm":
            fail(
                f"--engine vllm: no vLLM interpreter at {where}: run scripts/setup.sh, or give --vllm-python"
            )
        typer.echo(f"engine: builtin (no vLLM virtualenv at {where})", err=True)
        return None
    typer.echo(f"engine: vllm ({reason}; {python})", err=True)
    return python


class _NoVllmPlan(Exception):
    pass


def _vllm_section(
    python: Path, model_dir: Path, data: dict[str, Any], hardware_profile: str | None
) -> dict[str, Any]:
    """vLLM's arguments for this model, rendered by the planner's one function, as a node's would be."""
    from deepseek_node.inventory import host_settings
    from deepseek_node.planner import PlannerInputError
    from deepseek_node.planner.engine_args import vllm_args, vllm_env

    profile = hardware_profile or ("cpu-only" if data["model"]["device"] != "cuda" else None)
    if profile is None:
        raise _NoVllmPlan("on a GPU it needs --hardware-profile (see `provision plan --list-profiles`)")
    try:
        settings = host_settings(
            "local",
            {
                "deepseek_hardware_profile": profile,
                "deepseek_model_dir": str(model_dir),
                "deepseek_max_context": data["model"]["max_context"],
                "deepseek_engine": "vllm",
            },
        )
    except PlannerInputError as exc:
        raise _NoVllmPlan(str(exc)) from None
    p = settings.plan()
    if not p.fits:
        raise _NoVllmPlan(f"the model does not fit as planned: {p.summary()}")
    try:
        args = vllm_args(
            p,
            model_path=str(model_dir),
            served_name=data["model"]["served_name"],
            port=8000,  # the daemon binds vLLM to a free loopback port of its own
            checkpoint_quant=p.model.quant_method,
        )
    except ValueError as exc:
        raise _NoVllmPlan(str(exc)) from None
    data["engine"]["max_running"] = p.max_running
    return {"python": str(python), "args": args, "env": vllm_env(p)}


def register(app: typer.Typer) -> None:
    @app.command("serve")
    def serve(
        model_dir: Path = typer.Option(
            ..., "--model-dir", help="Hugging Face model directory (local files only)."
        ),
        host: str = typer.Option("127.0.0.1", help="Address to listen on."),
        port: int = typer.Option(8443, min=1, max=65535, help="Port to listen on."),
        api_key_file: Path | None = typer.Option(
            None,
            "--api-key-file",
            help="File holding the client key (or DEEPSEEK_NODE_API_KEY; default: generate one).",
        ),
        engine: str = typer.Option(
            "auto", "--engine", help="auto (vLLM where it runs here), vllm or builtin."
        ),
        vllm_python: Path | None = typer.Option(
            None,
            "--vllm-python",
            envvar="DEEPSEEK_NODE_VLLM_PYTHON",
            help="Python of the vLLM virtualenv (default: .venv-vllm beside the project, then /opt/deepseek-node/vllm-venv).",
        ),
        hardware_profile: str | None = typer.Option(
            None,
            "--hardware-profile",
            help="Planner profile for vLLM's arguments (default: cpu-only without a GPU).",
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
        from deepseek_node.daemon.config import ConfigError, parse_config
        from deepseek_node.daemon.gateway.auth import generate_key, hash_key

        if not model_dir.is_dir():
            fail(
                f"--model-dir {model_dir} does not exist or is not a directory: give a Hugging Face model "
                "directory (config.json, *.safetensors, tokenizer files), e.g. one made by "
                "`provision model make-tiny --out DIR`"
            )
        if (tls_cert is None) != (tls_key is None):
            fail("--tls-cert and --tls-key go together: give both (HTTPS) or neither (plain HTTP)")
        for option, f in (("--tls-cert", tls_cert), ("--tls-key", tls_key)):
            if f is not None and not f.is_file():
                what = "is not a file" if f.exists() else "does not exist"
                fail(f"{option} {f} {what}: give the path to a PEM file")
        from deepseek_node.daemon.runtime import default_served_name

        api_key = _read_api_key(api_key_file)
        generated = api_key is None
        key = api_key or generate_key()
        data = {
            "model": {
                "path": str(model_dir.resolve()),
                "served_name": served_name or default_served_name(model_dir),
                "max_context": max_context,
                "device": device,
            },
            "server": {
                "host": host,
                "port": port,
                "tls_cert": str(tls_cert) if tls_cert else None,
                "tls_key": str(tls_key) if tls_key else None,
            },
            "engine": {},
            "auth": {
                "api_keys": [
                    {"id": "local", "sha256": hash_key(key), "scopes": ["inference", "metrics", "admin"]}
                ]
            },
            "audit": {"path": None, "log_content": False, "redact": True},
            "plan": {"source": "provision serve"},
        }
        chosen = _choose_engine(engine, device, vllm_python)
        if chosen is not None:
            try:
                data["vllm"] = _vllm_section(chosen, model_dir.resolve(), data, hardware_profile)
                data["engine"]["kind"] = "vllm"
            except _NoVllmPlan as exc:
                if engine == "vllm":
                    fail(f"--engine vllm: {exc}")
                typer.echo(f"engine: builtin (vLLM cannot serve this here: {exc})", err=True)
        try:
            config = parse_config(data, "provision serve")
        except ConfigError as exc:
            fail(str(exc))
        # Everything that would otherwise fail after the key is shown, or after the server starts.
        _check_model(config.model)
        if tls_cert is not None and tls_key is not None:
            _check_tls(tls_cert, tls_key)
        _check_listen(host, port)
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
