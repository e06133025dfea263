"""Lab naming and addressing: pure functions, no root needed."""

from __future__ import annotations

import pytest

from deepseek_node.lab.network import (
    MAX_NAME,
    addressing,
    conflicts,
    guest_network_unit,
    link_commands,
    link_ifname,
    machine_name,
    parse_index,
    parse_ip_addr,
    validate_count,
    validate_prefix,
    validate_subnet,
    veth_name,
)


def test_addressing_gives_each_host_its_own_24() -> None:
    a1, a2 = addressing("dsn", "10.77", 1), addressing("dsn", "10.77", 2)
    assert (a1.name, a1.address, a1.controller_address) == ("dsn1", "10.77.1.2", "10.77.1.1")
    assert (a2.name, a2.address, a2.controller_address) == ("dsn2", "10.77.2.2", "10.77.2.1")
    assert addressing("dsnt", "10.78", 254).address == "10.78.254.2"


@pytest.mark.parametrize("index", [0, 255, -1])
def test_addressing_rejects_out_of_range_index(index: int) -> None:
    with pytest.raises(ValueError):
        addressing("dsn", "10.77", index)


@pytest.mark.parametrize("subnet", ["10", "10.77.1", "256.1", "a.b", "10.77 "])
def test_bad_subnets(subnet: str) -> None:
    with pytest.raises(ValueError):
        validate_subnet(subnet)


@pytest.mark.parametrize("prefix", ["", "1dsn", "Dsn", "ds-n", "ds n", "d" * MAX_NAME])
def test_bad_prefixes(prefix: str) -> None:
    with pytest.raises(ValueError):
        validate_prefix(prefix)


def test_prefix_length_depends_on_host_count() -> None:
    prefix = "d" * (MAX_NAME - 1)
    validate_prefix(prefix, 9)
    with pytest.raises(ValueError):
        validate_prefix(prefix, 10)


@pytest.mark.parametrize("count", [0, 255])
def test_bad_counts(count: int) -> None:
    with pytest.raises(ValueError):
        validate_count(count)


def test_parse_index_accepts_only_this_labs_names() -> None:
    assert parse_index("dsn", "dsn1") == 1
    assert parse_index("dsn", "dsn254") == 254
    for other in ("dsn0", "dsn01", "dsn255", "dsnt1", "dsn", "xdsn1", "dsn1x"):
        assert parse_index("dsn", other) is None, other
    assert parse_index("dsnt", "dsnt2") == 2


def test_veth_name_fits_ifnamsiz() -> None:
    assert veth_name(machine_name("dsn", 12)) == "ve-dsn12"
    with pytest.raises(ValueError):
        veth_name("x" * (MAX_NAME + 1))


def test_guest_network_has_static_address_and_no_gateway() -> None:
    unit = guest_network_unit(addressing("dsn", "10.77", 3))
    assert "Name=host0" in unit
    assert "Address=10.77.3.2/24" in unit
    assert "Gateway" not in unit
    assert "DHCP=no" in unit


IP_ADDR = """\
1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever preferred_lft forever
2: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\\       valid_lft forever preferred_lft forever
7: ve-dsx1@if2    inet 10.79.1.1/24 scope global ve-dsx1\\       valid_lft forever preferred_lft forever
"""


def test_parse_ip_addr() -> None:
    assert parse_ip_addr(IP_ADDR) == [("lo", "127.0.0.1"), ("eth0", "192.0.2.2"), ("ve-dsx1", "10.79.1.1")]


def test_conflicts_ignore_our_own_link() -> None:
    in_use = parse_ip_addr(IP_ADDR)
    assert conflicts(addressing("dsx", "10.79", 1), in_use) == []
    assert conflicts(addressing("dsn", "10.79", 1), in_use) == ["ve-dsx1 (10.79.1.1)"]
    assert conflicts(addressing("dsn", "10.79", 2), in_use) == []
    assert conflicts(addressing("dsn", "10.7", 9), [("x", "10.79.1.1")]) == []


def test_a_link_between_two_targets_leads_to_the_peer_and_nowhere_else() -> None:
    ctl, node = addressing("dsn", "10.77", 4), addressing("dsn", "10.77", 1)
    in_ctl, in_node = link_commands(ctl, node)
    assert in_ctl == [
        ["ip", "link", "set", "to-dsn1", "up"],
        ["ip", "route", "replace", "10.77.1.2/32", "dev", "to-dsn1", "src", "10.77.4.2"],
    ]
    assert in_node[1] == ["ip", "route", "replace", "10.77.4.2/32", "dev", "to-dsn4", "src", "10.77.1.2"]
    assert not [argv for argv in in_ctl + in_node if "default" in argv or "via" in argv]
    assert link_ifname("abcdefghijkl") == "to-abcdefghijkl"
    with pytest.raises(ValueError):
        link_ifname("abcdefghijklm")
