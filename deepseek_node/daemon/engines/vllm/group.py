"""A serving group's health, seen from its head: is every worker server still part of the engine?

vLLM's multi-node mode keeps TCP connections between the head's engine and every worker (its store and
the pipeline stages' links) for as long as the group is formed. vLLM's own `/health` does not notice a
worker that went away (the head keeps answering 200 while the next request hangs on the missing stage),
so the gateway looks at those connections itself: a worker with no established connection to this host
is down, and readiness names it. The head's engine cannot continue without the stage it lost, so it is
stopped at once (its unit restarts it and it waits for every worker to join again): a worker that comes
back brings the group back without a manual step.

Reading /proc/net/tcp{,6} is Linux's own account of this host's connections; the parsing is pure.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("deepseek_node.engine.vllm.group")

_ESTABLISHED = "01"
_LISTEN = "0A"


def _address(hex_addr: str) -> str:
    """A /proc/net/tcp address field ('0100007F' or 32 hex digits for IPv6) as text (IPv4-mapped
    IPv6 addresses as their IPv4 form)."""
    raw = bytes.fromhex(hex_addr)
    # The kernel prints each 32-bit word in host (little-endian) order.
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    ip = ipaddress.ip_address(words)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return str(ip)


@dataclass(frozen=True)
class Socket:
    local: str
    local_port: int
    remote: str
    remote_port: int
    state: str
    inode: int


def parse_proc_net_tcp(text: str) -> list[Socket]:
    """The sockets listed in one /proc/net/tcp or /proc/net/tcp6 file."""
    out = []
    for line in text.splitlines()[1:]:
        fields = line.split()
        if len(fields) < 10:
            continue
        local, remote = fields[1].split(":"), fields[2].split(":")
        out.append(
            Socket(
                _address(local[0]), int(local[1], 16), _address(remote[0]), int(remote[1], 16),
                fields[3].upper(), int(fields[9]),
            )
        )  # fmt: skip
    return out


def connected_peers(sockets: Iterable[Socket]) -> set[str]:
    """Remote addresses this host has an established TCP connection with."""
    return {s.remote for s in sockets if s.state == _ESTABLISHED}


def missing_workers(workers: Iterable[tuple[str, str]], peers: set[str]) -> list[tuple[str, str]]:
    """(host, address) of the workers with no established connection to this host."""
    return [(host, addr) for host, addr in workers if str(ipaddress.ip_address(addr)) not in peers]


def describe_missing(group: str, missing: list[tuple[str, str]]) -> str:
    names = ", ".join(f"{host} ({addr})" for host, addr in missing)
    verb = "is" if len(missing) == 1 else "are"
    return f"serving group {group}: worker {names} {verb} not connected to the head's engine"


def listening_inode(sockets: Iterable[Socket], port: int) -> int | None:
    """The inode of the loopback/any-address socket listening on `port`, if any."""
    for s in sockets:
        if s.state == _LISTEN and s.local_port == port:
            return s.inode
    return None


# -- effects (thin)


def read_sockets(proc: Path = Path("/proc")) -> list[Socket]:
    sockets: list[Socket] = []
    for name in ("tcp", "tcp6"):
        try:
            sockets += parse_proc_net_tcp((proc / "net" / name).read_text())
        except OSError:
            continue
    return sockets


def pid_owning(inode: int, proc: Path = Path("/proc")) -> int | None:
    """The process holding socket `inode` among the processes this user may inspect (the engine runs as
    the gateway's user)."""
    target = f"socket:[{inode}]"
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            for fd in (entry / "fd").iterdir():
                if os.readlink(fd) == target:
                    return int(entry.name)
        except OSError:
            continue
    return None


def stop_engine(port: int, proc: Path = Path("/proc")) -> int | None:
    """SIGTERM to the process listening on the engine's port (its unit restarts it); its PID or None."""
    inode = listening_inode(read_sockets(proc), port)
    pid = pid_owning(inode, proc) if inode is not None else None
    if pid is None:
        log.warning("no process of this user listens on the engine port %d: nothing to restart", port)
        return None
    try:
        os.kill(pid, signal.SIGTERM)
    except OSError as exc:
        log.error("cannot stop the engine (pid %d): %s", pid, exc.strerror or exc)
        return None
    return pid
