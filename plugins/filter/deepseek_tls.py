"""Checks on operator-supplied certificates that community.crypto has no module for.

x509_certificate_info and openssl_privatekey_info read the certificate and key; these filters add what
they cannot: whether the chain file really signs the certificate up to a self-signed root, and whether
the certificate's subject alternative names cover the host's names (wildcards included).
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any

_PEM_CERT = re.compile(r"-----BEGIN CERTIFICATE-----.+?-----END CERTIFICATE-----", re.S)


def deepseek_tls_pem_certs(text: str) -> list[str]:
    """The PEM certificates in a bundle, in file order (each ending with a newline)."""
    return [m.group(0) + "\n" for m in _PEM_CERT.finditer(text or "")]


def _signed_by(cert: Any, issuer: Any) -> str | None:
    """None when `issuer` signed `cert`, else why not."""
    if cert.issuer != issuer.subject:
        return f"its issuer ({cert.issuer.rfc4514_string()}) is not {issuer.subject.rfc4514_string()}"
    from cryptography.exceptions import InvalidSignature

    try:
        cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return f"the signature does not verify with the key of {issuer.subject.rfc4514_string()}"
    return None


def deepseek_tls_chain_problems(cert_pem: str, chain_pem: str) -> list[str]:
    """Why `chain_pem` (intermediates, then the root) does not verify `cert_pem`; [] when it does.

    Each certificate must be signed by the next one in the chain file, every chain certificate must be a CA
    within its validity period, and the last one must be a self-signed root (nodes and clients trust it).
    """
    import datetime as dt

    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as exc:
        return [f"the certificate is not a PEM certificate ({exc})"]
    chain_texts = deepseek_tls_pem_certs(chain_pem)
    if not chain_texts:
        return ["the chain file holds no PEM certificate: give the issuing CA(s) and the root"]
    try:
        chain = [x509.load_pem_x509_certificate(t.encode()) for t in chain_texts]
    except ValueError as exc:
        return [f"the chain file has an unreadable certificate ({exc})"]
    problems = []
    now = dt.datetime.now(dt.UTC)
    for child, parent in zip([cert, *chain], chain, strict=False):
        why = _signed_by(child, parent)
        if why:
            problems.append(
                f"{child.subject.rfc4514_string()} is not signed by the next chain certificate: {why}"
            )
    for ca in chain:
        name = ca.subject.rfc4514_string()
        try:
            is_ca = ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            is_ca = False
        if not is_ca:
            problems.append(f"chain certificate {name} is not a CA (basicConstraints CA:TRUE missing)")
        if not ca.not_valid_before_utc <= now <= ca.not_valid_after_utc:
            problems.append(
                f"chain certificate {name} is outside its validity period ({ca.not_valid_after_utc:%Y-%m-%d})"
            )
    root = chain[-1]
    if root.issuer != root.subject or _signed_by(root, root):
        problems.append(
            f"the chain file ends with {root.subject.rfc4514_string()}, which is not a self-signed root: "
            "append the root CA certificate to the chain file"
        )
    return problems


def _normalise(name: str) -> tuple[str, str]:
    kind, _, value = str(name).partition(":")
    kind = kind.strip().upper()
    value = value.strip()
    if kind in ("IP", "IP ADDRESS"):
        try:
            return "IP", str(ipaddress.ip_address(value))
        except ValueError:
            return "IP", value
    return kind, value.lower().rstrip(".")


def _covers(san: tuple[str, str], wanted: tuple[str, str]) -> bool:
    if san[0] != wanted[0]:
        return False
    if san[1] == wanted[1]:
        return True
    # A wildcard covers exactly one leftmost label (RFC 6125).
    if san[0] == "DNS" and san[1].startswith("*."):
        head, _, rest = wanted[1].partition(".")
        return bool(head) and rest == san[1][2:]
    return False


def deepseek_tls_san_missing(sans: list[str], required: list[str]) -> list[str]:
    """The entries of `required` (DNS:name / IP:address) that no SAN of the certificate covers."""
    have = [_normalise(s) for s in sans or []]
    return [r for r in required or [] if not any(_covers(h, _normalise(r)) for h in have)]


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "deepseek_tls_pem_certs": deepseek_tls_pem_certs,
            "deepseek_tls_chain_problems": deepseek_tls_chain_problems,
            "deepseek_tls_san_missing": deepseek_tls_san_missing,
        }
