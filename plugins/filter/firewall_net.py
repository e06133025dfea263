"""Network helpers for the firewall role: validate, normalize and match CIDRs with Python's ipaddress
(no netaddr needed on the controller)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Mapping
from typing import Any

_PORT_RE = re.compile(r"^(\d{1,5})(?:-(\d{1,5}))?$")
Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _parse(value: Any) -> Network | None:
    try:
        # strict=False: 10.1.2.3/24 means its network, 10.1.2.0/24 (the lab derives networks from addresses).
        return ipaddress.ip_network(str(value).strip(), strict=False)
    except ValueError:
        return None


def firewall_bad_networks(values: Iterable[Any]) -> list[str]:
    """The entries that are not an IPv4/IPv6 network or address."""
    return [str(v) for v in values or [] if _parse(v) is None]


def firewall_networks(values: Iterable[Any], version: int) -> list[str]:
    """The valid entries of one family, normalized and merged (nft refuses overlapping set intervals)."""
    nets = [n for n in (_parse(v) for v in values or []) if n is not None and n.version == int(version)]
    return [str(n) for n in ipaddress.collapse_addresses(nets)]


def firewall_is_address(value: Any) -> bool:
    try:
        ipaddress.ip_address(str(value).strip())
    except ValueError:
        return False
    return True


def firewall_covers(networks: Iterable[Any], address: Any) -> bool:
    """Whether an address (IPv4-mapped IPv6 counts as IPv4) lies in one of the networks."""
    try:
        addr = ipaddress.ip_address(str(address).strip())
    except ValueError:
        return False
    if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
        addr = addr.ipv4_mapped
    return any(n is not None and addr in n for n in (_parse(v) for v in networks or []))


def firewall_bad_ports(values: Iterable[Any]) -> list[str]:
    """The entries that are not a port (1-65535) or an ascending range "low-high"."""
    bad = []
    for v in values or []:
        m = _PORT_RE.match(str(v).strip())
        low, high = (int(m.group(1)), int(m.group(2) or m.group(1))) if m else (0, 0)
        if not (m and 1 <= low <= high <= 65535):
            bad.append(str(v))
    return bad


def firewall_peer_addresses(peers: Iterable[str], hostvars: Mapping[str, Any]) -> dict[str, str]:
    """{peer: address}: its ansible_host when that is an address, else its gathered default IPv4 (or '')."""
    out = {}
    for host in peers or []:
        hv = hostvars[host]
        address = str(hv.get("ansible_host", "") or "")
        if not firewall_is_address(address):
            facts = hv.get("ansible_facts", {}) or {}
            address = str((facts.get("default_ipv4") or {}).get("address", "") or "")
        out[host] = address if firewall_is_address(address) else ""
    return out


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "firewall_bad_networks": firewall_bad_networks,
            "firewall_networks": firewall_networks,
            "firewall_is_address": firewall_is_address,
            "firewall_covers": firewall_covers,
            "firewall_bad_ports": firewall_bad_ports,
            "firewall_peer_addresses": firewall_peer_addresses,
        }
