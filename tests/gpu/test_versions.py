"""Package versions: upstream versions, repository listings, picking the pinned one."""

from __future__ import annotations

from deepseek_node.gpu import (
    compare_versions,
    parse_repo_versions,
    parse_repo_versions_by_package,
    pick_version,
    upstream_version,
)

MADISON = """\
nvidia-kernel-dkms | 535.309.01-0+deb12u1 | http://deb.debian.org/debian-security bookworm-security/non-free amd64 Packages
nvidia-kernel-dkms | 535.261.03-1 | http://deb.debian.org/debian bookworm/non-free amd64 Packages
nvidia-smi | 535.309.01-0+deb12u1 | file:/srv/deepseek-node/bundle/apt ./ Packages
"""

DNF = """\
Available Packages
kmod-nvidia-latest-dkms.x86_64     3:550.54.15-1.el9     cuda-rhel9-x86_64
kmod-nvidia-latest-dkms.x86_64     3:535.161.08-1.el9    cuda-rhel9-x86_64
nvidia-driver.x86_64               3:550.54.15-1.el9     cuda-rhel9-x86_64
"""


def test_upstream_version_drops_epoch_and_revision() -> None:
    assert upstream_version("535.309.01-0+deb12u1") == "535.309.01"
    assert upstream_version("3:550.54.15-1.el9") == "550.54.15"
    assert upstream_version("1.17.8-1+standin") == "1.17.8"


def test_compare_versions() -> None:
    assert compare_versions("535.104.05", "535.86.09") == 1
    assert compare_versions("570.26", "570.26.0") == 0
    assert compare_versions("450.80.02", "520.61.05") == -1


def test_madison_listing_by_package_newest_first() -> None:
    by = parse_repo_versions_by_package(MADISON)
    assert by["nvidia-kernel-dkms"] == ["535.309.01-0+deb12u1", "535.261.03-1"]
    assert by["nvidia-smi"] == ["535.309.01-0+deb12u1"]
    assert parse_repo_versions("") == []


def test_dnf_listing_by_package() -> None:
    by = parse_repo_versions_by_package(DNF, "RedHat")
    assert by["kmod-nvidia-latest-dkms"] == ["3:550.54.15-1.el9", "3:535.161.08-1.el9"]
    assert by["nvidia-driver"] == ["3:550.54.15-1.el9"]


def test_pick_version_by_upstream_pin_or_branch() -> None:
    offered = ["535.309.01-0+deb12u1", "535.261.03-1"]
    assert pick_version(offered) == "535.309.01-0+deb12u1"
    assert pick_version(offered, "535.261.03") == "535.261.03-1"
    assert pick_version(offered, "535") == "535.309.01-0+deb12u1"
    assert pick_version(offered, "550.54.15") is None
    assert pick_version([], "") is None
