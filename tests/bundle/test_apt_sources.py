"""Extra signed apt repositories at build time (e.g. the connected side's mirror of NVIDIA's): parsed, and
refused with the fix named. tests/e2e/test_vendor_source_lab.py proves them end to end."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepseek_node.bundle.apt import AptSource, parse_extra_source
from deepseek_node.bundle.build import role_apt_packages
from deepseek_node.bundle.manifest import BundleError


def _keyring(tmp_path: Path) -> Path:
    key = tmp_path / "vendor.asc"
    key.write_text("-----BEGIN PGP PUBLIC KEY BLOCK-----\n")
    return key


def test_a_signed_one_line_source_is_accepted(tmp_path: Path) -> None:
    key = _keyring(tmp_path)
    flat = parse_extra_source(f"deb [signed-by={key}] https://mirror.example/nvidia/debian12/x86_64/ /")
    assert flat.suite == "/" and flat.components == ()
    suite = parse_extra_source(f"deb [arch=amd64 signed-by={key}] https://m.example/debian bookworm main")
    lines = AptSource(extra=(flat, suite)).sources_list().splitlines()
    assert lines[-2] == f"deb [arch=amd64 signed-by={key}] https://mirror.example/nvidia/debian12/x86_64/ /"
    assert lines[-1] == f"deb [arch=amd64 signed-by={key}] https://m.example/debian bookworm main"


@pytest.mark.parametrize(
    ("line", "needle"),
    [
        ("https://mirror.example/ /", "not a one-line apt source"),
        ("deb [arch=amd64] https://mirror.example/ /", "no signed-by"),
        ("deb [trusted=yes] https://mirror.example/ /", "trusted=yes"),
        ("deb [signed-by=/nonexistent/key.gpg] https://mirror.example/ /", "does not exist"),
        ("deb [signed-by={key}] https://mirror.example/debian bookworm", "needs components"),
    ],
)
def test_unsigned_or_malformed_sources_are_refused(tmp_path: Path, line: str, needle: str) -> None:
    with pytest.raises(BundleError, match=needle):
        parse_extra_source(line.format(key=_keyring(tmp_path)))


def test_vendor_packages_are_taken_only_with_an_extra_source(tmp_path: Path) -> None:
    defaults = tmp_path / "roles" / "fabric" / "defaults"
    defaults.mkdir(parents=True)
    (defaults / "main.yml").write_text(
        "fabric_bundle_apt_packages: [pciutils]\nfabric_bundle_vendor_apt_packages: [nvidia-fabricmanager-580]\n"
    )
    assert role_apt_packages(tmp_path) == {"fabric": ["pciutils"]}
    assert role_apt_packages(tmp_path, vendor=True) == {"fabric": ["pciutils", "nvidia-fabricmanager-580"]}
