"""Four targets at once: `up` returns only when every one has finished booting and takes Ansible's logins,
and each guest's systemd manages a cgroup tree of its own."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepseek_node.lab import Lab
from deepseek_node.lab.host import HostDir, processes_using

pytestmark = [pytest.mark.lab, pytest.mark.slow]

PREFIX = os.environ.get("DEEPSEEK_NODE_TEST_LAB_FOUR_PREFIX", "dsnq")
SUBNET = os.environ.get("DEEPSEEK_NODE_TEST_LAB_FOUR_SUBNET", "10.86")


def _guest_init_cgroup(state: Path, name: str) -> str:
    """The name=systemd (or cgroup2) path, as the controller sees it, of the guest's PID 1."""
    for pid in processes_using(HostDir(state / "hosts" / name)):
        for task in Path(f"/proc/{pid}/task").iterdir():
            for child in (task / "children").read_text().split():
                cmd = Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")[0]
                if cmd.endswith(b"systemd") or cmd.endswith(b"/sbin/init"):
                    lines = Path(f"/proc/{child}/cgroup").read_text().splitlines()
                    return next(
                        (ln for ln in lines if ":name=systemd:" in ln),
                        next(ln for ln in lines if ln.startswith("0::")),
                    )
    raise AssertionError(f"no guest init found for {name}")


def test_four_targets_boot_completely_and_are_reachable(tmp_path: Path) -> None:
    from tests.lab_fixtures import require_lab

    require_lab()
    state, inv = tmp_path / "state", tmp_path / "inv"
    lab = Lab(state_dir=state, inventory_dir=inv, prefix=PREFIX, subnet=SUBNET)
    try:
        hosts = lab.up(count=4)
        names = [h.name for h in hosts]
        assert names == [f"{PREFIX}{i}" for i in range(1, 5)]
        for name in names:
            out = lab.run(
                name, "systemctl is-system-running; test -e /run/nologin && echo NOLOGIN || true"
            ).stdout
            assert out.split() == ["running"], f"{name}: {out}"
        # Each guest's systemd has its own cgroup tree (a shared one failed units with 219/CGROUP).
        paths = {name: _guest_init_cgroup(state, name) for name in names}
        for name, line in paths.items():
            assert f"/deepseek-node-lab/{name}/" in line, (name, line)
        # Ansible's view: every host answers the unprivileged login + sudo, nothing unreachable.
        ansible = Path(sys.executable).with_name("ansible")
        r = subprocess.run(
            [str(ansible), "all", "-i", str(lab.inventory_path), "-b", "-m", "ansible.builtin.ping", "-o"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "ANSIBLE_HOST_KEY_CHECKING": "True"},
        )
        assert r.returncode == 0, r.stdout + r.stderr
        assert sorted(line.split()[0] for line in r.stdout.splitlines() if "SUCCESS" in line) == names
    finally:
        lab.down()
