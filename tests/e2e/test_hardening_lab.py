"""What auditors check on a converged node: no generated secret in any log, the run artifacts or the
Ansible output; every unit this product installs scores <= 2.0 in `systemd-analyze security` while it
serves."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from deepseek_node.demo import chat, endpoint_for
from tests.e2e._secrets import find_in_files, pem_needles

pytestmark = pytest.mark.lab

# Where a secret may live on the node (its own file, readable by root only); anywhere else is a leak.
ALLOWED_ON_NODE = ("/etc/deepseek-node/tls/server.key", "/etc/deepseek-node/engine.env")
SEARCHED_ON_NODE = (
    "/var/log",
    "/etc",
    "/var/lib/deepseek-node",
    "/srv/deepseek-node",
    "/home",
    "/root",
    "/tmp",
)


def _secrets(site: dict, lab) -> dict[str, list[str]]:
    inv: Path = site["inventory_dir"]
    name = site["hosts"][0].name
    needles = {"api key": [(inv / "secrets" / "api_key").read_text().strip()]}
    needles["CA key"] = pem_needles((inv / "pki" / "ca.key").read_text())
    needles["server key"] = pem_needles(lab.run(name, "cat /etc/deepseek-node/tls/server.key").stdout)
    engine = lab.run(name, "sed -n 's/^VLLM_API_KEY=//p' /etc/deepseek-node/engine.env", check=False).stdout
    if engine.strip():
        needles["engine key"] = [engine.strip()]
    for extra in sorted((inv / "secrets").rglob("*")):  # e.g. disk-encryption keys escrowed per host
        if extra.is_file() and extra.name != "api_key" and extra.stat().st_size < 4096:
            text = extra.read_text(errors="replace").strip()
            if text and text.isprintable() and not text.startswith("$ANSIBLE_VAULT"):
                needles[f"secrets/{extra.relative_to(inv / 'secrets')}"] = [text]
    assert all(n for ns in needles.values() for n in ns)
    return needles


def test_no_secret_in_logs_artifacts_or_ansible_output(site: dict, lab) -> None:
    assert site["first"].ok, site["first"].failures
    name = site["hosts"][0].name
    ep = endpoint_for(site["hosts"][0].address, site["inventory_dir"])
    assert chat(ep, "Hello").strip()  # one audited request, so the audit log is searched too
    needles = _secrets(site, lab)
    # The controller side: every run's artifacts (ansible-runner keeps the full output and every event).
    hits = find_in_files([site["inventory_dir"] / "runs"], needles)
    # The node: its journal (the daemon's audit lines included) and every file outside a secret's own home.
    patterns = "\n".join(n for ns in needles.values() for n in ns)
    lab.run(name, f"umask 077; printf '%s\\n' {shlex.quote(patterns)} > /run/needles")
    try:
        journal = lab.run(name, "journalctl --no-pager -o cat | grep -c -F -f /run/needles", check=False)
        excluded = " ".join(f"! -path {shlex.quote(p)}" for p in ALLOWED_ON_NODE)
        files = lab.run(
            name,
            f"find {' '.join(SEARCHED_ON_NODE)} -xdev -type f -size -64M {excluded} "
            "! -path '/var/lib/deepseek-node/models/*' -print0 2>/dev/null "
            "| xargs -0 -r grep -l -F -f /run/needles 2>/dev/null",
            check=False,
        )
    finally:
        lab.run(name, "rm -f /run/needles", check=False)
    assert journal.stdout.strip() in ("0", ""), f"{journal.stdout.strip()} journal lines hold a secret"
    hits += [f"{name}:{line}" for line in files.stdout.split()]
    assert not hits, "secrets found:\n" + "\n".join(hits)


def test_units_score_at_most_2_0_while_serving(site: dict, lab) -> None:
    assert site["first"].ok, site["first"].failures
    name = site["hosts"][0].name
    units = lab.run(
        name, "systemctl list-units --state=running --no-legend --plain 'deepseek-node*' | awk '{print $1}'"
    ).stdout.split()
    assert "deepseek-node.service" in units
    for unit in (u for u in units if u.endswith(".service")):
        out = lab.run(name, f"systemd-analyze security --no-pager {unit}", check=False).stdout
        m = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", out)
        assert m, out[-2000:]
        assert float(m.group(1)) <= 2.0, f"{unit}: exposure {m.group(1)}\n{out}"
        print(f"{unit}: {m.group(1)}")
    ep = endpoint_for(site["hosts"][0].address, site["inventory_dir"])
    assert chat(ep, "Still serving?").strip()
