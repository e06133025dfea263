"""Stand-in .debs: real names, versions and layout; clearly marked; indexed and signed into a bundle."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from deepseek_node.bundle.apt import AptSource
from deepseek_node.bundle.manifest import verify_bundle, write_manifest
from tests.fixtures.standin_debs import STANDIN_SUFFIX, add_debs_to_bundle, build_standins


def _field(deb: Path, name: str) -> str:
    return subprocess.run(
        ["dpkg-deb", "-f", str(deb), name], capture_output=True, text=True, check=True
    ).stdout.strip()


def test_standins_carry_real_names_versions_and_a_clear_mark(tmp_path: Path) -> None:
    debs = {d.name.split("_")[0]: d for d in build_standins(tmp_path, "535.309.01", cuda_toolkit=True)}
    assert set(debs) == {
        "nvidia-fabricmanager-535",
        "nvidia-container-toolkit",
        "nvidia-container-toolkit-base",
        "libnvidia-container-tools",
        "libnvidia-container1",
        "nvidia-cuda-toolkit",
    }
    for deb in debs.values():
        assert _field(deb, "Version").endswith(STANDIN_SUFFIX)
        assert _field(deb, "Description").startswith("STAND-IN for tests")
    assert _field(debs["nvidia-fabricmanager-535"], "Version") == "535.309.01-1" + STANDIN_SUFFIX
    assert "nvidia-container-toolkit-base (= 1.17.8-1+standin)" in _field(
        debs["nvidia-container-toolkit"], "Depends"
    )
    files = subprocess.run(
        ["dpkg-deb", "-c", str(debs["nvidia-fabricmanager-535"])], capture_output=True, text=True, check=True
    ).stdout
    assert (
        "./lib/systemd/system/nvidia-fabricmanager.service" in files and "./usr/bin/nv-fabricmanager" in files
    )
    # Same inputs, same bytes: a rebuilt test bundle does not look changed.
    again = build_standins(tmp_path / "again", "535.309.01", cuda_toolkit=True)
    assert [d.read_bytes() for d in sorted(again)] == [
        debs[d.name.split("_")[0]].read_bytes() for d in sorted(again)
    ]


def test_standins_join_a_bundle_that_still_verifies(tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    (bundle / "apt").mkdir(parents=True)
    write_manifest(bundle, {"apt": {"suite": AptSource().suite, "packages_by_role": {}, "key": "keys/k.asc"}})
    debs = build_standins(tmp_path / "debs", "535.261.03")
    try:
        manifest = add_debs_to_bundle(bundle, debs, tmp_path / "gnupg", note="unit test")
    finally:  # signing starts a gpg-agent for this throwaway keyring: stop it
        subprocess.run(["gpgconf", "--homedir", str(tmp_path / "gnupg"), "--kill", "gpg-agent"], check=False)
    assert verify_bundle(bundle).ok
    packages = (bundle / "apt" / "Packages").read_text()
    assert "Package: nvidia-fabricmanager-535\n" in packages and "STAND-IN" in packages
    assert "nvidia-fabricmanager-535" in manifest["apt"]["standin_packages"]
    assert (bundle / "apt" / "InRelease").is_file() and (
        bundle / "keys" / "deepseek-node-archive.asc"
    ).is_file()
    assert json.loads((bundle / "manifest.json").read_text())["apt"]["test_note"] == "unit test"
