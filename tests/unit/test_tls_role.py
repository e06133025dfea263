"""The tls role without a lab: its filters, its reload handler's condition, and its controller-side steps
(the CA key's passphrase, the checks on a provided certificate) run for real against localhost."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import jinja2
import pytest
import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "plugins" / "filter"))

import deepseek_tls  # noqa: E402

# --- certificates -------------------------------------------------------------------------------------


def _key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _cert(cn: str, issuer: x509.Certificate | None, issuer_key, key, *, ca: bool, sans=(), days: int = 90):
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    b = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(issuer.subject if issuer is not None else name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return b.sign(issuer_key, hashes.SHA256())


def _pem(c: x509.Certificate) -> str:
    return c.public_bytes(serialization.Encoding.PEM).decode()


@pytest.fixture(scope="module")
def pki() -> dict:
    root_key, inter_key, leaf_key = _key(), _key(), _key()
    root = _cert("root", None, root_key, root_key, ca=True)
    inter = _cert("issuing", root, root_key, inter_key, ca=True)
    leaf = _cert("node", inter, inter_key, leaf_key, ca=False, sans=[x509.DNSName("node1.example")])
    other_root_key = _key()
    other_root = _cert("root", None, other_root_key, other_root_key, ca=True)  # same name, other key
    return {
        "root": root,
        "inter": inter,
        "leaf": leaf,
        "leaf_key": leaf_key,
        "inter_key": inter_key,
        "other_root": other_root,
    }


def test_chain_that_signs_the_certificate_up_to_a_root_passes(pki: dict) -> None:
    chain = _pem(pki["inter"]) + _pem(pki["root"])
    assert deepseek_tls.deepseek_tls_chain_problems(_pem(pki["leaf"]), chain) == []
    assert len(deepseek_tls.deepseek_tls_pem_certs(chain)) == 2


def test_chain_problems_are_named(pki: dict) -> None:
    leaf = _pem(pki["leaf"])
    no_root = deepseek_tls.deepseek_tls_chain_problems(leaf, _pem(pki["inter"]))
    assert any("append the root CA" in p for p in no_root)
    forged = deepseek_tls.deepseek_tls_chain_problems(leaf, _pem(pki["inter"]) + _pem(pki["other_root"]))
    assert any("does not verify" in p for p in forged), forged
    wrong_order = deepseek_tls.deepseek_tls_chain_problems(leaf, _pem(pki["root"]) + _pem(pki["inter"]))
    assert wrong_order
    leaf_as_ca = deepseek_tls.deepseek_tls_chain_problems(leaf, leaf)
    assert any("not a CA" in p for p in leaf_as_ca)
    assert deepseek_tls.deepseek_tls_chain_problems(leaf, "") == [
        "the chain file holds no PEM certificate: give the issuing CA(s) and the root"
    ]


def test_san_coverage_handles_wildcards_and_address_forms() -> None:
    sans = ["DNS:*.example.com", "IP:10.0.0.5", "IP Address:2001:DB8:0:0:0:0:0:1", "DNS:Node1.lan."]
    missing = deepseek_tls.deepseek_tls_san_missing(
        sans,
        ["DNS:node1.example.com", "DNS:a.b.example.com", "IP:10.0.0.5", "IP:2001:db8::1", "DNS:node1.lan"],
    )
    assert missing == ["DNS:a.b.example.com"]
    assert deepseek_tls.deepseek_tls_san_missing(sans, ["IP:10.0.0.6"]) == ["IP:10.0.0.6"]


# --- the reload handler --------------------------------------------------------------------------------


def _handler_conditions() -> list[tuple[str, str]]:
    handlers = yaml.safe_load((ROOT / "roles/tls/handlers/main.yml").read_text())
    found = []
    for h in handlers:
        if "systemd_service" in str(h) or "systemctl" in str(h.get("ansible.builtin.command", "")):
            when = h.get("when", "true")
            found.append((h["name"], when if isinstance(when, str) else " and ".join(when)))
    return found


@pytest.mark.parametrize(
    ("run_tags", "skip_tags"),
    [(["all"], ["inference"]), (["tls"], []), (["all"], []), (["security", "inference"], [])],
)
def test_a_renewed_certificate_is_picked_up_whichever_plays_run(
    run_tags: list[str], skip_tags: list[str]
) -> None:
    """With --skip-tags inference, ansible_run_tags is ['all']: the daemon must still get the certificate."""
    env = jinja2.Environment()
    facts = {
        "ansible_run_tags": run_tags,
        "ansible_skip_tags": skip_tags,
        "item": {"rc": 0, "item": "deepseek-node"},
        "__tls_key_changed": False,
    }
    conditions = _handler_conditions()
    assert conditions, "no handler acts on the services serving the certificate"
    for name, when in conditions:
        assert env.compile_expression(when)(**facts), f"{name!r} is skipped with {run_tags=} {skip_tags=}"


def test_the_handler_reloads_and_restarts_only_for_a_new_key() -> None:
    handlers = yaml.safe_load((ROOT / "roles/tls/handlers/main.yml").read_text())
    acting = [h for h in handlers if "ansible.builtin.systemd_service" in h]
    assert len(acting) == 1
    state = acting[0]["ansible.builtin.systemd_service"]["state"].strip("{} ")
    env = jinja2.Environment()
    assert env.compile_expression(state)(__tls_key_changed=False) == "reloaded"
    assert env.compile_expression(state)(__tls_key_changed=True) == "restarted"


# --- controller-side steps, for real -------------------------------------------------------------------


def _play(tmp_path: Path, tasks_from: str, extra: dict) -> subprocess.CompletedProcess[str]:
    play = tmp_path / f"{tasks_from}.yml"
    play.write_text(
        yaml.safe_dump(
            [
                {
                    "hosts": "localhost",
                    "gather_facts": tasks_from == "provided_check",
                    "tasks": [{"ansible.builtin.include_role": {"name": "tls", "tasks_from": tasks_from}}],
                }
            ]
        )
    )
    extra = {"ansible_python_interpreter": sys.executable, **extra}
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(ROOT / "roles"),
        "ANSIBLE_FILTER_PLUGINS": str(ROOT / "plugins" / "filter"),
        "ANSIBLE_STDOUT_CALLBACK": "json",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
    }
    return subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            "localhost,",
            "-c",
            "local",
            "-e",
            json.dumps(extra),
            str(play),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=300,
    )


def _stats(proc: subprocess.CompletedProcess[str]) -> dict:
    return json.loads(proc.stdout[proc.stdout.index("{") :])["stats"]["localhost"]


def _messages(proc: subprocess.CompletedProcess[str]) -> str:
    out = json.loads(proc.stdout[proc.stdout.index("{") :])
    return "\n".join(
        str(r.get("msg", "")) for play in out["plays"] for t in play["tasks"] for r in t["hosts"].values()
    )


def _public(path: Path, password: bytes | None) -> bytes:
    key = serialization.load_pem_private_key(path.read_bytes(), password=password)
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


@pytest.mark.slow
def test_ca_key_passphrase_encrypts_the_same_key_and_a_wrong_one_is_refused(tmp_path: Path) -> None:
    ca = tmp_path / "pki"
    plain = _play(tmp_path, "ca", {"tls_ca_dir": str(ca)})
    assert plain.returncode == 0, plain.stdout[-3000:]
    assert "is protected only by its file mode" in _messages(plain)
    public, ca_cert = _public(ca / "ca.key", None), (ca / "ca.crt").read_bytes()
    assert oct((ca / "ca.key").stat().st_mode & 0o777) == "0o600"

    secret = {"tls_ca_dir": str(ca), "tls_ca_passphrase": "correct horse battery staple"}
    encrypted = _play(tmp_path, "ca", secret)
    assert encrypted.returncode == 0, encrypted.stdout[-3000:]
    assert b"ENCRYPTED" in (ca / "ca.key").read_bytes()
    assert _public(ca / "ca.key", b"correct horse battery staple") == public  # the same key
    assert (ca / "ca.crt").read_bytes() == ca_cert  # certificates it signed stay valid
    assert "correct horse" not in encrypted.stdout
    again = _play(tmp_path, "ca", secret)
    assert again.returncode == 0 and _stats(again)["changed"] == 0, again.stdout[-3000:]

    wrong = _play(tmp_path, "ca", {"tls_ca_dir": str(ca), "tls_ca_passphrase": "wrong"})
    assert wrong.returncode != 0
    assert "tls_ca_passphrase does not open it" in _messages(wrong)
    unset = _play(tmp_path, "ca", {"tls_ca_dir": str(ca)})
    assert unset.returncode != 0
    assert "tls_ca_passphrase is not set" in _messages(unset)
    assert _public(ca / "ca.key", b"correct horse battery staple") == public


@pytest.mark.slow
def test_provided_certificate_checks_name_host_file_and_fix(tmp_path: Path, pki: dict) -> None:
    def write(name: str, text: str) -> str:
        (tmp_path / name).write_text(text)
        return str(tmp_path / name)

    leaf_key = pki["leaf_key"]
    key_pem = leaf_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    sans = [x509.DNSName("localhost"), x509.DNSName("*.example.invalid")]
    good = _cert("node", pki["inter"], pki["inter_key"], leaf_key, ca=False, sans=sans, days=90)
    short = _cert("node", pki["inter"], pki["inter_key"], leaf_key, ca=False, sans=sans, days=10)
    chain = write("chain.pem", _pem(pki["inter"]) + _pem(pki["root"]))
    base = {
        "tls_mode": "provided",
        "tls_provided_key": write("server.key", key_pem),
        "tls_provided_chain": chain,
        # localhost's names on this machine vary: cover them with what the check is given to require.
        "__tls_host_names": ["DNS:localhost", "DNS:node.example.invalid"],
    }
    ok = _play(tmp_path, "provided_check", {**base, "tls_provided_cert": write("good.crt", _pem(good))})
    assert ok.returncode == 0, _messages(ok)[-3000:]

    cases = {
        "wrong_san": (
            {
                "__tls_host_names": ["DNS:localhost", "IP:192.0.2.7"],
                "tls_provided_cert": write("g2.crt", _pem(good)),
            },
            ["localhost:", "g2.crt", "does not cover IP:192.0.2.7", "re-issued"],
        ),
        "key_mismatch": (
            {
                "tls_provided_cert": write(
                    "other.crt", _pem(_cert("x", pki["inter"], pki["inter_key"], _key(), ca=False))
                )
            },
            ["server.key", "does not belong to the certificate"],
        ),
        "expiring": (
            {"tls_provided_cert": write("short.crt", _pem(short))},
            ["short.crt", "is not valid for the next 30 days"],
        ),
        "bad_chain": (
            {
                "tls_provided_cert": write("g3.crt", _pem(good)),
                "tls_provided_chain": write("c.pem", _pem(pki["root"])),
            },
            ["c.pem", "does not verify", "g3.crt"],
        ),
    }
    for case, (extra, needles) in cases.items():
        proc = _play(tmp_path, "provided_check", {**base, **extra})
        assert proc.returncode != 0, case
        text = _messages(proc)
        for needle in needles:
            assert needle in text, f"{case}: {needle!r} not in {text[-2000:]}"
        assert "PRIVATE KEY" not in proc.stdout, case
