"""The bundle's apt repository: real Debian or Ubuntu packages with their dependencies, in a signed flat repo.

Resolution runs in a private apt root (own sources, lists, cache and an empty dpkg status) so it neither
touches the controller's apt state nor assumes anything is installed on a bare target: apt computes the
full install closure for an empty system and downloads exactly that. Debian's archive is the default
mirror; Ubuntu's is reached through a mirror the operator names (--mirror).
"""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

from deepseek_node.bundle.manifest import BundleError
from deepseek_node.bundle.target import DEFAULT_SUITE, SUITES

DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
UBUNTU_KEYRING = "/usr/share/keyrings/ubuntu-archive-keyring.gpg"
DEBIAN_MIRROR = "http://deb.debian.org/debian"
DEBIAN_SECURITY_MIRROR = "http://deb.debian.org/debian-security"
SIGNING_UID = "deepseek-node offline archive <offline-archive@deepseek-node.invalid>"


_DEB_LINE = re.compile(
    r"^deb\s+\[(?P<options>[^\]]*)\]\s+(?P<uri>\S+)\s+(?P<suite>\S+)(?P<components>(?:\s+\S+)*)\s*$"
)


@dataclass(frozen=True)
class ExtraSource:
    """A signed apt repository besides Debian's, e.g. a connected-side mirror of NVIDIA's CUDA repository."""

    uri: str
    suite: str
    components: tuple[str, ...]
    keyring: Path

    def line(self, arch: str) -> str:
        return " ".join(
            ["deb", f"[arch={arch} signed-by={self.keyring}]", self.uri, self.suite, *self.components]
        )


def parse_extra_source(line: str) -> ExtraSource:
    """A one-line `deb [signed-by=KEYRING] URI SUITE [COMPONENT...]` entry; BundleError naming the fix."""
    example = "deb [signed-by=/etc/keys/nvidia.gpg] https://mirror.example/nvidia/debian12/x86_64/ /"
    m = _DEB_LINE.match(line.strip())
    if not m:
        raise BundleError(f"--apt-source {line!r} is not a one-line apt source: give e.g. {example!r}")
    options = dict(o.split("=", 1) if "=" in o else (o, "") for o in m["options"].split())
    if options.get("trusted", "").lower() in ("yes", "true"):
        raise BundleError(
            f"--apt-source {line!r}: trusted=yes turns signature checks off; give its signed-by keyring"
        )
    keyring = options.get("signed-by")
    if not keyring:
        raise BundleError(
            f"--apt-source {line!r} has no signed-by=KEYRING: every source must be signed ({example!r})"
        )
    path = Path(keyring)
    if not path.is_file():
        raise BundleError(
            f"--apt-source {line!r}: keyring {keyring} does not exist: give the repository's key file"
        )
    components = tuple(m["components"].split())
    if not m["suite"].endswith("/") and not components:
        raise BundleError(
            f"--apt-source {line!r}: a suite needs components (a flat repository's suite ends in '/')"
        )
    return ExtraSource(m["uri"], m["suite"], components, path.resolve())


@dataclass(frozen=True)
class Archive:
    """A distribution's archive as apt sees it: its components, the key that signs its Release files and
    the mirrors to use when the operator names none."""

    components: tuple[str, ...]
    keyring: str
    # None: no default (Ubuntu's archive is reached through the operator's mirror only).
    mirror: str | None
    # None: the -security pocket lives on the mirror itself.
    security_mirror: str | None


ARCHIVES: dict[str, Archive] = {
    "Debian": Archive(
        ("main", "contrib", "non-free", "non-free-firmware"),
        DEBIAN_KEYRING,
        DEBIAN_MIRROR,
        DEBIAN_SECURITY_MIRROR,
    ),
    # restricted carries the NVIDIA driver; universe clevis and Prometheus.
    "Ubuntu": Archive(("main", "restricted", "universe", "multiverse"), UBUNTU_KEYRING, None, None),
}


def pockets(suite: str) -> tuple[str, str, str]:
    return (suite, f"{suite}-updates", f"{suite}-security")


@dataclass(frozen=True)
class AptSource:
    mirror: str = DEBIAN_MIRROR
    security_mirror: str = DEBIAN_SECURITY_MIRROR
    suite: str = DEFAULT_SUITE
    arch: str = "amd64"
    extra: tuple[ExtraSource, ...] = ()
    # The key the mirror's Release files are signed with.
    keyring: str = DEBIAN_KEYRING

    @property
    def archive(self) -> Archive:
        return ARCHIVES[SUITES[self.suite][0]]

    def sources_list(self) -> str:
        signed = f"[arch={self.arch} signed-by={self.keyring}]"
        components = " ".join(self.archive.components)
        release, updates, security = pockets(self.suite)
        return (
            f"deb {signed} {self.mirror} {release} {components}\n"
            f"deb {signed} {self.mirror} {updates} {components}\n"
            f"deb {signed} {self.security_mirror} {security} {components}\n"
        ) + "".join(e.line(self.arch) + "\n" for e in self.extra)


def archive_source(
    suite: str,
    mirror: str | None = None,
    security_mirror: str | None = None,
    keyring: str | None = None,
    extra: tuple[ExtraSource, ...] = (),
    arch: str = "amd64",
) -> AptSource:
    """The suite's archive with the operator's mirror and keyring where given, its distribution's defaults
    elsewhere; BundleError naming the flag when a required one is missing."""
    if suite not in SUITES:
        raise BundleError(
            f"--suite {suite!r} is not a release bundles are built for: choose from {', '.join(SUITES)}"
        )
    distribution, release, _python = SUITES[suite]
    archive = ARCHIVES[distribution]
    mirror = mirror or archive.mirror
    if not mirror:
        components = " ".join(archive.components)
        raise BundleError(
            f"--suite {suite} ({distribution} {release}) is built from a mirror of {distribution}'s archive: "
            f"give --mirror URI, e.g. --mirror http://mirror.example/{distribution.lower()} (it must carry "
            f"{', '.join(pockets(suite))} with {components}, signed by {distribution}'s archive key or "
            "the one given with --mirror-keyring)"
        )
    return AptSource(
        mirror=mirror,
        security_mirror=security_mirror or archive.security_mirror or mirror,
        suite=suite,
        arch=arch,
        extra=extra,
        keyring=keyring or archive.keyring,
    )


def check_keyring(source: AptSource) -> None:
    """apt verifies the mirror's Release files with this keyring: missing, every update would fail."""
    if Path(source.keyring).is_file():
        return
    distribution = SUITES[source.suite][0]
    if source.keyring == source.archive.keyring:
        raise BundleError(
            f"--suite {source.suite}: {distribution}'s archive keyring {source.keyring} is not on this machine: "
            f"copy it there, or give --mirror-keyring FILE (the key that signs {source.mirror})"
        )
    raise BundleError(
        f"--mirror-keyring {source.keyring} does not exist: give the key file that signs {source.mirror}"
    )


def _capture(
    argv: Sequence[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), capture_output=True, text=True, env=env, cwd=cwd, check=False)
    except FileNotFoundError as exc:
        raise BundleError(
            f"{what}: {argv[0]} is not installed on the controller (apt-get install it)"
        ) from exc


def _run(argv: Sequence[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    proc = _capture(argv, what, env, cwd)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-8:]
        raise BundleError(f"{what} failed (exit {proc.returncode}):\n  " + "\n  ".join(tail))
    return proc.stdout


class PrivateApt:
    """apt-get/apt-ftparchive driven against a private root under `root`."""

    def __init__(self, root: Path, source: AptSource) -> None:
        self.root = root
        self.source = source
        for sub in (
            "etc/sources.list.d",
            "etc/preferences.d",
            "state/lists/partial",
            "cache/archives/partial",
        ):
            (root / sub).mkdir(parents=True, exist_ok=True)
        # apt reads keyrings as its unprivileged _apt user: an operator's keyring in a private directory
        # would not verify, so the mirror's and each extra source's keyring are copied into this (readable) root.
        keyrings = root / "etc/keyrings"
        keyrings.mkdir(parents=True, exist_ok=True)
        listed = dataclasses.replace(
            source,
            keyring=str(_copy_keyring(Path(source.keyring), keyrings / "archive")),
            extra=tuple(
                dataclasses.replace(e, keyring=_copy_keyring(e.keyring, keyrings / f"extra-{i}"))
                for i, e in enumerate(source.extra)
            ),
        )
        (root / "etc/sources.list").write_text(listed.sources_list())
        (root / "state/status").write_text("")  # an empty system: resolve the full closure

    def _opts(self) -> list[str]:
        r = self.root
        opts = {
            "Dir::Etc::SourceList": r / "etc/sources.list",
            "Dir::Etc::SourceParts": r / "etc/sources.list.d",
            "Dir::Etc::Preferences": r / "etc/preferences",
            "Dir::Etc::PreferencesParts": r / "etc/preferences.d",
            "Dir::State": r / "state",
            "Dir::State::status": r / "state/status",
            "Dir::Cache": r / "cache",
            "Debug::NoLocking": "1",
            "Acquire::Languages": "none",
            "APT::Architecture": self.source.arch,
            "APT::Install-Recommends": "false",
        }
        out: list[str] = []
        for key, val in opts.items():
            out += ["-o", f"{key}={val}"]
        return out

    def update(self) -> None:
        _run(["apt-get", *self._opts(), "-qq", "update"], "apt-get update (bundle's private apt root)")

    def resolve(self, packages: Sequence[str]) -> dict[str, str]:
        """{package: version} of everything an empty system needs to install `packages` (apt's simulation);
        MissingPackages naming each package the mirror lacks."""
        proc = _capture(
            ["apt-get", *self._opts(), "-s", "-y", "install", *packages], "simulating the install"
        )
        if proc.returncode != 0:
            missing = missing_packages(proc.stdout + "\n" + proc.stderr)
            if missing:
                raise MissingPackages(missing_message(missing, self.source))
            # The unmet dependencies are on stdout, apt's verdict on stderr: both say what went wrong.
            said = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
            raise BundleError(
                f"resolving {', '.join(packages)} failed (exit {proc.returncode}):\n  "
                + "\n  ".join(said[-8:])
            )
        return installs(proc.stdout)

    def download_closure(self, packages: Sequence[str], dest: Path) -> list[Path]:
        """Download `packages` and every dependency an empty system would need into `dest`."""
        if not packages:
            return []
        # Resolve first: a package the mirror lacks is named, with the suite and mirror, before any download.
        wanted = self.resolve(packages)
        archives = self.root / "cache/archives"
        _run(
            ["apt-get", *self._opts(), "-qq", "-y", "--download-only", "install", *packages],
            f"resolving and downloading {', '.join(packages)}",
        )
        dest.mkdir(parents=True, exist_ok=True)
        # The cache keeps older downloads, and other releases' (one cache serves every suite): take exactly
        # the versions this resolution chose.
        debs = []
        for deb in sorted(archives.glob("*.deb")):
            if deb_version(deb.name) in wanted.items():
                target = dest / deb.name
                shutil.copy2(deb, target)
                debs.append(target)
        missing = set(wanted) - {d.name.split("_", 1)[0] for d in debs}
        if missing:
            raise BundleError(
                f"apt resolved but did not download: {', '.join(sorted(missing))}; rerun the build"
            )
        return debs

    def _resolved_names(self, packages: Sequence[str]) -> set[str]:
        return set(self.resolve(packages))


class MissingPackages(BundleError):
    """The mirror lacks packages the bundle needs; the message names them, the suite and the mirror."""


_INST = re.compile(r"^Inst (?P<name>\S+) (?:\[\S+\] )?\((?P<version>\S+) ")
# apt-get's words for a package it cannot find, asked for directly or needed by another.
_NOT_FOUND = (
    re.compile(r"^E: Unable to locate package (?P<name>\S+)"),
    re.compile(r"^E: Package '(?P<name>[^']+)' has no installation candidate"),
)
_UNMET = re.compile(
    r"^\s*(?:(?P<by>\S+) : )?(?:Pre-?)?Depends: (?P<name>\S+)(?: \([^)]*\))? but it is (?:not installable|a virtual package)"
)
_UNMET_HEAD = re.compile(r"^\s*(?P<by>\S+) : ")


def deb_version(filename: str) -> tuple[str, str]:
    """(package, version) of a .deb in apt's cache: NAME_VERSION_ARCH.deb, the epoch's ':' as %3a."""
    name, version = filename.split("_")[:2]
    return name, unquote(version)


def installs(simulation: str) -> dict[str, str]:
    """{package: version} from `apt-get -s install` output ("Inst NAME [OLD] (VERSION ORIGIN [ARCH])")."""
    return {m["name"]: m["version"] for m in map(_INST.match, simulation.splitlines()) if m}


def missing_packages(apt_output: str) -> dict[str, str | None]:
    """{package: the package that needs it, or None when it was asked for} for each package apt could not
    find in `apt_output`."""
    missing: dict[str, str | None] = {}
    by = None
    for line in apt_output.splitlines():
        for pattern in _NOT_FOUND:
            if m := pattern.match(line):
                missing.setdefault(m["name"], None)
        if head := _UNMET_HEAD.match(line):
            by = head["by"]
        if m := _UNMET.match(line):
            missing.setdefault(m["name"], m["by"] or by)
    return missing


def missing_message(missing: dict[str, str | None], source: AptSource) -> str:
    distribution, release, _python = SUITES[source.suite]
    named = ", ".join(f"{name} (needed by {by})" if by else name for name, by in sorted(missing.items()))
    searched = f"{source.mirror}" + (
        f" and {source.security_mirror}" if source.security_mirror != source.mirror else ""
    )
    extra = f", nor in the {len(source.extra)} --apt-source repositories" if source.extra else ""
    return (
        f"{distribution} {release} ({', '.join(pockets(source.suite))}: {' '.join(source.archive.components)}) "
        f"at {searched} has no {named}{extra}. Check that the mirror carries every pocket and component "
        "(a partial mirror may leave some out) and that --apt-package names are spelled right, or leave the "
        "role that needs it out (--skip-role)"
    )


def _copy_keyring(keyring: Path, stem: Path) -> Path:
    """`keyring` copied to `stem` with its suffix (apt tells armored .asc keys from binary ones by it)."""
    copy = stem.with_name(stem.name + ("".join(keyring.suffixes[-1:]) or ".gpg"))
    shutil.copyfile(keyring, copy)
    copy.chmod(0o644)
    return copy


def _gpg(home: Path, *args: str, what: str) -> str:
    env = {**os.environ, "GNUPGHOME": str(home)}
    return _run(
        ["gpg", "--batch", "--yes", "--pinentry-mode", "loopback", "--passphrase", "", *args], what, env
    )


def ensure_signing_key(home: Path) -> None:
    """A dedicated archive-signing key, created once and kept with the controller's cache."""
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(home, 0o700)
    listed = subprocess.run(
        ["gpg", "--batch", "--list-secret-keys", SIGNING_UID],
        env={**os.environ, "GNUPGHOME": str(home)},
        capture_output=True,
        check=False,
    )
    if listed.returncode != 0:
        _gpg(
            home, "--quick-gen-key", SIGNING_UID, "ed25519", "sign", "never", what="creating the signing key"
        )


def build_flat_repo(repo: Path, suite: str, gnupg_home: Path, public_key_out: Path) -> None:
    """Index `repo` (a directory of .debs) as a flat repository and sign its Release file."""
    packages = _run(["apt-ftparchive", "packages", "."], "apt-ftparchive packages", cwd=repo)
    (repo / "Packages").write_text(packages)
    _run(["gzip", "-9nkf", str(repo / "Packages")], "compressing Packages")
    release = _run(
        [
            "apt-ftparchive",
            "-o", "APT::FTPArchive::Release::Origin=deepseek-node",
            "-o", "APT::FTPArchive::Release::Label=deepseek-node offline bundle",
            "-o", f"APT::FTPArchive::Release::Suite={suite}",
            "release", ".",
        ],
        "apt-ftparchive release",
        cwd=repo,
    )  # fmt: skip
    (repo / "Release").write_text(release)
    ensure_signing_key(gnupg_home)
    _gpg(
        gnupg_home,
        "--clearsign",
        "-o",
        str(repo / "InRelease"),
        str(repo / "Release"),
        what="signing InRelease",
    )
    _gpg(
        gnupg_home, "-abs", "-o", str(repo / "Release.gpg"), str(repo / "Release"), what="signing Release.gpg"
    )
    public_key_out.parent.mkdir(parents=True, exist_ok=True)
    public_key_out.write_text(
        _gpg(gnupg_home, "--armor", "--export", SIGNING_UID, what="exporting the public key")
    )
