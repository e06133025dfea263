"""TLS on the converged lab host: 1.2 clients refused, renewal picked up by a reload (same process, model
still loaded), mutual TLS with the lab CA, and operator-provided certificates checked before any change.

Runs on the session's `site` host and puts it back as site.yml leaves it (a default run at the end).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import socket
import ssl
import time
import urllib.request
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from deepseek_node.demo import chat, endpoint_for
from deepseek_node.runner import RunConfig, RunResult, run

pytestmark = [pytest.mark.lab, pytest.mark.slow]

TLS = "/etc/deepseek-node/tls"
PORT = 8443


def _assert_ok(result: RunResult) -> None:
    assert result.ok, "site.yml failed:\n" + "\n".join(result.failures)


def _run(site: dict, lab, *, tags: list[str] | None = None, **extravars: object) -> RunResult:
    return run(
        RunConfig(
            inventory=lab.inventory_path,
            limit=site["hosts"][0].name,
            tags=tags or [],
            extravars=dict(extravars),
            artifacts_dir=site["inventory_dir"] / "runs",
        )
    )


def _main_pid(lab, name: str) -> str:
    return lab.run(name, "systemctl show -p MainPID --value deepseek-node").stdout.strip()


def _served(address: str) -> bytes:
    return ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate((address, PORT), timeout=10))


def _on_disk(lab, name: str) -> bytes:
    """The host's own certificate (the first in server.crt, which may carry its chain after it)."""
    pem = lab.run(name, f"cat {TLS}/server.crt").stdout
    return x509.load_pem_x509_certificate(pem.encode()).public_bytes(serialization.Encoding.DER)


def _files_digest(lab, name: str) -> str:
    return lab.run(name, f"sha256sum {TLS}/server.crt {TLS}/server.key {TLS}/ca.crt").stdout


def _ready(ep, ctx: ssl.SSLContext) -> int:
    req = urllib.request.Request(
        ep.base_url.removesuffix("/v1") + "/health/ready", headers={"Authorization": f"Bearer {ep.api_key}"}
    )
    return urllib.request.urlopen(req, context=ctx, timeout=10).status


def _wait_ready(ep, ctx: ssl.SSLContext, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if _ready(ep, ctx) == 200:
                return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the daemon never became ready"
        time.sleep(1)


def _handshake_refused(address: str, ctx: ssl.SSLContext) -> bool:
    """True when the server refuses the handshake or the first request (TLS 1.3 reports late)."""
    try:
        with (
            socket.create_connection((address, PORT), timeout=10) as raw,
            ctx.wrap_socket(raw, server_hostname=address) as s,
        ):
            s.sendall(b"GET /health/live HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            return not s.recv(64).startswith(b"HTTP/1.1")
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    path.chmod(0o600)
    return path


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _issue(
    subject: str,
    issuer_name: x509.Name,
    issuer_key: ec.EllipticCurvePrivateKey,
    key: ec.EllipticCurvePrivateKey,
    *,
    sans: list[x509.GeneralName] | None = None,
    ca: bool = False,
    usage: x509.ObjectIdentifier = ExtendedKeyUsageOID.SERVER_AUTH,
) -> x509.Certificate:
    now = dt.datetime.now(dt.UTC)
    b = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(issuer_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=90))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if not ca:
        b = b.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def test_tls_12_only_client_is_refused(site: dict) -> None:
    _assert_ok(site["first"])
    host = site["hosts"][0]
    ep = endpoint_for(host.address, site["inventory_dir"])
    ctx = ssl.create_default_context(cafile=str(ep.ca_cert))
    assert _ready(ep, ctx) == 200
    old = ssl.create_default_context(cafile=str(ep.ca_cert))
    old.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError), socket.create_connection((host.address, PORT), timeout=10) as raw:
        old.wrap_socket(raw, server_hostname=host.address).close()


def test_near_expiry_certificate_is_renewed_and_served_without_a_restart(site: dict, lab) -> None:
    host = site["hosts"][0]
    ep = endpoint_for(host.address, site["inventory_dir"])
    pid, before = _main_pid(lab, host.name), _served(host.address)
    # 400 days of margin on a 397-day certificate: this run sees it as about to expire.
    t0 = time.monotonic()
    result = _run(site, lab, tags=["tls"], tls_renew_before_days=400)
    took = time.monotonic() - t0
    _assert_ok(result)
    after = _on_disk(lab, host.name)
    assert after != before
    assert _served(host.address) == after  # new handshakes get it at once
    assert _main_pid(lab, host.name) == pid, "the daemon was restarted, not reloaded"
    ctx = ssl.create_default_context(cafile=str(ep.ca_cert))
    assert _ready(ep, ctx) == 200  # no model reload: ready at once
    assert chat(ep, "Hello after renewal").strip()
    print(f"renewal run (--tags tls): {took:.0f}s, MainPID {pid} kept")


def test_mutual_tls_with_the_lab_ca(site: dict, lab, tmp_path: Path) -> None:
    host = site["hosts"][0]
    inv = site["inventory_dir"]
    ep = endpoint_for(host.address, inv)
    ca_cert = x509.load_pem_x509_certificate((inv / "pki" / "ca.crt").read_bytes())
    ca_key = serialization.load_pem_private_key((inv / "pki" / "ca.key").read_bytes(), password=None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = _issue("tenant-a", ca_cert.subject, ca_key, client_key, usage=ExtendedKeyUsageOID.CLIENT_AUTH)
    cert_file = _write(tmp_path / "client.crt", _pem(client))
    key_file = _write(tmp_path / "client.key", _key_pem(client_key))
    # The role's own readiness probe and smoke request present no client certificate: this test checks.
    mtls = {"inference_daemon_wait_ready": False, "inference_daemon_smoke_test": False}
    try:
        _assert_ok(
            _run(site, lab, tags=["inference"], inference_daemon_tls_client_ca=f"{TLS}/ca.crt", **mtls)
        )
        with_cert = ssl.create_default_context(cafile=str(ep.ca_cert))
        with_cert.load_cert_chain(str(cert_file), str(key_file))
        _wait_ready(ep, with_cert)
        assert _handshake_refused(host.address, ssl.create_default_context(cafile=str(ep.ca_cert)))
        assert not _handshake_refused(host.address, with_cert)
    finally:
        _assert_ok(_run(site, lab, tags=["inference"]))
    assert not _handshake_refused(host.address, ssl.create_default_context(cafile=str(ep.ca_cert)))


def test_provided_certificate_is_checked_then_installed_and_served(site: dict, lab, tmp_path: Path) -> None:
    host = site["hosts"][0]
    # The names the host's certificate must cover: those the internal CA put in the one served now.
    current = x509.load_der_x509_certificate(_on_disk(lab, host.name))
    sans = list(current.extensions.get_extension_for_class(x509.SubjectAlternativeName).value)
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = _issue("enterprise root", _name("enterprise root"), root_key, root_key, ca=True)
    inter_key = ec.generate_private_key(ec.SECP384R1())
    inter = _issue("enterprise issuing CA", root.subject, root_key, inter_key, ca=True)
    # P-384, unlike the internal CA's host keys: going back to internal_ca makes a fresh host key.
    leaf_key = ec.generate_private_key(ec.SECP384R1())
    leaf = _issue(host.name, inter.subject, inter_key, leaf_key, sans=sans)
    wrong = _issue(host.name, inter.subject, inter_key, leaf_key, sans=[x509.DNSName("other.example")])
    files = {
        "cert": _write(tmp_path / "server.crt", _pem(leaf)),
        "wrong": _write(tmp_path / "wrong.crt", _pem(wrong)),
        "key": _write(tmp_path / "server.key", _key_pem(leaf_key)),
        "chain": _write(tmp_path / "chain.pem", _pem(inter) + _pem(root)),
    }
    provided = {
        "tls_mode": "provided",
        "tls_provided_key": str(files["key"]),
        "tls_provided_chain": str(files["chain"]),
    }
    try:
        before = _files_digest(lab, host.name)
        refused = _run(site, lab, tags=["tls"], tls_provided_cert=str(files["wrong"]), **provided)
        assert not refused.ok
        why = "\n".join(refused.failures)
        assert host.name in why and str(files["wrong"]) in why and "does not cover" in why, why
        assert _files_digest(lab, host.name) == before, "a refused certificate changed the host"

        _assert_ok(_run(site, lab, tags=["tls"], tls_provided_cert=str(files["cert"]), **provided))
        leaf_der = leaf.public_bytes(serialization.Encoding.DER)
        assert _on_disk(lab, host.name) == leaf_der
        mode = lab.run(host.name, f"stat -c '%a %U' {TLS}/server.key").stdout.split()
        assert mode == ["600", "root"]
        # A new key: the tls role restarts the daemon (systemd hands it the key at start).
        deadline = time.monotonic() + 180
        while True:
            try:
                if _served(host.address) == leaf_der:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, "the daemon does not serve the provided certificate"
            time.sleep(1)
        ep = endpoint_for(host.address, site["inventory_dir"])
        trust_root = ssl.create_default_context(cadata=_pem(root).decode())
        _wait_ready(ep, trust_root)
        served_sha = hashlib.sha256(_served(host.address)).hexdigest()
        print(f"provided certificate served: sha256 {served_sha}")
    finally:
        _assert_ok(_run(site, lab, tags=["tls"]))


def test_default_run_puts_the_host_back(site: dict, lab) -> None:
    """A default site.yml run: the host as site.yml leaves it, serving an internal-CA certificate."""
    host = site["hosts"][0]
    _assert_ok(_run(site, lab))
    ep = endpoint_for(host.address, site["inventory_dir"])
    ctx = ssl.create_default_context(cafile=str(ep.ca_cert))
    _wait_ready(ep, ctx)
    assert _served(host.address) == _on_disk(lab, host.name)
    assert chat(ep, "Hello again").strip()
