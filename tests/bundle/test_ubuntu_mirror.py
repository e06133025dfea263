"""Ubuntu targets through an operator's mirror: the private apt root's sources for each release, the
per-release package lists, and real apt resolution against recorded excerpts of Ubuntu's indexes
(tests/fixtures/ubuntu-mirror, signed here with a throwaway key)."""

from __future__ import annotations

import dataclasses
import hashlib
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from deepseek_node.bundle import apt as apt_mod
from deepseek_node.bundle.apt import (
    DEBIAN_KEYRING,
    SIGNING_UID,
    UBUNTU_KEYRING,
    AptSource,
    MissingPackages,
    PrivateApt,
    _gpg,
    archive_source,
    check_keyring,
    ensure_signing_key,
    missing_packages,
)
from deepseek_node.bundle.build import python_mismatch, role_apt_packages
from deepseek_node.bundle.manifest import BundleError
from deepseek_node.bundle.target import SUITES
from deepseek_node.bundle.wheels import SUITE_TARGETS
from deepseek_node.paths import project_root

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "ubuntu-mirror"
UBUNTU_COMPONENTS = "main restricted universe multiverse"
DEBIAN_COMPONENTS = "main contrib non-free non-free-firmware"


# --- sources of the private apt root -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("suite", "flags", "expected"),
    [
        (
            "bookworm",
            {},
            [
                f"deb [arch=amd64 signed-by={DEBIAN_KEYRING}] http://deb.debian.org/debian bookworm {DEBIAN_COMPONENTS}",
                f"deb [arch=amd64 signed-by={DEBIAN_KEYRING}] http://deb.debian.org/debian bookworm-updates {DEBIAN_COMPONENTS}",
                f"deb [arch=amd64 signed-by={DEBIAN_KEYRING}] http://deb.debian.org/debian-security bookworm-security {DEBIAN_COMPONENTS}",
            ],
        ),
        (
            "trixie",
            {"mirror": "http://mirror.internal/debian", "security_mirror": "http://mirror.internal/debian-security",
             "keyring": "/etc/keys/mirror.gpg"},
            [
                f"deb [arch=amd64 signed-by=/etc/keys/mirror.gpg] http://mirror.internal/debian trixie {DEBIAN_COMPONENTS}",
                f"deb [arch=amd64 signed-by=/etc/keys/mirror.gpg] http://mirror.internal/debian trixie-updates {DEBIAN_COMPONENTS}",
                f"deb [arch=amd64 signed-by=/etc/keys/mirror.gpg] http://mirror.internal/debian-security trixie-security {DEBIAN_COMPONENTS}",
            ],
        ),
        (
            "jammy",
            {"mirror": "http://mirror.internal/ubuntu"},
            [
                f"deb [arch=amd64 signed-by={UBUNTU_KEYRING}] http://mirror.internal/ubuntu jammy {UBUNTU_COMPONENTS}",
                f"deb [arch=amd64 signed-by={UBUNTU_KEYRING}] http://mirror.internal/ubuntu jammy-updates {UBUNTU_COMPONENTS}",
                f"deb [arch=amd64 signed-by={UBUNTU_KEYRING}] http://mirror.internal/ubuntu jammy-security {UBUNTU_COMPONENTS}",
            ],
        ),
        (
            "noble",
            {"mirror": "https://mirror.internal/ubuntu", "security_mirror": "https://mirror.internal/ubuntu-security",
             "keyring": "/etc/keys/ubuntu-mirror.asc"},
            [
                f"deb [arch=amd64 signed-by=/etc/keys/ubuntu-mirror.asc] https://mirror.internal/ubuntu noble {UBUNTU_COMPONENTS}",
                f"deb [arch=amd64 signed-by=/etc/keys/ubuntu-mirror.asc] https://mirror.internal/ubuntu noble-updates {UBUNTU_COMPONENTS}",
                f"deb [arch=amd64 signed-by=/etc/keys/ubuntu-mirror.asc] https://mirror.internal/ubuntu-security noble-security {UBUNTU_COMPONENTS}",
            ],
        ),
    ],
)  # fmt: skip
def test_sources_are_rendered_for_each_release(suite: str, flags: dict, expected: list[str]) -> None:
    assert archive_source(suite, **flags).sources_list().splitlines() == expected


def test_ubuntu_needs_a_mirror() -> None:
    with pytest.raises(BundleError) as err:
        archive_source("noble")
    message = str(err.value)
    assert "--suite noble (Ubuntu 24.04)" in message and "give --mirror URI" in message
    assert "--mirror http://mirror.example/ubuntu" in message
    assert "noble, noble-updates, noble-security" in message and UBUNTU_COMPONENTS in message


def test_a_missing_keyring_names_the_flag(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    absent = str(tmp_path / "ubuntu-archive-keyring.gpg")
    ubuntu = dataclasses.replace(apt_mod.ARCHIVES["Ubuntu"], keyring=absent)
    monkeypatch.setitem(apt_mod.ARCHIVES, "Ubuntu", ubuntu)
    with pytest.raises(BundleError, match=r"keyring .* is not on this machine.*--mirror-keyring FILE"):
        check_keyring(archive_source("jammy", mirror="http://mirror.internal/ubuntu"))
    given = archive_source(
        "jammy", mirror="http://mirror.internal/ubuntu", keyring=str(tmp_path / "nope.gpg")
    )
    with pytest.raises(BundleError, match=r"--mirror-keyring .*nope\.gpg does not exist"):
        check_keyring(given)
    (tmp_path / "nope.gpg").write_bytes(b"key")
    check_keyring(given)


def test_the_cli_asks_for_a_mirror_for_ubuntu(tmp_path: Path) -> None:
    from deepseek_node.cli.main import app

    args = ["bundle", "build", "--out", str(tmp_path / "b"), "--tiny-model", "--suite", "jammy"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2
    assert "--mirror" in result.output and "mirror.example/ubuntu" in result.output
    key = tmp_path / "k.gpg"
    result = CliRunner().invoke(app, [*args, "--mirror", "http://m/ubuntu", "--mirror-keyring", str(key)])
    assert result.exit_code == 2 and "does not exist" in result.output


# --- what each release's archive calls the packages ---------------------------------------------------


def _all(suite: str) -> dict[str, list[str]]:
    return role_apt_packages(project_root(), suite=suite)


def test_ubuntu_carries_the_driver_the_role_installs_there() -> None:
    """vars/Ubuntu.yml names the server branch's packages; the bundle carries them at the default branch."""
    roles = project_root() / "roles" / "nvidia_driver"
    branch = str(yaml.safe_load((roles / "defaults/main.yml").read_text())["nvidia_driver_branch"])
    names = yaml.safe_load((roles / "vars/Ubuntu.yml").read_text())

    def render(value: str) -> str:
        return value.replace("{{ nvidia_driver_branch }}", branch)

    installed = {
        render(names["__nvidia_driver_closed_kernel_package"]),
        *map(render, names["__nvidia_driver_userspace_packages"]),
        *names["__nvidia_driver_support_packages"],
        *names["__nvidia_driver_secure_boot_packages"],
    }
    for suite in ("jammy", "noble"):
        carried = set(_all(suite)["nvidia_driver"])
        assert carried == installed | {"linux-headers-generic"}  # the headers of the running kernel
        assert "nvidia-dkms-535-server" in carried


@pytest.mark.parametrize("suite", ["jammy", "noble"])
def test_debian_only_names_stay_out_of_ubuntu_bundles(suite: str) -> None:
    carried = {p for pkgs in _all(suite).values() for p in pkgs}
    debian_only = {"nvidia-kernel-dkms", "nvidia-smi", "libcuda1", "libnvidia-ml1", "linux-headers-amd64"}
    assert not carried & debian_only
    assert "nvidia-cuda-toolkit" not in carried  # NVIDIA's cuda-toolkit-X-Y comes from its repository
    assert "cuda_toolkit" not in _all(suite)


def test_renamed_libraries_follow_the_release() -> None:
    old = {"libtss2-esys-3.0.2-0", "libtss2-mu0", "libtss2-rc0"}
    t64 = {"libtss2-esys-3.0.2-0t64", "libtss2-mu-4.0.1-0t64", "libtss2-rc0t64"}
    for suite in ("bookworm", "jammy"):
        assert old <= set(_all(suite)["disk_encryption"])
    for suite in ("trixie", "noble"):
        assert t64 <= set(_all(suite)["disk_encryption"]) and not old & set(_all(suite)["disk_encryption"])
    assert _all("bookworm")["nvidia_driver"][0] == "nvidia-kernel-dkms"


def test_a_list_for_an_unknown_release_is_refused(tmp_path: Path) -> None:
    defaults = tmp_path / "roles" / "fabric" / "defaults"
    defaults.mkdir(parents=True)
    (defaults / "main.yml").write_text(
        "fabric_bundle_apt_packages: [pciutils]\nfabric_bundle_apt_packages_by_suite: {focal: [pciutils]}\n"
    )
    with pytest.raises(BundleError, match=r"unknown suite.*focal"):
        role_apt_packages(tmp_path)


def test_every_release_has_wheels_for_its_python() -> None:
    assert {s: t.python_version for s, t in SUITE_TARGETS.items()} == {s: v[2] for s, v in SUITES.items()}
    assert python_mismatch(project_root(), "noble") == ""
    why = python_mismatch(project_root(), "jammy")
    assert "Ubuntu 22.04's python3 is 3.10" in why and "requires Python >=3.11" in why and "noble" in why


# --- resolution against the recorded indexes ------------------------------------------------------------


def _stanzas(text: str) -> list[str]:
    return [s for s in text.split("\n\n") if s.strip()]


def _field(stanza: str, name: str) -> str:
    m = re.search(rf"^{name}: (.*)$", stanza, flags=re.M)
    return m[1] if m else ""


def _refresh_release(release: Path) -> None:
    """Recompute the Release file's SHA256 block from the indexes beside it."""
    head = release.read_text().split("SHA256:\n", 1)[0]
    lines = [
        f" {hashlib.sha256(p.read_bytes()).hexdigest()} {p.stat().st_size:16d} {p.relative_to(release.parent)}"
        for p in sorted(release.parent.glob("*/binary-*/Packages"))
    ]
    release.write_text(head + "SHA256:\n" + "\n".join(lines) + "\n")


def _mirror(dest: Path, gnupg: Path, drop: frozenset[str] = frozenset()) -> tuple[str, Path]:
    """The fixture copied to `dest` less the `drop` packages, its Release files signed into InRelease with
    the key in `gnupg`; (its file: URI, the public key)."""
    shutil.copytree(FIXTURE, dest)
    for packages in dest.glob("dists/*/*/binary-*/Packages"):
        kept = [s for s in _stanzas(packages.read_text()) if _field(s, "Package") not in drop]
        packages.write_text("\n\n".join(kept) + ("\n" if kept else ""))
    for release in dest.glob("dists/*/Release"):
        _refresh_release(release)
        _gpg(gnupg, "--clearsign", "-o", str(release.with_name("InRelease")), str(release), what="signing")
    key = dest.parent / f"{dest.name}-key.asc"
    key.write_text(_gpg(gnupg, "--armor", "--export", SIGNING_UID, what="exporting the key"))
    return f"file:{dest}", key


def _published(suite: str) -> dict[str, set[str]]:
    """{package: its versions} over the suite's three pockets in the fixture."""
    out: dict[str, set[str]] = {}
    for packages in FIXTURE.glob(f"dists/{suite}*/*/binary-amd64/Packages"):
        if packages.parts[-4] not in (suite, f"{suite}-updates", f"{suite}-security"):
            continue
        for s in _stanzas(packages.read_text()):
            out.setdefault(_field(s, "Package"), set()).add(_field(s, "Version"))
    return out


@pytest.fixture(scope="module")
def gnupg(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    if not all(shutil.which(tool) for tool in ("apt-get", "gpg", "gpgv")):
        pytest.skip("needs apt and gnupg (scripts/setup.sh installs them)")
    home = tmp_path_factory.mktemp("gnupg")
    ensure_signing_key(home)
    yield home
    # Signing starts a gpg-agent for this throwaway keyring: stop it.
    subprocess.run(["gpgconf", "--homedir", str(home), "--kill", "gpg-agent"], check=False)


def _apt(tmp_path: Path, gnupg: Path, suite: str, drop: frozenset[str] = frozenset()) -> PrivateApt:
    uri, key = _mirror(tmp_path / "mirror", gnupg, drop)
    apt = PrivateApt(tmp_path / "apt-root", archive_source(suite, mirror=uri, keyring=str(key)))
    apt.update()
    return apt


def _wanted(suite: str) -> list[str]:
    return sorted({p for pkgs in _all(suite).values() for p in pkgs})


@pytest.mark.parametrize(
    ("suite", "expect"),
    [
        (
            "jammy",
            {
                "python3.10": "3.10.12-1~22.04.11",
                "python3": "3.10.6-1~22.04.1",
                "libssl3": "3.0.2-0ubuntu1.20",  # -updates/-security over the release pocket's 3.0.2-0ubuntu1
                "tzdata": "2025b-0ubuntu0.22.04.1",
                "nvidia-dkms-535-server": "535.261.03-0ubuntu0.22.04.1",  # restricted
                "clevis-tpm2": "18-1build1",  # universe
                "libtss2-mu0": "3.2.0-1ubuntu1",
                "linux-headers-5.15.0-161-generic": "5.15.0-161.171",
            },
        ),
        (
            "noble",
            {
                "python3.12": "3.12.3-1ubuntu0.8",
                "python3": "3.12.3-0ubuntu2",
                "libssl3t64": "3.0.13-0ubuntu3.6",
                "tzdata": "2025b-0ubuntu0.24.04.1",
                "nvidia-dkms-535-server": "535.261.03-0ubuntu0.24.04.1",
                "clevis-tpm2": "20-1",
                "libtss2-mu-4.0.1-0t64": "4.0.1-7.1ubuntu5.1",
                "linux-headers-6.8.0-85-generic": "6.8.0-85.85",
            },
        ),
    ],
)
def test_the_bundle_resolves_its_closure_from_the_mirror(
    tmp_path: Path, gnupg: Path, suite: str, expect: dict[str, str]
) -> None:
    """apt, in the bundle's private root with the rendered sources, resolves the release's lists to exactly
    the excerpt (each stanza in it is needed, none is missing), taking the newest pocket's version."""
    closure = _apt(tmp_path, gnupg, suite).resolve(_wanted(suite))
    published = _published(suite)
    assert set(closure) == set(published)
    assert len(closure) > 200
    for name, version in expect.items():
        assert closure[name] == version, name
    python = {"jammy": "3.10", "noble": "3.12"}[suite]
    assert python == SUITES[suite][2] and f"python{python}-venv" in closure


def test_a_package_the_mirror_lacks_is_named_with_the_suite_and_mirror(tmp_path: Path, gnupg: Path) -> None:
    apt = _apt(tmp_path, gnupg, "jammy", drop=frozenset({"jose"}))
    with pytest.raises(MissingPackages) as err:
        apt.resolve(["python3-venv", "nvidia-driver"])  # Debian's driver package: no such name on Ubuntu
    message = str(err.value)
    assert message.startswith("Ubuntu 22.04 (jammy, jammy-updates, jammy-security: main restricted")
    assert f"at file:{tmp_path / 'mirror'} has no nvidia-driver." in message
    with pytest.raises(MissingPackages, match=r"has no jose \(needed by clevis\)"):
        apt.resolve(_wanted("jammy"))


def test_apt_words_for_missing_packages_are_read() -> None:
    said = """The following packages have unmet dependencies:
 clevis : Depends: jose but it is not installable
          Depends: luksmeta (>= 8) but it is not installable
 nvidia-dkms-535-server : PreDepends: dkms but it is a virtual package
 prometheus : Depends: libc6 (>= 2.34) but 2.31 is to be installed
E: Unable to locate package nvidia-driver
E: Package 'firmware-misc-nonfree' has no installation candidate
"""
    assert missing_packages(said) == {
        "jose": "clevis",
        "luksmeta": "clevis",
        "dkms": "nvidia-dkms-535-server",
        "nvidia-driver": None,
        "firmware-misc-nonfree": None,
    }
    assert missing_packages("Inst foo (1.0 Ubuntu:22.04/jammy [amd64])\n") == {}
    assert AptSource().archive.components[0] == "main"
