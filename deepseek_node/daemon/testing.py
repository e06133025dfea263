"""Run a real daemon inside the current process (uvicorn in a thread), for tests and the benchmark.

Same assembly as production (`runtime.build_state`, `api.create_app`, `server.make_server`); only the
process boundary and signal handling differ. Port 0 picks a free port, read back once listening.
"""

from __future__ import annotations

import hashlib
import threading
import time
from pathlib import Path
from typing import Any

from deepseek_node.daemon.config import DaemonConfig, parse_config

__all__ = ["LineSink", "ThreadedDaemon", "config_for", "self_signed_cert"]


def config_for(
    model_dir: str | Path,
    key: str,
    *,
    served_name: str = "deepseek-tiny",
    tls: tuple[Path, Path] | None = None,
    scopes: tuple[str, ...] = ("inference", "metrics", "admin"),
    extra_keys: list[dict[str, Any]] | None = None,
    engine: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    server: dict[str, Any] | None = None,
    audit: dict[str, Any] | None = None,
    vllm: dict[str, Any] | None = None,
    group: dict[str, Any] | None = None,
) -> DaemonConfig:
    """A config like the Ansible role renders, for a local model directory, listening on 127.0.0.1."""
    data: dict[str, Any] = {
        "model": {"path": str(model_dir), "served_name": served_name, "max_context": 2048, **(model or {})},
        "server": {
            "host": "127.0.0.1",
            "port": 0,
            "tls_cert": str(tls[0]) if tls else None,
            "tls_key": str(tls[1]) if tls else None,
            **(server or {}),
        },
        "engine": {
            "max_running": 16,
            "max_queue": 64,
            "default_max_tokens": 64,
            "shutdown_grace_s": 10,
            **(engine or {}),
        },
        "auth": {
            "api_keys": [
                {
                    "id": "ops",
                    "sha256": hashlib.sha256(key.encode()).hexdigest(),
                    "scopes": list(scopes),
                    "models": [],
                },
                *(extra_keys or []),
            ]
        },
        "audit": {"path": None, "log_content": False, "redact": True, **(audit or {})},
        "plan": {"source": "testing"},
    }
    if vllm is not None:
        data["engine"]["kind"] = "vllm"
        data["vllm"] = vllm
    if group is not None:
        data["group"] = group
    return parse_config(data, "test config")


class LineSink:
    """A thread-safe text stream that keeps the lines written to it (audit records in tests)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self._buf = ""
        self._lock = threading.Lock()

    def write(self, text: str) -> int:
        with self._lock:
            self._buf += text
            *done, self._buf = self._buf.split("\n")
            self.lines.extend(done)
        return len(text)

    def flush(self) -> None:
        pass


class ThreadedDaemon:
    def __init__(self, config: DaemonConfig, audit_stream: Any = None, gpu_metrics: bool = True) -> None:
        from deepseek_node.daemon.gateway.api import create_app, wrap
        from deepseek_node.daemon.runtime import build_state, prepare
        from deepseek_node.daemon.server import make_server

        self.config = config
        self.plan = prepare(config)
        self.fatal: list[str] = []
        self.audit = audit_stream if audit_stream is not None else LineSink()
        self.state = build_state(
            config, self.plan, on_fatal=self.fatal.append, audit_stream=self.audit, gpu_metrics=gpu_metrics
        )
        self.app = create_app(self.state)
        self.server = make_server(config, self.state, wrap(self.app, self.state))
        self._thread: threading.Thread | None = None
        self.port = 0

    @property
    def engine(self) -> Any:
        return self.state.engine

    @property
    def base_url(self) -> str:
        scheme = "https" if self.config.server.tls else "http"
        return f"{scheme}://127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> ThreadedDaemon:
        self._thread = threading.Thread(target=self.server.run, name="daemon", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("daemon did not start listening")
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        return self

    def wait_ready(self, timeout: float = 120.0) -> ThreadedDaemon:
        deadline = time.monotonic() + timeout
        while not self.engine.ready:
            if self.engine.state.value == "failed":
                raise RuntimeError(f"engine failed: {getattr(self.engine, 'load_error', '?')}")
            if time.monotonic() > deadline:
                raise RuntimeError("engine did not become ready")
            time.sleep(0.02)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self.server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)


def self_signed_cert(directory: Path, common_name: str = "deepseek-node-test") -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost and its key (0600), as PEM files in `directory`."""
    import datetime as dt
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = directory / "server.crt", directory / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path
