"""Daemon fixtures: a self-signed TLS cert, and real daemons (uvicorn in a thread) on the tiny models.

Daemons are session-scoped: loading a model and warming up costs seconds, the requests cost milliseconds.
Tests that change daemon state irreversibly (shutdown, overload) start their own.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepseek_node.daemon.testing import ThreadedDaemon, config_for

KEY = "dsn-test-key-ops"


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost and its key (PEM files)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "deepseek-node-test")])
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
    d = tmp_path_factory.mktemp("tls")
    cert_path, key_path = d / "server.crt", d / "server.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


@pytest.fixture(scope="session")
def daemon(tiny_model_dir: Path, tls_files: tuple[Path, Path]) -> Iterator[ThreadedDaemon]:
    """HTTPS daemon on the DeepSeek-V3 tiny model (MLA + MoE: the step backend)."""
    other = {
        "id": "reader",
        "sha256": __import__("hashlib").sha256(b"dsn-test-key-metrics").hexdigest(),
        "scopes": ["metrics"],
        "models": [],
    }
    wrong_model = {
        "id": "other-model",
        "sha256": __import__("hashlib").sha256(b"dsn-test-key-nomodel").hexdigest(),
        "scopes": ["inference"],
        "models": ["deepseek-tiny"],
    }
    cfg = config_for(
        tiny_model_dir, KEY, tls=tls_files, extra_keys=[other, wrong_model], engine={"max_queue": 256}
    )
    d = ThreadedDaemon(cfg).start()
    d.wait_ready()
    yield d
    d.stop()


@pytest.fixture(scope="session")
def llama_daemon(tiny_llama_dir: Path) -> Iterator[ThreadedDaemon]:
    """Plain-HTTP daemon on the Llama tiny model (transformers' continuous batching backend)."""
    cfg = config_for(tiny_llama_dir, KEY, served_name="llama-tiny", engine={"backend": "continuous_batching"})
    d = ThreadedDaemon(cfg).start()
    d.wait_ready()
    yield d
    d.stop()
