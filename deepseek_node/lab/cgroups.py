"""A cgroup of its own for each lab host's systemd-nspawn.

With `--keep-unit --register=no` nspawn does not ask systemd for a scope: it splits the cgroup it was
started in into `supervisor` (itself) and `payload` (the guest). Started from the same cgroup, every host
got the *same* `payload`, so all guests' systemd instances managed one tree: one guest pruning
`system.slice/systemd-user-sessions.service` while another was starting it failed that unit with
219/CGROUP (and left /run/nologin behind), and stopping a unit in one guest could kill the same unit's
processes in the others. Each host's nspawn is therefore started in `deepseek-node-lab/<name>` of every
hierarchy nspawn uses (the named `systemd` v1 hierarchy and the cgroup2 one).
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

BASE = "deepseek-node-lab"


def hierarchies(mounts: str, self_cgroup: str) -> list[Path]:
    """Directories of the cgroup this process is in, for the hierarchies nspawn splits (pure: tested).

    `mounts` is /proc/self/mounts, `self_cgroup` is /proc/self/cgroup.
    """
    own: dict[str, str] = {}
    for line in self_cgroup.splitlines():
        parts = line.split(":", 2)
        if len(parts) == 3:
            own[parts[1]] = parts[2]
    found: list[Path] = []
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mountpoint, fstype, options = fields[1], fields[2], fields[3].split(",")
        if fstype == "cgroup2":
            key = ""
        elif fstype == "cgroup" and "name=systemd" in options:
            key = "name=systemd"
        else:
            continue
        if key in own:
            found.append(Path(mountpoint) / own[key].lstrip("/"))
    return found


def host_cgroups(name: str) -> list[Path]:
    try:
        mounts = Path("/proc/self/mounts").read_text()
        self_cgroup = Path("/proc/self/cgroup").read_text()
    except OSError:
        return []
    return [h / BASE / name for h in hierarchies(mounts, self_cgroup)]


def enter(paths: list[Path]) -> None:
    """Move the calling process into each cgroup (creating it); run in the child before nspawn starts."""
    for path in paths:
        path.mkdir(parents=True, exist_ok=True)
        (path / "cgroup.procs").write_text(f"{os.getpid()}\n")


def remove(paths: list[Path]) -> None:
    """Remove the host's cgroups once empty (deepest first); leftovers of a stopped guest go with them."""
    for path in paths:
        if not path.is_dir():
            continue
        dirs = sorted((p for p in path.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True)
        for d in [*dirs, path]:
            with contextlib.suppress(OSError):
                d.rmdir()
