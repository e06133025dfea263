"""The bundle's collections: deepseek.node and its pinned dependencies as tarballs that an air-gapped
controller installs with `ansible-galaxy collection install --offline` and nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import yaml

from deepseek_node.bundle.collection import (
    build_collections,
    build_installed,
    find_installed,
    pinned_version,
    unexpected_content,
)
from deepseek_node.bundle.manifest import BundleError

BIN = Path(sys.executable).parent
META = {"namespace": "acme", "name": "demo", "build_ignore": ["tests", ".*", "bundle*"]}


@pytest.mark.parametrize(
    ("spec", "version"), [("==2.1.0", "2.1.0"), ("2.1.0", "2.1.0"), (" == 3.0.5 ", "3.0.5")]
)
def test_pins_name_one_version(spec: str, version: str) -> None:
    assert pinned_version("ansible.posix", spec) == version


@pytest.mark.parametrize("spec", [">=2.1.0", "*", "==2.1.0,<3", "", "!=1"])
def test_ranges_are_refused(spec: str) -> None:
    with pytest.raises(BundleError, match="pin it to one version"):
        pinned_version("ansible.posix", spec)


def test_stray_top_level_entries_are_named() -> None:
    names = [
        "roles",
        "plugins",
        "README.md",
        "tests",
        ".venv",
        "bundle.partial",
        "acme-demo-1.0.0.tar.gz",
        "junk",
    ]
    assert unexpected_content(names, META) == ["junk"]
    assert unexpected_content(["README.md"], {**META, "readme": "COLLECTION.md"}) == ["README.md"]


def _installed(site: Path, fqcn: str, version: str) -> Path:
    """A minimal installed collection, as ansible-galaxy (or the ansible package) leaves one."""
    namespace, name = fqcn.split(".")
    path = site / "ansible_collections" / namespace / name
    (path / "plugins/modules").mkdir(parents=True)
    (path / "plugins/modules/thing.py").write_text("#!/usr/bin/python\n")
    (path / "plugins/modules/__pycache__").mkdir()
    (path / "plugins/modules/__pycache__/thing.cpython-311.pyc").write_bytes(b"\0")
    (path / "README.md").write_text("demo\n")
    info = {
        "namespace": namespace, "name": name, "version": version, "authors": ["x"], "readme": "README.md",
        "tags": [], "description": "d", "license": ["Apache-2.0"], "license_file": None, "dependencies": {},
        "repository": None, "documentation": None, "homepage": None, "issues": None,
    }  # fmt: skip
    (path / "MANIFEST.json").write_text(json.dumps({"collection_info": info}))
    (path / "FILES.json").write_text(
        json.dumps({"files": [], "format": 1})
    )  # lists files the package dropped
    return path


def _project(root: Path, pins: dict[str, str]) -> Path:
    (root / "roles/r/tasks").mkdir(parents=True)
    (root / "roles/r/tasks/main.yml").write_text("---\n- name: Nothing\n  ansible.builtin.meta: noop\n")
    (root / "README.md").write_text("acme.demo\n")
    (root / "tests").mkdir()
    (root / "tests/big.bin").write_bytes(b"x" * 1024)
    galaxy = {
        "namespace": "acme",
        "name": "demo",
        "version": "1.0.0",
        "readme": "README.md",
        "authors": ["x"],
    }
    (root / "galaxy.yml").write_text(
        yaml.safe_dump({**galaxy, "dependencies": pins, "build_ignore": ["tests"]})
    )
    return root


def test_builds_the_collection_and_its_dependencies_that_install_offline(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _installed(site, "acme.dep", "2.0.0")
    out = tmp_path / "out"
    built = build_collections(
        _project(tmp_path / "proj", {"acme.dep": "==2.0.0"}), out, lambda _m: None, [site]
    )
    assert built == {"acme.demo": "acme-demo-1.0.0.tar.gz", "acme.dep": "acme-dep-2.0.0.tar.gz"}
    with tarfile.open(out / "acme-dep-2.0.0.tar.gz") as tar:
        names = set(tar.getnames())
    assert "plugins/modules/thing.py" in names and not any("__pycache__" in n for n in names)
    with tarfile.open(out / "acme-demo-1.0.0.tar.gz") as tar:
        assert not any(n.startswith("tests") for n in tar.getnames())
    # Only the bundle's tarballs: the dependency is resolved from its tarball, not from anything installed.
    dest = tmp_path / "installed"
    env = {**os.environ, "ANSIBLE_CONFIG": str(tmp_path / "none.cfg"), "ANSIBLE_COLLECTIONS_PATH": str(dest)}
    (tmp_path / "none.cfg").write_text("[defaults]\n")
    proc = subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "install", "--offline", "-p", str(dest),
         *(str(out / name) for name in built.values())],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for fqcn in built:
        assert (dest / "ansible_collections" / fqcn.replace(".", "/") / "MANIFEST.json").is_file()


def test_a_pin_the_controller_does_not_have_stops_the_build(tmp_path: Path) -> None:
    site = tmp_path / "site"
    _installed(site, "acme.dep", "2.0.1")
    with pytest.raises(
        BundleError, match=r"pins acme\.dep ==2\.0\.0, but this controller's Python has 2\.0\.1"
    ):
        build_collections(
            _project(tmp_path / "proj", {"acme.dep": "==2.0.0"}), tmp_path / "out", lambda _m: None, [site]
        )
    with pytest.raises(BundleError, match="no copy of it"):
        build_collections(
            _project(tmp_path / "p2", {"acme.other": "1.0.0"}), tmp_path / "out", lambda _m: None, [site]
        )


def test_a_stray_directory_in_the_tree_stops_the_build(tmp_path: Path) -> None:
    root = _project(tmp_path / "proj", {})
    (root / "my-bundle").mkdir()
    with pytest.raises(BundleError, match="holds my-bundle, which is not collection content"):
        build_collections(root, tmp_path / "out", lambda _m: None, [])


@pytest.mark.slow
def test_a_real_dependency_from_the_ansible_package_installs_offline(tmp_path: Path) -> None:
    installed = find_installed("ansible.posix", [Path(p) for p in sys.path if p])
    assert installed is not None
    name = build_installed(installed, tmp_path)
    dest = tmp_path / "installed"
    proc = subprocess.run(
        [str(BIN / "ansible-galaxy"), "collection", "install", "--offline", "--force", "-p", str(dest), str(tmp_path / name)],
        cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    version = json.loads((installed / "MANIFEST.json").read_text())["collection_info"]["version"]
    assert name == f"ansible-posix-{version}.tar.gz"
    assert (dest / "ansible_collections/ansible/posix/plugins/modules/mount.py").read_bytes() == (
        installed / "plugins/modules/mount.py"
    ).read_bytes()
