"""The lab's Debian root filesystems (12 by default, or 13): each built once with debootstrap, cached per
release, shared read-only by all hosts of that release."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from deepseek_node.lab.errors import LabError
from deepseek_node.paths import cache_dir

log = logging.getLogger(__name__)

# apt suite -> the release it names; the lab boots any of these.
SUITES: dict[str, str] = {"bookworm": "Debian 12", "trixie": "Debian 13"}
DEFAULT_SUITE = "bookworm"
PACKAGES = ("systemd", "systemd-sysv", "openssh-server", "python3", "python3-apt", "sudo", "iproute2", "dbus")
# Bump when apply_fixes() changes what a built rootfs holds, so old caches are not reused.
FIXES_VERSION = 4
# Ansible logs in as this unprivileged user and becomes root with sudo, as on a real fleet.
LAB_USER = "deploy"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
MIRROR_ENV = "DEEPSEEK_NODE_DEBIAN_MIRROR"

# Units that have nothing to do in a container (no hardware, no clock, no network out) and only slow the boot
# or fail noisily; masking them keeps `systemctl is-system-running` at "running".
MASKED_UNITS = (
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "apt-daily.service",
    "apt-daily-upgrade.service",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "console-getty.service",
    "getty@tty1.service",
    "systemd-timesyncd.service",
)


def validate_suite(suite: str) -> None:
    if suite not in SUITES:
        choices = ", ".join(f"{s} ({release})" for s, release in SUITES.items())
        raise ValueError(f"lab suite {suite!r} is not one the lab can boot: choose {choices}")


def describe(suite: str) -> str:
    """'Debian 13 (trixie)'."""
    validate_suite(suite)
    return f"{SUITES[suite]} ({suite})"


def cache_key(suite: str = DEFAULT_SUITE) -> str:
    validate_suite(suite)
    spec = {"suite": suite, "packages": sorted(PACKAGES), "fixes": FIXES_VERSION, "arch": _arch()}
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:12]


def _arch() -> str:
    try:
        return subprocess.run(
            ["dpkg", "--print-architecture"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return os.uname().machine


def debian_mirror() -> str:
    """The env override, else the Debian mirror this machine's apt uses (targets are built like the host)."""
    if env := os.environ.get(MIRROR_ENV):
        return env.rstrip("/")
    sources = [Path("/etc/apt/sources.list"), *sorted(Path("/etc/apt/sources.list.d").glob("*"))]
    for src in sources:
        try:
            text = src.read_text()
        except OSError:
            continue
        # one-line "deb URI suite" or deb822 "URIs: URI"; the main archive's path ends in /debian
        for uri in re.findall(r"(?m)^(?:deb\s+(?:\[[^\]]*\]\s+)?|URIs:\s*)(\S+)", text):
            if uri.rstrip("/").endswith("/debian"):
                return uri.rstrip("/")
    return DEFAULT_MIRROR


def default_cache_root() -> Path:
    return cache_dir() / "lab"


def rootfs_path(cache_root: Path | None = None, suite: str = DEFAULT_SUITE) -> Path:
    return (cache_root or default_cache_root()) / f"rootfs-{suite}-{cache_key(suite)}"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_rootfs(cache_root: Path | None = None, suite: str = DEFAULT_SUITE) -> Path:
    """The suite's cached rootfs, built first if missing (aside, then renamed: a crash never leaves half a
    cache)."""
    final = rootfs_path(cache_root, suite)
    if final.is_dir():
        return final
    with _locked(final.parent / ".build.lock"):
        if final.is_dir():  # another process built it while we waited
            return final
        for stale in final.parent.glob(".tmp-*"):  # left by a crashed build; we hold the lock
            shutil.rmtree(stale, ignore_errors=True)
        tmp = final.parent / f".tmp-{final.name}-{os.getpid()}"
        try:
            _debootstrap(tmp, suite)
            apply_fixes(tmp)
            tmp.rename(final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return final


def _debootstrap(target: Path, suite: str) -> None:
    if shutil.which("debootstrap") is None:
        raise LabError(
            "debootstrap is not installed: apt-get install -y --no-install-recommends debootstrap "
            "systemd-container"
        )
    mirror = debian_mirror()
    argv = [
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        suite,
        str(target),
        mirror,
    ]
    log.info("building the %s lab rootfs from %s (once; about a minute)", describe(suite), mirror)
    proc = subprocess.run(argv, capture_output=True, text=True)
    if proc.returncode != 0:
        detail = (proc.stdout + proc.stderr).strip().splitlines()[-15:]
        dlog = target / "debootstrap" / "debootstrap.log"
        if dlog.is_file():
            detail += ["--- debootstrap.log (tail) ---", *dlog.read_text(errors="replace").splitlines()[-15:]]
        raise LabError(
            f"debootstrap of {suite} from {mirror} failed (exit {proc.returncode}):\n"
            + "\n".join(detail)
            + f"\nNothing was cached. Check that the mirror is reachable (override it with {MIRROR_ENV}=URL) "
            "and run the command again."
        )


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_symlink() or path.exists():
        path.unlink()
    path.write_text(text)
    path.chmod(mode)


def air_gap_apt_sources(root: Path) -> None:
    """Targets are air-gapped: the controller provides their apt repository. An unreachable default source
    would only make `apt-get update` fail. Debian 13 writes its sources in deb822 form
    (sources.list.d/debian.sources), Debian 12 in sources.list: both go."""
    _write(
        root / "etc/apt/sources.list",
        "# deepseek-node lab target: air-gapped; apt sources are configured by the controller.\n",
    )
    parts = root / "etc/apt/sources.list.d"
    for source in [*parts.glob("*.list"), *parts.glob("*.sources")]:
        source.unlink()


def apply_fixes(root: Path) -> None:
    """Make the debootstrapped tree a good template for many booted containers (see notes/lab-targets.md)."""
    # Empty machine-id: systemd generates a fresh one per host; dbus must see the same one.
    _write(root / "etc/machine-id", "", 0o444)
    dbus_id = root / "var/lib/dbus/machine-id"
    dbus_id.parent.mkdir(parents=True, exist_ok=True)
    if dbus_id.is_symlink() or dbus_id.exists():
        dbus_id.unlink()
    dbus_id.symlink_to("/etc/machine-id")
    # A leftover hostname would override the per-host name nspawn passes in.
    (root / "etc/hostname").unlink(missing_ok=True)
    # Without these, getfqdn() waits ~10 s for a DNS server that does not exist.
    _write(root / "etc/hosts", "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
    _write(root / "etc/resolv.conf", "nameserver 127.0.0.1\n")
    _write(root / "etc/apt/apt.conf.d/99lab-no-translations", 'Acquire::Languages "none";\n')
    air_gap_apt_sources(root)
    # Each host gets its own ed25519 host key at boot time; the shared ones must not survive.
    for key in (root / "etc/ssh").glob("ssh_host_*"):
        key.unlink()
    _write(
        root / "etc/ssh/sshd_config.d/10-lab.conf",
        "PermitRootLogin prohibit-password\nHostKey /etc/ssh/ssh_host_ed25519_key\nUseDNS no\n",
    )
    if subprocess.run(["chroot", str(root), "id", "-u", LAB_USER], capture_output=True).returncode != 0:
        subprocess.run(
            ["useradd", f"--root={root}", "--create-home", "--shell=/bin/bash", "--groups=sudo", LAB_USER],
            check=True,
            capture_output=True,
        )
    _write(root / f"etc/sudoers.d/10-{LAB_USER}", f"{LAB_USER} ALL=(ALL:ALL) NOPASSWD: ALL\n", 0o440)
    systemd_dir = root / "etc/systemd/system"
    for unit in MASKED_UNITS:
        link = systemd_dir / unit
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to("/dev/null")
    subprocess.run(
        ["systemctl", f"--root={root}", "enable", "systemd-networkd.service"], check=True, capture_output=True
    )
    # The packages were only needed for the build.
    for deb in (root / "var/cache/apt/archives").glob("*.deb"):
        deb.unlink()
