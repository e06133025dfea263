"""The bundle's apt repository: real Debian packages with their dependencies, in a signed flat repo.

Resolution runs in a private apt root (own sources, lists, cache and an empty dpkg status) so it neither
touches the controller's apt state nor assumes anything is installed on a bare target: apt computes the
full install closure for an empty system and downloads exactly that.
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

from deepseek_node.bundle.manifest import BundleError

DEBIAN_KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"
COMPONENTS = "main contrib non-free non-free-firmware"
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
class AptSource:
    mirror: str = "http://deb.debian.org/debian"
    security_mirror: str = "http://deb.debian.org/debian-security"
    suite: str = "bookworm"
    arch: str = "amd64"
    extra: tuple[ExtraSource, ...] = ()

    def sources_list(self) -> str:
        signed = f"[arch={self.arch} signed-by={DEBIAN_KEYRING}]"
        return (
            f"deb {signed} {self.mirror} {self.suite} {COMPONENTS}\n"
            f"deb {signed} {self.mirror} {self.suite}-updates {COMPONENTS}\n"
            f"deb {signed} {self.security_mirror} {self.suite}-security {COMPONENTS}\n"
        ) + "".join(e.line(self.arch) + "\n" for e in self.extra)


def _run(argv: Sequence[str], what: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    try:
        proc = subprocess.run(list(argv), capture_output=True, text=True, env=env, cwd=cwd, check=False)
    except FileNotFoundError as exc:
        raise BundleError(
            f"{what}: {argv[0]} is not installed on the controller (apt-get install it)"
        ) from exc
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
        # would not verify, so each extra source's keyring is copied into this (readable) root.
        keyrings = root / "etc/keyrings"
        keyrings.mkdir(parents=True, exist_ok=True)
        extra = []
        for i, e in enumerate(source.extra):
            copy = keyrings / f"extra-{i}{''.join(e.keyring.suffixes[-1:]) or '.gpg'}"
            shutil.copyfile(e.keyring, copy)
            copy.chmod(0o644)
            extra.append(dataclasses.replace(e, keyring=copy))
        listed = dataclasses.replace(source, extra=tuple(extra))
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

    def download_closure(self, packages: Sequence[str], dest: Path) -> list[Path]:
        """Download `packages` and every dependency an empty system would need into `dest`."""
        if not packages:
            return []
        archives = self.root / "cache/archives"
        _run(
            ["apt-get", *self._opts(), "-qq", "-y", "--download-only", "install", *packages],
            f"resolving and downloading {', '.join(packages)}",
        )
        dest.mkdir(parents=True, exist_ok=True)
        # The cache keeps older downloads too; take only what this resolution asked for.
        wanted = self._resolved_names(packages)
        debs = []
        for deb in sorted(archives.glob("*.deb")):
            if deb.name.split("_", 1)[0] in wanted:
                target = dest / deb.name
                shutil.copy2(deb, target)
                debs.append(target)
        missing = wanted - {d.name.split("_", 1)[0] for d in debs}
        if missing:
            raise BundleError(
                f"apt resolved but did not download: {', '.join(sorted(missing))}; rerun the build"
            )
        return debs

    def _resolved_names(self, packages: Sequence[str]) -> set[str]:
        out = _run(
            ["apt-get", *self._opts(), "-s", "-y", "install", *packages],
            "simulating the install closure",
        )
        return {line.split()[1] for line in out.splitlines() if line.startswith("Inst ")}


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
