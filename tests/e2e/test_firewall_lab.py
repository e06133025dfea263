"""The firewall on the converged lab host, for real: its table is loaded with inbound dropped by default; a
source outside the allowed networks is dropped and let in again when the inventory allows it, each time by a
run that keeps its own SSH connection; a table the role does not own survives; a second run changes
nothing; a run whose controller would be locked out stops before loading."""

from __future__ import annotations

import socket
import time

import pytest

from deepseek_node.runner import RunConfig, RunResult, run

pytestmark = pytest.mark.lab

API_PORT = 8443
# TEST-NET-1: an address no lab controller has.
ELSEWHERE = "192.0.2.1/32"


def _firewall_run(site: dict, lab, **extravars: object) -> RunResult:
    return run(
        RunConfig(
            inventory=lab.inventory_path,
            limit=site["hosts"][0].name,
            tags=["firewall"],
            extravars=dict(extravars),
            artifacts_dir=site["inventory_dir"] / "runs",
        )
    )


def _connects(address: str, port: int, timeout: float = 3.0) -> bool:
    """True when a TCP connection opens; False when it times out (a drop, not a refusal)."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except TimeoutError:
        return False


def _assert_ok(result: RunResult) -> None:
    assert result.ok, "the run failed:\n" + "\n".join(result.failures)


def test_table_is_loaded_with_inbound_dropped(site: dict, lab) -> None:
    _assert_ok(site["first"])
    host = site["hosts"][0]
    table = lab.run(host.name, "nft list table inet deepseek_node").stdout
    assert "policy drop;" in table
    assert "ssh from admin networks" in table and "inference API" in table
    assert f"{host.address.rsplit('.', 1)[0]}.0/24" in table
    unit = lab.run(
        host.name, "systemctl is-enabled deepseek-node-firewall; systemctl is-active deepseek-node-firewall"
    )
    assert unit.stdout.split() == ["enabled", "active"]
    assert _connects(host.address, API_PORT)


def test_sources_outside_the_allowed_networks_are_dropped(site: dict, lab) -> None:
    _assert_ok(site["first"])
    host = site["hosts"][0]
    lab.run(
        host.name,
        "nft add table inet othertable && "
        "nft add chain inet othertable keep '{ type filter hook input priority 10; }' && "
        "nft add rule inet othertable keep tcp dport 5555 counter accept",
    )
    try:
        started = time.monotonic()
        narrowed = _firewall_run(
            site, lab, firewall_client_networks=[ELSEWHERE], firewall_monitoring_networks=[]
        )
        _assert_ok(narrowed)  # the run that applied the rules kept its SSH connection to the end
        assert narrowed.changed > 0
        assert not _connects(host.address, API_PORT), (
            "the API port still answers a source that is not allowed"
        )
        assert _connects(host.address, 22)  # the controller is in the admin networks

        restored = _firewall_run(site, lab)
        _assert_ok(restored)
        assert restored.changed > 0
        assert _connects(host.address, API_PORT)

        again = _firewall_run(site, lab)
        _assert_ok(again)
        assert again.changed == 0, f"a second run changed {again.changed} tasks: {again.artifacts}"
        print(f"narrow + restore + idempotent firewall runs: {time.monotonic() - started:.1f}s")

        foreign = lab.run(host.name, "nft list table inet othertable").stdout
        assert "tcp dport 5555" in foreign, "a table the role does not own did not survive its runs"
    finally:
        lab.run(host.name, "nft delete table inet othertable", check=False)


def test_a_run_that_would_lock_out_the_controller_stops_before_loading(site: dict, lab) -> None:
    _assert_ok(site["first"])
    host = site["hosts"][0]
    before = lab.run(
        host.name, "nft list table inet deepseek_node; cat /etc/deepseek-node/nftables.nft"
    ).stdout
    refused = _firewall_run(site, lab, firewall_admin_networks=["192.0.2.0/24"])
    assert not refused.ok
    message = next(f for f in refused.failures if "firewall_admin_networks" in f)
    assert host.controller_address in message and "192.0.2.0/24" in message
    after = lab.run(
        host.name, "nft list table inet deepseek_node; cat /etc/deepseek-node/nftables.nft"
    ).stdout
    assert after == before
    assert refused.hosts[host.name].changed == 0
