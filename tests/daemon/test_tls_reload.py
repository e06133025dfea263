"""Certificate pickup without a restart: SIGHUP re-reads the certificate into the live TLS context.

New handshakes get the new certificate, a connection opened before keeps working, the engine (and its
loaded model) is the same object, and a broken new certificate leaves the old one served.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepseek_node.daemon.testing import ThreadedDaemon, config_for, self_signed_cert

KEY = "k" * 20


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The files the daemon is configured with (rotated in place by the tests)."""
    return self_signed_cert(tmp_path_factory.mktemp("live"), "first")


@pytest.fixture(scope="module")
def daemon(tiny_llama_dir: Path, served: tuple[Path, Path]) -> Iterator[ThreadedDaemon]:
    d = ThreadedDaemon(config_for(tiny_llama_dir, KEY, tls=served)).start()
    try:
        d.wait_ready()
        yield d
    finally:
        d.stop()


def _served_cert(port: int) -> bytes:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        der = s.getpeercert(binary_form=True)
    assert der is not None
    return der


def _der(pem: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(pem.read_text())


def _get(s: ssl.SSLSocket, path: str) -> str:
    """One keep-alive request on an open connection; the status line (the whole response is read)."""
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\n\r\n".encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += s.recv(4096)
    head, body = data.split(b"\r\n\r\n", 1)
    length = next(
        int(h.split(b":")[1]) for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")
    )
    while len(body) < length:
        body += s.recv(4096)
    return head.decode("latin-1").splitlines()[0]


def _rotate(served: tuple[Path, Path], tmp_path: Path, name: str) -> Path:
    """Write a new certificate and key over the served files (as the tls role does); its cert's path."""
    cert, key = self_signed_cert(tmp_path / name, name)
    shutil.copyfile(cert, served[0])
    shutil.copyfile(key, served[1])
    return cert


def test_sighup_serves_the_new_certificate_without_touching_engine_or_open_connections(
    daemon: ThreadedDaemon, served: tuple[Path, Path], tmp_path: Path
) -> None:
    engine = daemon.engine
    first = _der(served[0])
    assert _served_cert(daemon.port) == first
    ctx = ssl.create_default_context(cafile=str(served[0]))
    with (
        socket.create_connection(("127.0.0.1", daemon.port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as open_conn,
    ):
        assert _get(open_conn, "/health/ready").startswith("HTTP/1.1 200")
        new = _der(_rotate(served, tmp_path, "second"))
        # The daemon runs in a thread here: route SIGHUP to its handler as `run()` does in production.
        previous = signal.signal(signal.SIGHUP, daemon.server.reload_tls)
        try:
            os.kill(os.getpid(), signal.SIGHUP)
        finally:
            signal.signal(signal.SIGHUP, previous)
        assert _served_cert(daemon.port) == new
        # The connection opened before the reload goes on with the certificate it was handed.
        assert open_conn.getpeercert(binary_form=True) == first
        assert _get(open_conn, "/health/ready").startswith("HTTP/1.1 200")
    assert daemon.engine is engine and engine.ready


@pytest.mark.parametrize("damage", ["unreadable", "key_mismatch"])
def test_a_bad_new_certificate_keeps_the_old_one_served(
    daemon: ThreadedDaemon,
    served: tuple[Path, Path],
    tmp_path: Path,
    damage: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    before = _der(served[0])
    if damage == "unreadable":
        served[0].write_text("-----BEGIN CERTIFICATE-----\nnot a certificate\n-----END CERTIFICATE-----\n")
    else:  # a new certificate whose key was not installed with it
        other_cert, _ = self_signed_cert(tmp_path / "other", "other")
        shutil.copyfile(other_cert, served[0])
    with caplog.at_level(logging.ERROR, logger="deepseek_node.daemon"):
        assert daemon.server.reload_tls() is False
    assert "still serving the previous certificate" in caplog.text
    assert _served_cert(daemon.port) == before
    # Fixed files are picked up by the next reload.
    new = _der(_rotate(served, tmp_path, "fixed"))
    assert daemon.server.reload_tls() is True
    assert _served_cert(daemon.port) == new


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ready_status(port: int, ca: Path) -> str:
    ctx = ssl.create_default_context(cafile=str(ca))
    with (
        socket.create_connection(("127.0.0.1", port), timeout=10) as raw,
        ctx.wrap_socket(raw, server_hostname="127.0.0.1") as s,
    ):
        return _get(s, "/health/ready")


@pytest.mark.slow
def test_the_daemon_process_reloads_on_a_real_sighup(tiny_llama_dir: Path, tmp_path: Path) -> None:
    """What `systemctl reload` does: SIGHUP to the daemon process; same process, model still loaded."""
    import subprocess
    import sys
    import time

    import yaml

    cert, key = self_signed_cert(tmp_path / "live", "first")
    port = _free_port()
    cfg = config_for(tiny_llama_dir, KEY, tls=(cert, key), server={"port": port}).model_dump(mode="json")
    (tmp_path / "daemon.yaml").write_text(yaml.safe_dump(cfg))
    proc = subprocess.Popen(
        [sys.executable, "-m", "deepseek_node.daemon", "--config", str(tmp_path / "daemon.yaml")],
        stderr=open(tmp_path / "daemon.log", "w"),  # noqa: SIM115 - closed with the process
    )
    try:
        deadline = time.monotonic() + 240
        while True:  # listening first (503), then ready once the model is loaded
            try:
                if _ready_status(port, cert).startswith("HTTP/1.1 200"):
                    break
            except OSError:
                pass
            assert proc.poll() is None, (tmp_path / "daemon.log").read_text()[-2000:]
            assert time.monotonic() < deadline, "the daemon never became ready"
            time.sleep(0.5)
        new_cert = _rotate((cert, key), tmp_path, "second")
        proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while _served_cert(port) != _der(new_cert):
            assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()[-2000:]
            time.sleep(0.1)
        assert proc.poll() is None
        # Ready at once on the new certificate: the model was not loaded again.
        assert _ready_status(port, new_cert).startswith("HTTP/1.1 200")
        log = (tmp_path / "daemon.log").read_text()
        assert "TLS reload: now serving" in log
        assert log.count("load plan:") == 1
    finally:
        proc.terminate()
        proc.wait(30)
