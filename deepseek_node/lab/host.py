"""One lab host on disk and as processes: overlay, per-host files, supervisor start/stop, cleanup."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from deepseek_node.lab.errors import LabError
from deepseek_node.lab.network import Addressing, delete_link, guest_network_unit, ipv4_addresses, veth_name
from deepseek_node.lab.rootfs import LAB_USER

SUPERVISOR_MODULE = "deepseek_node.lab.supervise"


@dataclass(frozen=True)
class HostDir:
    root: Path

    @property
    def name(self) -> str:
        return self.root.name

    upper = property(lambda self: self.root / "upper")
    work = property(lambda self: self.root / "work")
    merged = property(lambda self: self.root / "merged")
    meta = property(lambda self: self.root / "meta.json")
    pidfile = property(lambda self: self.root / "supervise.pid")
    log = property(lambda self: self.root / "console.log")
    host_pubkey = property(lambda self: self.root / "ssh_host_ed25519_key.pub")

    def read_meta(self) -> Addressing | None:
        try:
            return Addressing(**json.loads(self.meta.read_text()))
        except (OSError, ValueError, TypeError):
            return None

    def log_tail(self, lines: int = 25) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def _proc_cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def supervisor_pid(hd: HostDir) -> int | None:
    """The live supervisor's pid; checks the command line so a recycled pid is not mistaken for it."""
    try:
        pid = int(hd.pidfile.read_text().strip())
    except (OSError, ValueError):
        return None
    cmd = _proc_cmdline(pid)
    if SUPERVISOR_MODULE in cmd and f"--directory={hd.merged}" in cmd:
        try:
            # a zombie (exited, not yet reaped by its parent) is not running
            if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
                return None
        except (OSError, IndexError):
            return None
        return pid
    return None


def processes_using(hd: HostDir) -> list[int]:
    """Every process whose command line names this host's merged dir (supervisor and nspawn)."""
    marker = f"--directory={hd.merged}"
    pids = []
    for entry in Path("/proc").iterdir():
        pid = int(entry.name) if entry.name.isdigit() else 0
        if pid and pid != os.getpid() and marker in _proc_cmdline(pid):
            pids.append(pid)
    return pids


def guest_init_pid(hd: HostDir) -> int | None:
    """The pid, as this machine sees it, of the guest's PID 1 (systemd): its namespaces are the guest's."""
    for pid in processes_using(hd):
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                children = (task / "children").read_text().split()
            except OSError:
                continue
            for child in children:
                cmd = _proc_cmdline(int(child))
                if cmd and (cmd[0].endswith("/systemd") or cmd[0].endswith("/sbin/init")):
                    return int(child)
    return None


def mounts_under(path: Path) -> list[Path]:
    """Mount points at or below path, deepest first (mountinfo escapes blanks as octal)."""
    found = []
    prefix = str(path)
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        mp = line.split()[4].encode().decode("unicode_escape")
        if mp == prefix or mp.startswith(prefix + "/"):
            found.append(Path(mp))
    return sorted(found, key=lambda p: len(p.parts), reverse=True)


def _ssh_keygen(path: Path, comment: str) -> None:
    for p in (path, path.with_name(path.name + ".pub")):
        p.unlink(missing_ok=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        check=True,
        capture_output=True,
    )


def ensure_client_key(path: Path) -> str:
    """The lab's own client keypair (root's authorized key on every target); made once."""
    if not path.is_file() or not path.with_name(path.name + ".pub").is_file():
        path.parent.mkdir(parents=True, exist_ok=True)
        _ssh_keygen(path, "deepseek-node-lab")
    path.chmod(0o600)
    return path.with_name(path.name + ".pub").read_text().strip()


def _put(root: Path, rel: str, text: str, mode: int = 0o644) -> None:
    dest = root / rel
    dest.parent.mkdir(parents=True, exist_ok=True)
    if dest.is_symlink():
        dest.unlink()
    dest.write_text(text)
    dest.chmod(mode)


def _authorize_lab_user(root: Path, client_pubkey: str) -> None:
    """The controller's key for the unprivileged user Ansible logs in as (owned by its uid in the rootfs)."""
    entry = next(
        (
            line.split(":")
            for line in (root / "etc/passwd").read_text().splitlines()
            if line.startswith(f"{LAB_USER}:")
        ),
        None,
    )
    if entry is None:
        raise LabError(
            f"the lab rootfs has no user {LAB_USER}: remove the cached rootfs and run `lab up` again"
        )
    uid, gid, home = int(entry[2]), int(entry[3]), root / entry[5].lstrip("/")
    ssh_dir = home / ".ssh"
    ssh_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    _put(root, f"{entry[5].lstrip('/')}/.ssh/authorized_keys", client_pubkey + "\n", 0o600)
    for path in (home, ssh_dir, ssh_dir / "authorized_keys"):
        os.chown(path, uid, gid)


def start(hd: HostDir, addr: Addressing, rootfs: Path, client_pubkey: str) -> int:
    """Mount the overlay, personalise the host and launch its supervisor; returns the supervisor pid."""
    for p in (hd.upper, hd.work, hd.merged):
        p.mkdir(parents=True, exist_ok=True)
    hd.meta.write_text(json.dumps(asdict(addr)))
    opts = f"lowerdir={rootfs},upperdir={hd.upper},workdir={hd.work}"
    if any(c in str(p) for p in (hd.root, rootfs) for c in ",: \t\n"):  # would split the mount options
        raise LabError(f"lab paths must not contain ':', ',' or blanks: {hd.root}, {rootfs}")
    proc = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", opts, str(hd.merged)], capture_output=True, text=True
    )
    if proc.returncode != 0:
        raise LabError(f"mounting the overlay for {addr.name} failed: {proc.stderr.strip()}")

    m = hd.merged
    _put(m, "etc/hostname", f"{addr.name}\n")
    _put(
        m,
        "etc/hosts",
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{addr.name}\n::1\tlocalhost ip6-localhost ip6-loopback\n",
    )
    _put(m, "etc/systemd/network/10-lab-host0.network", guest_network_unit(addr))
    (m / "root/.ssh").mkdir(mode=0o700, parents=True, exist_ok=True)
    _put(m, "root/.ssh/authorized_keys", client_pubkey + "\n", 0o600)
    _authorize_lab_user(m, client_pubkey)
    host_key = m / "etc/ssh/ssh_host_ed25519_key"
    _ssh_keygen(host_key, f"root@{addr.name}")
    shutil.copyfile(host_key.with_name(host_key.name + ".pub"), hd.host_pubkey)

    with hd.log.open("ab") as log:
        sup = subprocess.Popen(
            [
                sys.executable,
                "-m",
                SUPERVISOR_MODULE,
                f"--name={addr.name}",
                f"--directory={hd.merged}",
                f"--ifname={veth_name(addr.name)}",
                f"--controller-address={addr.controller_address}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # survives the CLI that started it; not hit by the terminal's ^C
            close_fds=True,
        )
    hd.pidfile.write_text(f"{sup.pid}\n")
    # Popen may return (vfork) before the kernel has set up the new command line that supervisor_pid()
    # checks; wait for it so the caller never sees a just-started host as dead.
    deadline = time.monotonic() + 5
    while supervisor_pid(hd) is None and sup.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    return sup.pid


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # our own child that exited is a zombie until reaped: reap it so it counts as gone
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return Path(f"/proc/{pid}").exists() and "Z" not in _proc_state(pid)


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "Z"


def signal_stop(hd: HostDir) -> list[int]:
    """SIGTERM the supervisor (nspawn then powers the guest off); returns the pids to wait for."""
    pids = processes_using(hd)
    sup = supervisor_pid(hd)
    targets = [sup] if sup else pids  # without a supervisor, stop any orphaned nspawn directly
    for pid in targets:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    return pids


def wait_stopped(hd: HostDir, pids: list[int], timeout: float = 25.0) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in pids + processes_using(hd):
        if _alive(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)


def cleanup(hd: HostDir) -> None:
    """Remove every trace of a stopped host: mounts, its veth, its directory."""
    for mp in mounts_under(hd.root):
        if subprocess.run(["umount", str(mp)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(mp)], capture_output=True)
    # nspawn's veth dies with the container; delete a leftover only if it carries our address (the same
    # name may belong to another lab that uses the same prefix).
    addr = hd.read_meta()
    ifname = veth_name(hd.name)
    if addr and (ifname, addr.controller_address) in ipv4_addresses():
        delete_link(ifname)
    if mounts_under(hd.root):
        raise LabError(f"could not unmount {hd.root}; see `grep {hd.root} /proc/mounts`")
    shutil.rmtree(hd.root, ignore_errors=True)
