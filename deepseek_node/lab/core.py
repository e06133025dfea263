"""The Lab: a set of throwaway Debian targets (systemd-nspawn containers) reachable over ssh as root.

All hosts of one lab run one Debian release (12 by default, or 13), recorded in its state directory."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shlex
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from deepseek_node import paths
from deepseek_node.lab import boot
from deepseek_node.lab import host as hostmod
from deepseek_node.lab.errors import LabError, UnknownHostError
from deepseek_node.lab.host import HostDir
from deepseek_node.lab.inventory import render_inventory, write_atomic
from deepseek_node.lab.network import (
    Addressing,
    add_guard_route,
    addressing,
    conflicts,
    ipv4_addresses,
    link_commands,
    link_exists,
    link_ifname,
    parse_index,
    remove_guard_route,
    route_is_lab,
    validate_count,
    validate_prefix,
    validate_subnet,
    veth_name,
)
from deepseek_node.lab.rootfs import DEFAULT_SUITE, SUITES, describe, ensure_rootfs, validate_suite

log = logging.getLogger(__name__)

# How often one host is booted before `up` gives up on it and names it.
BOOT_ATTEMPTS = 3

REQUIRED_TOOLS = {
    "systemd-nspawn": "systemd-container",
    "debootstrap": "debootstrap",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "ip": "iproute2",
    "mount": "mount",
}


@dataclass(frozen=True)
class LabHost:
    name: str
    address: str
    controller_address: str
    pid: int  # the host's supervisor (stable across guest reboots)


@dataclass(frozen=True)
class HostStatus:
    name: str
    address: str
    pid: int | None
    running: bool
    ssh_ok: bool


def check_prerequisites() -> None:
    if os.geteuid() != 0:
        raise LabError(
            "the lab needs root (it mounts overlays and boots containers): run it as root or with sudo"
        )
    missing = sorted({pkg for tool, pkg in REQUIRED_TOOLS.items() if shutil.which(tool) is None})
    if missing:
        raise LabError(f"missing tools; install them with: apt-get install -y {' '.join(missing)}")


class Lab:
    def __init__(
        self,
        state_dir: Path | None = None,
        inventory_dir: Path | None = None,
        prefix: str = "dsn",
        subnet: str = "10.77",
        suite: str = DEFAULT_SUITE,
    ) -> None:
        validate_prefix(prefix)
        validate_subnet(subnet)
        validate_suite(suite)
        self.state_dir = Path(state_dir) if state_dir else paths.state_dir() / "lab"
        self._inventory_dir = Path(inventory_dir) if inventory_dir else None
        self.prefix = prefix
        self.subnet = subnet
        self.suite = suite

    # --- paths ---

    @property
    def inventory_path(self) -> Path:
        inv = self._inventory_dir or paths.project_root() / "inventories" / "lab"
        return inv / "hosts.yml"

    @property
    def key_path(self) -> Path:
        return self.state_dir / "id_ed25519"

    @property
    def known_hosts_path(self) -> Path:
        return self.state_dir / "known_hosts"

    @property
    def suite_path(self) -> Path:
        return self.state_dir / "suite"

    @property
    def _hosts_root(self) -> Path:
        return self.state_dir / "hosts"

    def _hostdir(self, name: str) -> HostDir:
        return HostDir(self._hosts_root / name)

    def _existing(self) -> list[HostDir]:
        """Host dirs of this lab (any state), in index order."""
        if not self._hosts_root.is_dir():
            return []
        found = [
            (idx, HostDir(d))
            for d in self._hosts_root.iterdir()
            if d.is_dir() and (idx := parse_index(self.prefix, d.name)) is not None
        ]
        return [hd for _, hd in sorted(found, key=lambda t: t[0])]

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        with (self.state_dir / ".lock").open("a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # --- lifecycle ---

    def up(self, count: int = 1, timeout: float = 90.0, boot_attempts: int = BOOT_ATTEMPTS) -> list[LabHost]:
        """Make exactly `count` hosts run: keep healthy ones, replace dead ones, stop extra ones.

        Returns once every host has finished booting and takes logins; a host whose boot fails is
        restarted, up to `boot_attempts` boots in all, then named in the LabError."""
        if boot_attempts < 1:
            raise ValueError(f"boot_attempts must be at least 1, not {boot_attempts}")
        validate_count(count)
        validate_prefix(self.prefix, count)
        check_prerequisites()
        self._check_suite()  # before the rootfs build: a refused `up` costs nothing
        rootfs = ensure_rootfs(suite=self.suite)
        with self._locked():
            self._check_suite()
            write_atomic(self.suite_path, self.suite + "\n")
            add_guard_route(self.subnet)
            pubkey = hostmod.ensure_client_key(self.key_path)
            wanted = [addressing(self.prefix, self.subnet, i) for i in range(1, count + 1)]
            wanted_names = {a.name for a in wanted}
            self._stop([hd for hd in self._existing() if hd.name not in wanted_names])
            pids: dict[str, int] = {}
            for addr in wanted:
                hd = self._hostdir(addr.name)
                pid = hostmod.supervisor_pid(hd)
                if pid is not None and hd.read_meta() == addr:
                    log.info("%s is running (pid %d)", addr.name, pid)
                    pids[addr.name] = pid
                    continue
                if hd.root.exists():
                    log.info("%s: cleaning up stale state", addr.name)
                    self._stop([hd])
                self._check_free(addr)
                log.info("booting %s at %s", addr.name, addr.address)
                pids[addr.name] = hostmod.start(hd, addr, rootfs, pubkey)
            self._write_known_hosts()
            self._wait_ssh(wanted, timeout)
            self._wait_booted(wanted, rootfs, pubkey, timeout, boot_attempts, pids)
            write_atomic(
                self.inventory_path, render_inventory(wanted, self.key_path.resolve(), self.known_hosts_path)
            )
        return [LabHost(a.name, a.address, a.controller_address, pids[a.name]) for a in wanted]

    def running_suite(self) -> str | None:
        """The release this lab's hosts run; None when it has none (then `up` may boot any release).

        Hosts from before the release was recorded run the default one."""
        if not self._existing():
            return None
        try:
            return self.suite_path.read_text().strip() or DEFAULT_SUITE
        except FileNotFoundError:
            return DEFAULT_SUITE

    def _check_suite(self) -> None:
        running = self.running_suite()
        if running is not None and running != self.suite:
            raise LabError(suite_conflict(running, self.suite, self.names()))

    def down(self) -> None:
        """Stop every host and remove its overlay, mounts and veth link; remove the inventory. Idempotent."""
        with self._locked():
            self._stop(self._existing())
            remove_guard_route(self.subnet)
            self.inventory_path.unlink(missing_ok=True)
            if self.known_hosts_path.exists():
                self._write_known_hosts()

    def _stop(self, hds: list[HostDir]) -> None:
        # Signal all first, then wait: hosts power off in parallel (~1.5 s each otherwise).
        waits = [(hd, hostmod.signal_stop(hd)) for hd in hds]
        for hd, pids in waits:
            hostmod.wait_stopped(hd, pids)
            hostmod.cleanup(hd)
            log.info("%s stopped", hd.name)

    def _check_free(self, addr: Addressing) -> None:
        """Refuse to boot over another lab's interface or subnet: it would capture our traffic."""
        ifname = veth_name(addr.name)
        if link_exists(ifname):
            raise LabError(
                f"interface {ifname} already exists, probably another lab using prefix {self.prefix!r}: "
                "stop that lab or use another prefix"
            )
        if clash := conflicts(addr, ipv4_addresses()):
            raise LabError(
                f"{addr.controller_address.rsplit('.', 1)[0]}.0/24 for {addr.name} is already used on "
                f"{', '.join(clash)}: stop that lab or use another subnet than {self.subnet!r}"
            )

    def _write_known_hosts(self) -> None:
        lines = []
        for hd in self._existing():
            addr = hd.read_meta()
            if addr and hd.host_pubkey.is_file():
                key = " ".join(hd.host_pubkey.read_text().split()[:2])
                lines.append(f"{addr.name},{addr.address} {key}\n")
        write_atomic(self.known_hosts_path, "".join(lines), 0o600)

    def _wait_ssh(self, hosts: list[Addressing], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        pending = list(hosts)
        while pending:
            for addr in list(pending):
                hd = self._hostdir(addr.name)
                if hostmod.supervisor_pid(hd) is None:
                    raise LabError(
                        f"{addr.name} stopped while booting; its console log ({hd.log}) ends with:\n"
                        f"{hd.log_tail()}\nRun `provision lab down` and try again."
                    )
                if self._ssh_ok(addr):
                    pending.remove(addr)
            if pending and time.monotonic() > deadline:
                names = ", ".join(a.name for a in pending)
                hd = self._hostdir(pending[0].name)
                raise LabError(
                    f"sshd did not answer on {names} within {timeout:.0f} s; {pending[0].name}'s console log "
                    f"({hd.log}) ends with:\n{hd.log_tail()}"
                )
            if pending:
                time.sleep(0.1)

    def _wait_booted(
        self,
        hosts: list[Addressing],
        rootfs: Path,
        pubkey: str,
        timeout: float,
        attempts: int,
        pids: dict[str, int],
    ) -> None:
        """Wait until every host has finished booting; restart those whose boot failed (bounded)."""
        broken: dict[str, str] = {}
        for addr in hosts:
            for attempt in range(1, attempts + 1):
                why = self._boot_problem(addr, timeout)
                if why is None:
                    break
                if attempt == attempts:
                    broken[addr.name] = why
                    break
                log.warning(
                    "%s did not boot cleanly (%s); restarting it (boot %d of %d)",
                    addr.name,
                    why,
                    attempt + 1,
                    attempts,
                )
                hd = self._hostdir(addr.name)
                self._stop([hd])
                pids[addr.name] = hostmod.start(hd, addr, rootfs, pubkey)
                self._write_known_hosts()
                self._wait_ssh([addr], timeout)
        if broken:
            details = "\n".join(
                f"  {name}: {why}; console log {self._hostdir(name).log}" for name, why in broken.items()
            )
            raise LabError(
                f"{', '.join(broken)} did not come up after {attempts} boot(s):\n{details}\n"
                "Look at the console log, then `provision lab down` and try again."
            )

    def _boot_problem(self, addr: Addressing, timeout: float) -> str | None:
        """None once the host is ready; else why this boot is given up (it then gets restarted)."""
        deadline = time.monotonic() + timeout
        units_restarted = False
        while True:
            left = max(1.0, deadline - time.monotonic())
            try:
                r = self.run(addr.name, boot.probe_command(min(left, 30.0)), check=False, timeout=left + 15)
            except subprocess.TimeoutExpired:
                r = subprocess.CompletedProcess([], 255, "", "")
            # 255: ssh itself failed (the guest may be restarting its sshd): judged like a boot in progress.
            probe = boot.BootProbe("unreachable") if r.returncode == 255 else boot.parse_probe(r.stdout)
            action = boot.decide(
                probe,
                units_restarted=units_restarted,
                timed_out=time.monotonic() >= deadline,
            )
            if action is boot.Action.READY:
                if units_restarted:
                    log.info("%s is up after restarting its failed units", addr.name)
                return None
            if action is boot.Action.RESTART_HOST:
                return boot.describe(probe)
            if action is boot.Action.RESTART_UNITS:
                units = boot.units_to_restart(probe)
                log.warning("%s: %s; restarting %s", addr.name, boot.describe(probe), ", ".join(units))
                self.run(addr.name, boot.restart_units_command(units), check=False, timeout=left + 15)
                units_restarted = True
            elif probe.state == "unreachable":
                time.sleep(0.5)

    # --- inspection and access ---

    def names(self) -> list[str]:
        """Names of this lab's hosts that have state (running or not)."""
        return [hd.name for hd in self._existing()]

    def hosts(self) -> list[LabHost]:
        """The running hosts (those with a live supervisor)."""
        found = []
        for hd in self._existing():
            addr, pid = hd.read_meta(), hostmod.supervisor_pid(hd)
            if addr and pid:
                found.append(LabHost(addr.name, addr.address, addr.controller_address, pid))
        return found

    def status(self) -> list[HostStatus]:
        def one(hd: HostDir) -> HostStatus:
            addr = hd.read_meta()
            pid = hostmod.supervisor_pid(hd)
            ok = bool(pid and addr and self._ssh_ok(addr))
            return HostStatus(hd.name, addr.address if addr else "?", pid, pid is not None, ok)

        hds = self._existing()
        with ThreadPoolExecutor(max_workers=8) as pool:
            return list(pool.map(one, hds))

    def _addr(self, name: str) -> Addressing:
        addr = self._hostdir(name).read_meta() if parse_index(self.prefix, name) else None
        if addr is None:
            raise UnknownHostError(name, self.names())
        return addr

    def _ssh_base(self, addr: Addressing) -> list[str]:
        return [
            "ssh",
            "-i",
            str(self.key_path),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={self.known_hosts_path}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "ConnectTimeout=5",
            "-o",
            "LogLevel=ERROR",
            f"root@{addr.address}",
        ]

    def ssh_argv(self, name: str) -> list[str]:
        """Full ssh command line to the host (append a command, or run as is for a shell)."""
        addr = self._addr(name)
        if not route_is_lab(addr):
            raise LabError(
                f"{name} is not running (no route to it through ve-{name}): run `provision lab up`"
            )
        return self._ssh_base(addr)

    def link(self, a: str, b: str) -> None:
        """Join two running hosts with a point-to-point link of their own: each then reaches the other at its
        lab address (e.g. one host as the other's controller), and neither gains a route anywhere else;
        nothing is forwarded through this machine. Lasts until unlink(), or until either host stops or
        reboots (the link goes with its network namespace)."""
        if a == b:
            raise ValueError(f"cannot link {a} to itself")
        with self._locked():
            addrs = (self._addr(a), self._addr(b))
            pids = [hostmod.guest_init_pid(self._hostdir(n)) for n in (a, b)]
            for name, pid in zip((a, b), pids, strict=True):
                if pid is None:
                    raise LabError(f"{name} is not running: run `provision lab up`")
            pid_a, pid_b = pids
            assert pid_a is not None and pid_b is not None
            self._unlink(pid_a, b)
            # Both ends are created in place, in the guests' namespaces: none ever exists on this machine.
            end_a = [link_ifname(b), "netns", str(pid_a)]
            end_b = [link_ifname(a), "netns", str(pid_b)]
            _ip(["ip", "link", "add", *end_a, "type", "veth", "peer", "name", *end_b])
            for pid, commands in zip(pids, link_commands(*addrs), strict=True):
                for argv in commands:
                    _ip(["nsenter", "-t", str(pid), "-n", *argv])

    def unlink(self, a: str, b: str) -> None:
        """Remove the link between two hosts (both ends and their routes go together); idempotent."""
        with self._locked():
            self._addr(b)
            pid = hostmod.guest_init_pid(self._hostdir(a))
            if pid is not None:
                self._unlink(pid, b)

    @staticmethod
    def _unlink(pid: int, peer: str) -> None:
        argv = ["nsenter", "-t", str(pid), "-n", "ip", "link", "del", link_ifname(peer)]
        subprocess.run(argv, capture_output=True, check=False)

    def _ssh_ok(self, addr: Addressing) -> bool:
        # Probe only through the host's own veth: never let a probe leave by the default route.
        if not (route_is_lab(addr) and _port_open(addr.address, 22)):
            return False
        argv = self._ssh_base(addr)
        argv[1:1] = ["-o", "BatchMode=yes"]
        try:
            return subprocess.run([*argv, "true"], capture_output=True, timeout=10).returncode == 0
        except subprocess.TimeoutExpired:
            return False

    def run(
        self, name: str, command: str | list[str], check: bool = True, timeout: float | None = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run a shell command on the host as root over ssh; text output captured.

        Like ssh, a host that cannot be reached (e.g. while it reboots) gives exit status 255.
        """
        remote = command if isinstance(command, str) else shlex.join(command)
        addr = self._addr(name)
        argv = self._ssh_base(addr)
        argv[1:1] = ["-o", "BatchMode=yes"]
        argv += ["--", remote]
        if not route_is_lab(addr):
            msg = f"{name} is not reachable: no route through ve-{name} (host down or rebooting)\n"
            if check:
                raise subprocess.CalledProcessError(255, argv, "", msg)
            return subprocess.CompletedProcess(argv, 255, "", msg)
        return subprocess.run(
            argv,
            capture_output=True,
            text=True,
            check=check,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
        )


def suite_conflict(running: str, wanted: str, hosts: list[str]) -> str:
    """Why `up` refuses to mix releases in one lab, and the two ways out."""
    return (
        f"this lab's hosts ({', '.join(hosts)}) run {describe(running) if running in SUITES else running}, "
        f"not {describe(wanted)}: one lab runs one release. Run `provision lab down` first, "
        f"or `provision lab up --suite {running}` to keep them"
    )


def _ip(argv: list[str]) -> None:
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed: {proc.stderr.strip()}")


def _port_open(address: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except OSError:
        return False
