"""TLS as auditors ask for it: 1.3 by default, 1.2 only with AEAD suites where allowed, optional mTLS.

Handshakes only: the socket listens before the model loads, so no test here waits for the engine.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from deepseek_node.daemon.testing import ThreadedDaemon, config_for, self_signed_cert


@contextmanager
def _daemon(model: Path, tls: tuple[Path, Path], **server: object) -> Iterator[ThreadedDaemon]:
    d = ThreadedDaemon(config_for(model, "k" * 20, tls=tls, server=dict(server))).start()
    try:
        yield d
    finally:
        d.stop()


def _handshake(port: int, ctx: ssl.SSLContext) -> str:
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        return s.recv(64).decode("latin-1") + "|" + str(s.version())


def _client(ca: Path, *, max_version: ssl.TLSVersion | None = None) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(ca))
    if max_version is not None:
        ctx.maximum_version = max_version
    return ctx


def test_tls_13_by_default_and_12_clients_refused(tiny_llama_dir: Path, tls_files: tuple[Path, Path]) -> None:
    with _daemon(tiny_llama_dir, tls_files) as d:
        assert _handshake(d.port, _client(tls_files[0])).endswith("|TLSv1.3")
        with pytest.raises(ssl.SSLError):
            _handshake(d.port, _client(tls_files[0], max_version=ssl.TLSVersion.TLSv1_2))


def test_tls_12_where_allowed_gets_aead_suites_only(
    tiny_llama_dir: Path, tls_files: tuple[Path, Path]
) -> None:
    with _daemon(tiny_llama_dir, tls_files, tls_min_version="1.2") as d:
        ctx = _client(tls_files[0], max_version=ssl.TLSVersion.TLSv1_2)
        assert _handshake(d.port, ctx).endswith("|TLSv1.2")
        weak = _client(tls_files[0], max_version=ssl.TLSVersion.TLSv1_2)
        weak.set_ciphers("ECDHE+AES128:!AESGCM:!CHACHA20")  # CBC suites only
        with pytest.raises(ssl.SSLError):
            _handshake(d.port, weak)


def test_mutual_tls_refuses_a_client_without_a_certificate(
    tiny_llama_dir: Path, tls_files: tuple[Path, Path], tmp_path: Path
) -> None:
    client_cert, client_key = self_signed_cert(tmp_path / "client", "tenant-a")
    with _daemon(tiny_llama_dir, tls_files, tls_client_ca=str(client_cert)) as d:
        try:  # TLS 1.3 reports the refusal after the client's half of the handshake: an alert or EOF
            answer = _handshake(d.port, _client(tls_files[0]))
        except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
            answer = "refused"
        assert not answer.startswith("HTTP"), answer
        ctx = _client(tls_files[0])
        ctx.load_cert_chain(str(client_cert), str(client_key))
        assert _handshake(d.port, ctx).startswith("HTTP/1.1 200")


def test_tls_settings_are_validated(tmp_path: Path) -> None:
    from deepseek_node.daemon.config import ConfigError

    with pytest.raises(ConfigError, match=r"use 1\.3"):
        config_for(tmp_path, "k", tls=(tmp_path / "c", tmp_path / "k"), server={"tls_min_version": "1.0"})
    with pytest.raises(ConfigError, match="needs tls_cert"):
        config_for(tmp_path, "k", server={"tls_client_ca": str(tmp_path / "ca.pem")})
