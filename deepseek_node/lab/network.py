"""Lab naming and addressing (pure), plus the host side of each target's veth link.

Safety net on the host: an `unreachable` route for the lab's whole SUBNET.0.0/16. The per-host /24 on ve-NAME
is more specific, so a running host is reached through its veth; a host that is down (or not yet up) gets
"No route to host" instead of the connection leaving through the machine's default route. Every probe also
checks `ip route get` first (route_is_lab).

Isolation design: a target's only interface is its veth `host0`, configured with a /24 address and no gateway,
so inside it there is no route except to its own /24 (its controller address). The host keeps the other
side `ve-NAME` with forwarding disabled *on that interface* (net.ipv4.conf.ve-NAME.forwarding=0) and IPv6 off,
so even a target that adds a route itself cannot be forwarded anywhere. That is a kernel setting, so it
needs neither iptables nor nft (this machine has neither).

Two targets that must reach each other (one managing the other) get a veth pair of their own between their
namespaces (Lab.link), never forwarding through this machine: the pair joins those two and nothing else.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from deepseek_node.lab.errors import LabError

IFNAMSIZ = 15  # max interface name length; nspawn names the host side "ve-" + machine name
MAX_NAME = IFNAMSIZ - len("ve-")
MAX_HOSTS = 254
_PREFIX_RE = re.compile(r"[a-z][a-z0-9]*")
_SUBNET_RE = re.compile(r"(\d{1,3})\.(\d{1,3})")


@dataclass(frozen=True)
class Addressing:
    name: str
    index: int
    address: str  # the target, on its host0
    controller_address: str  # the host side, on ve-NAME
    prefixlen: int = 24


def validate_prefix(prefix: str, count: int = 1) -> None:
    if not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"lab prefix {prefix!r}: use lowercase letters and digits, starting with a letter")
    if len(machine_name(prefix, max(count, 1), check=False)) > MAX_NAME:
        raise ValueError(f"lab prefix {prefix!r} is too long: names must fit {MAX_NAME} characters")


def validate_subnet(subnet: str) -> None:
    m = _SUBNET_RE.fullmatch(subnet)
    if not m or not all(0 <= int(o) <= 255 for o in m.groups()):
        raise ValueError(f"lab subnet {subnet!r} must be two octets like '10.77'")


def validate_count(count: int) -> None:
    if not 1 <= count <= MAX_HOSTS:
        raise ValueError(f"host count must be between 1 and {MAX_HOSTS}, got {count}")


def machine_name(prefix: str, index: int, check: bool = True) -> str:
    if check and not 1 <= index <= MAX_HOSTS:
        raise ValueError(f"host index must be between 1 and {MAX_HOSTS}, got {index}")
    return f"{prefix}{index}"


def parse_index(prefix: str, name: str) -> int | None:
    """The index of a machine name of this lab, or None if the name is not one of ours."""
    m = re.fullmatch(re.escape(prefix) + r"([1-9]\d{0,2})", name)
    if not m or int(m.group(1)) > MAX_HOSTS:
        return None
    return int(m.group(1))


def addressing(prefix: str, subnet: str, index: int) -> Addressing:
    """Host i: controller SUBNET.i.1/24, target SUBNET.i.2/24; a /24 per host so targets share no link."""
    validate_subnet(subnet)
    return Addressing(
        name=machine_name(prefix, index),
        index=index,
        address=f"{subnet}.{index}.2",
        controller_address=f"{subnet}.{index}.1",
    )


def veth_name(name: str) -> str:
    ifname = f"ve-{name}"
    if len(ifname) > IFNAMSIZ:
        raise ValueError(f"machine name {name!r} is too long for an interface name")
    return ifname


def guest_network_unit(addr: Addressing) -> str:
    """systemd-networkd config for the target's host0: static address, deliberately no Gateway=."""
    return (
        "# deepseek-node lab: static address, no gateway: the target reaches only its controller.\n"
        "[Match]\nName=host0\n\n"
        f"[Network]\nAddress={addr.address}/{addr.prefixlen}\n"
        "LinkLocalAddressing=no\nIPv6AcceptRA=no\nDHCP=no\n"
    )


def link_ifname(peer: str) -> str:
    """The name, inside a target, of its point-to-point link to the target `peer` (Lab.link)."""
    ifname = f"to-{peer}"
    if len(ifname) > IFNAMSIZ:
        raise ValueError(f"machine name {peer!r} is too long for a link name")
    return ifname


def link_commands(a: Addressing, b: Addressing) -> tuple[list[list[str]], list[list[str]]]:
    """What runs inside a's and b's network namespaces once their link exists: the link up and one host
    route to the other's lab address over it, sourced from the own lab address (the address the other
    side's firewall knows). No gateway, no other route: the link leads to the peer and nowhere else."""

    def side(me: Addressing, peer: Addressing) -> list[list[str]]:
        ifname = link_ifname(peer.name)
        return [
            ["ip", "link", "set", ifname, "up"],
            ["ip", "route", "replace", f"{peer.address}/32", "dev", ifname, "src", me.address],
        ]

    return side(a, b), side(b, a)


# --- host side (needs root) ---


def link_exists(ifname: str) -> bool:
    return Path("/sys/class/net", ifname).exists()


def _sysctl(path: str, value: str) -> None:
    p = Path("/proc/sys/net", path)
    if p.exists():
        p.write_text(value)


def configure_host_side(ifname: str, controller_address: str, prefixlen: int = 24) -> None:
    """Address ve-NAME, bring it up and make sure nothing arriving on it is forwarded."""
    _sysctl(f"ipv4/conf/{ifname}/forwarding", "0")
    _sysctl(f"ipv6/conf/{ifname}/disable_ipv6", "1")
    for argv in (
        ["ip", "addr", "replace", f"{controller_address}/{prefixlen}", "dev", ifname],
        ["ip", "link", "set", ifname, "up"],
    ):
        proc = subprocess.run(argv, capture_output=True, text=True)
        if proc.returncode != 0:
            raise LabError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")


def delete_link(ifname: str) -> None:
    if link_exists(ifname):
        subprocess.run(["ip", "link", "del", ifname], capture_output=True)


def guard_route(subnet: str) -> str:
    return f"{subnet}.0.0/16"


def add_guard_route(subnet: str) -> None:
    argv = ["ip", "route", "replace", "unreachable", guard_route(subnet)]
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")


def remove_guard_route(subnet: str) -> None:
    subprocess.run(["ip", "route", "del", "unreachable", guard_route(subnet)], capture_output=True)


def route_is_lab(addr: Addressing) -> bool:
    """True when the kernel would send to the target through its own veth (and nowhere else)."""
    proc = subprocess.run(["ip", "-o", "route", "get", addr.address], capture_output=True, text=True)
    words = proc.stdout.split()
    return proc.returncode == 0 and "dev" in words and words[words.index("dev") + 1] == veth_name(addr.name)


def ipv4_addresses() -> list[tuple[str, str]]:
    """(interface, address) for every IPv4 address on this machine."""
    out = subprocess.run(["ip", "-o", "-4", "addr", "show"], capture_output=True, text=True).stdout
    return parse_ip_addr(out)


def parse_ip_addr(output: str) -> list[tuple[str, str]]:
    """Parse `ip -o -4 addr show`: '2: eth0    inet 192.0.2.2/24 brd ... scope global eth0'."""
    found = []
    for line in output.splitlines():
        parts = line.split()
        if len(parts) >= 4 and parts[2] == "inet":
            found.append((parts[1].split("@")[0], parts[3].split("/")[0]))
    return found


def conflicts(addr: Addressing, in_use: list[tuple[str, str]]) -> list[str]:
    """Interfaces other than our ve-NAME that already hold an address in this host's /24."""
    net = addr.controller_address.rsplit(".", 1)[0] + "."
    mine = veth_name(addr.name)
    return sorted({f"{ifname} ({ip})" for ifname, ip in in_use if ip.startswith(net) and ifname != mine})
