"""The firewall role's rules rendered for several inventories and checked by nft itself (`nft -c`, and a real
load in a throwaway network namespace), and its refusals of bad input before any change."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jinja2
import pytest
import yaml

from tests.conftest import REPO

ROLE = REPO / "roles/firewall"
NFT = shutil.which("nft") or "/usr/sbin/nft"


def _filters() -> Any:
    spec = importlib.util.spec_from_file_location("firewall_net", REPO / "plugins/filter/firewall_net.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


NET = _filters()


def _render(**overrides: Any) -> str:
    defaults = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
    values: dict[str, Any] = {
        **defaults,
        "firewall_ssh_port": 22,
        "firewall_api_port": 8443,
        "__firewall_table": "deepseek_node",
        "__firewall_serving_group": "",
        "__firewall_peer_addresses": {},
        "ansible_managed": "Managed by deepseek-node",
    }
    values.update(overrides)
    source = (ROLE / "templates/deepseek-node.nft.j2").read_text()
    header, _, body = source.partition("\n")
    # The `#jinja2:` header is Ansible's way of setting these; plain Jinja gets them directly.
    assert header == "#jinja2: trim_blocks: True, lstrip_blocks: True"
    env = jinja2.Environment(trim_blocks=True, lstrip_blocks=True, undefined=jinja2.StrictUndefined)
    # The role names its filters by FQCN (deepseek.node.firewall_networks), as a collection role must.
    env.filters.update({f"deepseek.node.{k}": v for k, v in NET.FilterModule().filters().items()})
    return env.from_string(body).render(**values)


def _nft_available() -> bool:
    if not os.path.exists(NFT) or os.geteuid() != 0:
        return False
    probe = subprocess.run([NFT, "-c", "-f", "/dev/null"], capture_output=True, text=True)
    return probe.returncode == 0


needs_nft = pytest.mark.skipif(
    not _nft_available(), reason="needs nft and CAP_NET_ADMIN (apt-get install nftables)"
)

INVENTORIES: dict[str, dict[str, Any]] = {
    "no_groups": {
        "firewall_admin_networks": ["10.20.0.0/16"],
        "firewall_client_networks": ["10.30.0.0/16", "10.31.0.0/24"],
        "firewall_monitoring_networks": ["10.40.5.0/24"],
    },
    "serving_group_of_3": {
        "firewall_admin_networks": ["10.20.0.0/16"],
        "firewall_client_networks": ["10.30.0.0/16"],
        "__firewall_serving_group": "r1_pool",
        "__firewall_peer_addresses": {"gpu-b": "10.50.0.12", "gpu-c": "10.50.0.21"},
    },
    "ipv6_and_extras": {
        "firewall_admin_networks": ["2001:db8:a::/48", "10.20.1.7", "10.20.1.0/24"],
        "firewall_client_networks": ["2001:db8:c::1/64", "fd00::/8"],
        "firewall_monitoring_networks": ["2001:db8:f::/64"],
        "firewall_monitoring_ports": [9100, "9400-9401"],
        "__firewall_serving_group": "v6_pool",
        "__firewall_peer_addresses": {"gpu-b": "2001:db8:50::12", "gpu-c": "10.50.0.13"},
        "firewall_extra_rules": [
            {
                "name": "syslog relay",
                "networks": ["10.60.0.0/24", "2001:db8:60::/64"],
                "proto": "udp",
                "ports": [514],
            },
            {"name": "bmc agent", "networks": ["0.0.0.0/0"], "proto": "tcp", "ports": ["6000-6010", 7000]},
        ],
        "firewall_log_dropped": True,
    },
    "nothing_allowed": {},
}


@pytest.mark.parametrize("name", sorted(INVENTORIES))
def test_rules_own_one_table_and_drop_by_default(name: str) -> None:
    text = _render(**INVENTORIES[name])
    assert "flush ruleset" not in text
    tables = [line for line in text.splitlines() if line.startswith(("table", "delete", "flush", "destroy"))]
    # Declared empty, deleted and recreated: one transaction that only ever touches this table.
    assert tables == [
        "table inet deepseek_node {}",
        "delete table inet deepseek_node",
        "table inet deepseek_node {",
    ]
    assert "type filter hook input priority filter; policy drop;" in text
    assert 'iif "lo" accept' in text and "ct state established,related accept" in text
    assert "hook forward" not in text and "hook output" not in text  # Docker's forwarding is not ours to drop


def test_networks_land_in_their_family_sets_merged() -> None:
    text = _render(**INVENTORIES["ipv6_and_extras"])
    assert "elements = { 10.20.1.0/24 }" in text  # the address inside the /24 is merged into it
    assert "elements = { 2001:db8:a::/48 }" in text
    assert "elements = { 2001:db8:c::/64, fd00::/8 }" in text  # the host bits of ::1/64 are dropped
    assert "tcp dport { 8443, 9100, 9400-9401 }" in text
    assert 'ip saddr { 10.60.0.0/24 } udp dport { 514 } accept comment "syslog relay"' in text
    assert 'ip6 saddr { 2001:db8:60::/64 } udp dport { 514 } accept comment "syslog relay"' in text
    assert "ip6 saddr { ::/0 }" not in text  # an IPv4-only extra rule adds no IPv6 rule


def test_cluster_ports_open_only_with_a_serving_group() -> None:
    assert "cluster_ipv4 @" not in _render(**INVENTORIES["no_groups"])
    assert "saddr @cluster_" not in _render(**INVENTORIES["no_groups"])
    text = _render(**INVENTORIES["serving_group_of_3"])
    assert "elements = { 10.50.0.12/32, 10.50.0.21/32 }" in text
    assert (
        'ip saddr @cluster_ipv4 tcp dport { 29500-29501, 29550, 32768-60999 } accept comment "serving group r1_pool"'
        in text
    )


@needs_nft
@pytest.mark.parametrize("name", sorted(INVENTORIES))
def test_nft_accepts_the_rendered_rules(name: str, tmp_path: Path) -> None:
    rules = tmp_path / "rules.nft"
    rules.write_text(_render(**INVENTORIES[name]))
    check = subprocess.run([NFT, "-c", "-f", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr


@needs_nft
def test_loading_twice_replaces_only_its_table(tmp_path: Path) -> None:
    """A real load in a private network namespace: a foreign table survives, a second load replaces the
    table without duplicating rules, and a broken file changes nothing (the transaction is all or nothing)."""
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare (util-linux)")
    rules = tmp_path / "rules.nft"
    rules.write_text(_render(**INVENTORIES["serving_group_of_3"]))
    broken = tmp_path / "broken.nft"
    broken.write_text(
        rules.read_text().replace("policy drop;", "policy drop;\n        tcp dport 99999 accept")
    )
    script = f"""set -e
nft add table inet othertable
nft add chain inet othertable keep '{{ type filter hook input priority 10; }}'
nft add rule inet othertable keep tcp dport 5555 counter accept
nft -f {rules}
nft -f {rules}
nft -f {broken} 2>/dev/null && echo BROKEN-LOADED
nft list ruleset
"""
    out = subprocess.run(["unshare", "--net", "sh", "-c", script], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "BROKEN-LOADED" not in out.stdout
    assert "table inet othertable" in out.stdout and "tcp dport 5555" in out.stdout
    assert out.stdout.count("table inet deepseek_node") == 1
    assert out.stdout.count('comment "ssh from admin networks"') == 2  # one IPv4, one IPv6 rule: not doubled


def test_network_helpers() -> None:
    assert NET.firewall_bad_networks(["10.0.0.0/8", "10.0.0.300/24", "fd00::/8", "lab", "10.1.0.0/33"]) == [
        "10.0.0.300/24",
        "lab",
        "10.1.0.0/33",
    ]
    assert NET.firewall_covers(["10.81.1.0/24"], "10.81.1.1")
    assert NET.firewall_covers(["10.81.1.0/24"], "::ffff:10.81.1.1")
    assert not NET.firewall_covers(["10.81.1.0/24"], "10.81.2.1")
    assert not NET.firewall_covers([], "10.81.1.1")
    assert NET.firewall_bad_ports([22, "29500-29501", "0", "70000", "9-1", "http"]) == [
        "0",
        "70000",
        "9-1",
        "http",
    ]
    hostvars = {
        "a": {"ansible_host": "10.0.0.1"},
        "b": {"ansible_host": "b.example", "ansible_facts": {"default_ipv4": {"address": "10.0.0.2"}}},
        "c": {"ansible_host": "c.example"},
    }
    assert NET.firewall_peer_addresses(["a", "b", "c"], hostvars) == {
        "a": "10.0.0.1",
        "b": "10.0.0.2",
        "c": "",
    }


def _play(tmp_path: Path, role_vars: dict[str, Any]) -> subprocess.CompletedProcess[str]:
    rules = tmp_path / "etc" / "rules.nft"
    play = [
        {
            "name": "Firewall refusals",
            "hosts": "all",
            "gather_facts": False,
            "roles": [
                {
                    "role": "firewall",
                    "vars": {
                        "firewall_admin_networks": ["10.20.0.0/16"],
                        "firewall_controller_address": "10.20.0.5",
                        "firewall_rules_file": str(rules),
                        **role_vars,
                    },
                }
            ],
        }
    ]
    path = tmp_path / "play.yml"
    path.write_text(yaml.safe_dump(play))
    env = {**os.environ, "ANSIBLE_ROLES_PATH": str(REPO / "roles"), "ANSIBLE_NOCOLOR": "1"}
    out = subprocess.run(
        [str(REPO / ".venv/bin/ansible-playbook"), "-i", "localhost,", "-c", "local", "--check", str(path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=300,
    )
    assert not rules.exists() and not rules.parent.exists()  # refused before any change
    return out


@pytest.mark.parametrize(
    ("role_vars", "expected"),
    [
        (
            {"firewall_client_networks": ["10.30.0.0/16", "10.30.0.300/24"]},
            ["firewall_client_networks", "10.30.0.300/24"],
        ),
        ({"firewall_admin_networks": ["10.20.0.0/16", "admins"]}, ["firewall_admin_networks", "admins"]),
        (
            {"firewall_monitoring_networks": ["2001:db8::/129"]},
            ["firewall_monitoring_networks", "2001:db8::/129"],
        ),
        ({"firewall_cluster_ports": ["29500-29400"]}, ["firewall_cluster_ports", "29500-29400"]),
        (
            {"firewall_extra_rules": [{"name": "relay", "networks": ["10.0.0.0/40"], "ports": [514]}]},
            ["firewall_extra_rules", "relay", "10.0.0.0/40"],
        ),
        ({"firewall_extra_rules": [{"name": "relay", "ports": [514]}]}, ["networks"]),  # the argument spec
        (
            {"firewall_controller_address": "192.0.2.7"},
            ["192.0.2.7", "firewall_admin_networks", "does not cover"],
        ),
    ],
    ids=["client-cidr", "admin-name", "monitoring-prefix", "port-range", "extra-rule", "spec", "lockout"],
)
def test_bad_input_is_refused_before_any_change(
    tmp_path: Path, role_vars: dict[str, Any], expected: list[str]
) -> None:
    out = _play(tmp_path, role_vars)
    assert out.returncode != 0, out.stdout
    for text in expected:
        assert text in out.stdout, out.stdout
