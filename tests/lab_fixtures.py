"""Lab fixtures: real Debian 12 targets (systemd-nspawn) for integration tests marked `@pytest.mark.lab`.

`lab` boots 2 hosts (dsnt1, dsnt2 on 10.78.1.2 / 10.78.2.2) once per session in a temporary state and
inventory dir, sharing the cached rootfs with the operator's own lab (but nothing of its inventory: tests write their own
group_vars), and always tears them down. Without root
or systemd-nspawn the tests are skipped, except under CI (env CI set) where that is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepseek_node.lab import Lab

# Overridable so that two test sessions on one machine boot separate labs.
LAB_PREFIX = os.environ.get("DEEPSEEK_NODE_TEST_LAB_PREFIX", "dsnt")
LAB_SUBNET = os.environ.get("DEEPSEEK_NODE_TEST_LAB_SUBNET", "10.78")
LAB_HOSTS = 2


def lab_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "lab tests need root (they mount overlays and boot systemd-nspawn containers)"
    for tool, pkg in (("systemd-nspawn", "systemd-container"), ("debootstrap", "debootstrap")):
        if shutil.which(tool) is None:
            return f"lab tests need {tool}: apt-get install -y {pkg}"
    return None


def require_lab() -> None:
    """Skip (fail under CI) when this machine cannot run the lab."""
    reason = lab_unavailable_reason()
    if reason:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but {reason}", pytrace=False)
        pytest.skip(reason)


@pytest.fixture(scope="session")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    """A Lab with LAB_HOSTS hosts booted for the whole session; torn down even when tests fail."""
    require_lab()
    base = tmp_path_factory.mktemp("lab")
    inventory_dir = base / "inventory"
    inventory_dir.mkdir()
    the_lab = Lab(state_dir=base / "state", inventory_dir=inventory_dir, prefix=LAB_PREFIX, subnet=LAB_SUBNET)
    try:
        the_lab.up(count=LAB_HOSTS)
        yield the_lab
    finally:
        the_lab.down()


@pytest.fixture(scope="session")
def lab_inventory(lab: Lab) -> Path:
    """Path of the session lab's hosts.yml (for ansible-playbook -i / ansible_runner inventory=)."""
    return lab.inventory_path


@pytest.fixture(scope="session")
def lab_hosts(lab: Lab) -> list[str]:
    """Names of the session lab's hosts, e.g. ['dsnt1', 'dsnt2']."""
    return lab.names()
