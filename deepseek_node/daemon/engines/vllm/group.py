"""A serving group's health, seen from its head: is every worker server still part of the engine?

vLLM's multi-node mode keeps TCP connections between the head's engine and every worker (its store and
the pipeline stages' links) for as long as the group is formed. vLLM's own `/health` does not notice a
worker that went away (the head keeps answering 200 while the next request hangs on the missing stage),
so the gateway looks at those connections itself: a worker with no established connection to this host
is down, and readiness names it. The head's engine cannot continue without the stage it lost, so it is
stopped at once (its unit restarts it and it waits for every worker to join again): a worker that comes
back brings the group back without a manual step.

Reading /proc/net/tcp{,6} is Linux's own account of this host's connections; the parsing is pure. The
engine's processes are found through its unit's cgroup, not /proc/PID/fd: the gateway's sandbox
(PrivateUsers, ProtectProc=invisible) hides other units' file descriptors, while cgroup.procs stays
readable and a signal to a process of the same user is allowed.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("deepseek_node.engine.vllm.group")

_ESTABLISHED = "01"


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


# -- effects (thin)


def read_sockets(proc: Path = Path("/proc")) -> list[Socket]:
    sockets: list[Socket] = []
    for name in ("tcp", "tcp6"):
        try:
            sockets += parse_proc_net_tcp((proc / "net" / name).read_text())
        except OSError:
            continue
    return sockets


# Where a unit's cgroup lives: the unified hierarchy (cgroup v2), or on a hybrid system its v2 mount or
# systemd's own v1 hierarchy.
CGROUP_ROOTS = (Path("/sys/fs/cgroup"), Path("/sys/fs/cgroup/unified"), Path("/sys/fs/cgroup/systemd"))


def own_slice(proc_self_cgroup: str) -> str | None:
    """The slice holding this process's unit ('/system.slice'), from /proc/self/cgroup: the unified line
    ('0::/system.slice/x.service'), else systemd's v1 line ('1:name=systemd:/...')."""
    paths = {}
    for line in proc_self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            paths[parts[1]] = parts[2]
    for path in (paths.get(""), paths.get("name=systemd")):
        # On a hybrid system the unified line may say only "/": units live in systemd's v1 hierarchy.
        if path and "/" in path.strip("/"):
            return path.rsplit("/", 1)[0]
    return None


def unit_pids(unit: str, roots: Iterable[Path] = CGROUP_ROOTS, proc: Path = Path("/proc")) -> list[int]:
    """PIDs in `unit`'s cgroup (a sibling of this process's own unit), from the first hierarchy that has it."""
    try:
        slice_ = own_slice((proc / "self" / "cgroup").read_text())
    except OSError:
        slice_ = None
    if slice_ is None:
        return []
    for root in roots:
        try:
            text = (root / slice_.lstrip("/") / unit / "cgroup.procs").read_text()
        except OSError:
            continue
        return [int(pid) for pid in text.split()]
    return []


def stop_unit_processes(
    unit: str, grace_s: float = 10.0, roots: Iterable[Path] = CGROUP_ROOTS, proc: Path = Path("/proc")
) -> list[int]:
    """SIGTERM to every process of `unit` (its unit restarts it), SIGKILL to those still there after
    `grace_s`: an engine that lost a pipeline stage can hang in its own shutdown. The PIDs signalled."""
    roots = tuple(roots)
    pids = unit_pids(unit, roots, proc)
    if not pids:
        log.warning("found no process of %s to stop (its cgroup is not readable from here)", unit)
        return []
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            try:
                os.kill(pid, signal.SIGTERM)
            except PermissionError as exc:
                log.error("cannot stop %s (pid %d): %s", unit, pid, exc.strerror or exc)
                return []
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and set(unit_pids(unit, roots, proc)) & set(pids):
        time.sleep(0.5)
    for pid in set(unit_pids(unit, roots, proc)) & set(pids):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    return pids
