"""Which hosts a bundle is for: distribution, release, architecture and the Python its wheels need.

Recorded in the manifest at build time; preflight compares a host's facts with it before any change, so a
Debian 12 bundle never meets a Debian 13 or Ubuntu host (other packages, another python3)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# apt suite -> (distribution as Ansible's facts name it, release, the release's python3)
SUITES: dict[str, tuple[str, str, str]] = {
    "bookworm": ("Debian", "12", "3.11"),
    "trixie": ("Debian", "13", "3.13"),
    "jammy": ("Ubuntu", "22.04", "3.10"),
    "noble": ("Ubuntu", "24.04", "3.12"),
}
DEFAULT_SUITE = "bookworm"
# Ansible's `architecture` fact (the kernel's machine name) -> the Debian architecture.
DEB_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "ppc64le": "ppc64el", "s390x": "s390x"}


def bundle_target(suite: str, arch: str) -> dict[str, str]:
    """The manifest's `target` section for a bundle built for `suite` on `arch` (a Debian architecture)."""
    if suite not in SUITES:
        raise ValueError(f"unknown release {suite!r}: choose from {', '.join(SUITES)}")
    distribution, release, python = SUITES[suite]
    return {"distribution": distribution, "release": release, "suite": suite, "arch": arch, "python": python}


def _describe(distribution: str, release: str, arch: str, python: str) -> str:
    return f"{distribution} {release} ({arch}, Python {python})"


def target_mismatch(manifest: Mapping[str, Any], facts: Mapping[str, Any]) -> str:
    """Why this bundle does not fit the host whose Ansible facts are `facts`; '' when it does.

    A bundle from before targets were recorded is read from its apt suite and architecture."""
    target = dict(manifest.get("target") or {})
    if not target:
        apt = manifest.get("apt") or {}
        if apt.get("suite") not in SUITES:
            return ""
        target = bundle_target(apt["suite"], apt.get("arch", "amd64"))
    distribution = str(facts.get("distribution", "?"))
    version = str(facts.get("distribution_version", "?"))
    major = str(facts.get("distribution_major_version", "?"))
    arch = DEB_ARCH.get(str(facts.get("architecture", "?")), str(facts.get("architecture", "?")))
    py = facts.get("python", {}).get("version", {}) if isinstance(facts.get("python"), Mapping) else {}
    python = f"{py.get('major', '?')}.{py.get('minor', '?')}"
    release_ok = target["release"] in (version, major)
    wrong = [
        what
        for what, ok in (
            ("distribution", distribution == target["distribution"]),
            ("release", release_ok),
            ("architecture", arch == target["arch"]),
            ("Python", python == target["python"]),
        )
        if not ok
    ]
    if not wrong:
        return ""
    host = _describe(distribution, version, arch, python)
    bundle = _describe(target["distribution"], target["release"], target["arch"], target["python"])
    return (
        f"the bundle is for {bundle} and this host runs {host} ({', '.join(wrong)} differ): its packages and "
        f"wheels would not install here. Build a bundle for this host's release "
        f"(provision bundle build --suite {_suite_for(distribution, version, major)}) or leave it out of "
        "inference_nodes"
    )


def _suite_for(distribution: str, version: str, major: str) -> str:
    for suite, (dist, release, _py) in SUITES.items():
        if dist == distribution and release in (version, major):
            return suite
    return "SUITE"
