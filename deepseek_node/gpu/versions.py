"""Package versions: upstream versions from Debian/RPM versions, repository listings, and picking a pin.

Drivers are pinned by their upstream version ("535.261.03"); packages carry distribution versions
("535.261.03-1", "1:535.261.03-0+deb12u1", "535.261.03-1.el9"). These helpers map one to the other.
"""

from __future__ import annotations

import re
from collections.abc import Iterable


def _key(version: str) -> list[tuple[int, object]]:
    parts: list[tuple[int, object]] = []
    for piece in re.findall(r"\d+|[A-Za-z]+", version):
        parts.append((1, int(piece)) if piece.isdigit() else (0, piece))
    return parts


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 comparing dotted versions numerically ("535.104.05" > "535.86.09"); missing parts count as 0."""
    ka, kb = _key(a), _key(b)
    width = max(len(ka), len(kb))
    ka += [(1, 0)] * (width - len(ka))
    kb += [(1, 0)] * (width - len(kb))
    return (ka > kb) - (ka < kb)


def upstream_version(version: str) -> str:
    """The upstream part of a distribution version: no epoch, no Debian/RPM revision.

    "1:535.261.03-0+deb12u1" -> "535.261.03"; "535.261.03-1.el9" -> "535.261.03"; "1.17.8-1" -> "1.17.8".
    """
    v = str(version).strip().split(":", 1)[-1]
    return v.split("-", 1)[0]


def parse_repo_versions_by_package(stdout: str, family: str = "Debian") -> dict[str, list[str]]:
    """{package: versions newest first} from `apt-cache madison PKG...` (Debian family: "pkg | version | source")
    or `dnf -q list --showduplicates --available PKG...` (RedHat family: "name.arch version repo")."""
    found: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        line = line.strip()
        if not line or line.startswith(("Available", "Installed", "Last metadata")):
            continue
        if family == "RedHat":
            cols = line.split()
            if len(cols) < 2 or "." not in cols[0]:
                continue
            name, version = cols[0].rsplit(".", 1)[0], cols[1]
        else:
            cols = [c.strip() for c in line.split("|")]
            if len(cols) < 2 or not cols[0] or not cols[1]:
                continue
            name, version = cols[0], cols[1]
        versions = found.setdefault(name, [])
        if version not in versions:
            versions.append(version)
    return {
        name: sorted(vs, key=lambda v: _key(v.split(":", 1)[-1]), reverse=True) for name, vs in found.items()
    }


def parse_repo_versions(stdout: str, family: str = "Debian") -> list[str]:
    """Every version offered in such a listing (any package), newest first."""
    merged: list[str] = []
    for versions in parse_repo_versions_by_package(stdout, family).values():
        merged += [v for v in versions if v not in merged]
    return sorted(merged, key=lambda v: _key(v.split(":", 1)[-1]), reverse=True)


def pick_version(available: Iterable[str], pin: str = "") -> str | None:
    """The repository version to install: the newest one whose upstream version equals `pin`
    (or starts with it when the pin is a branch like "535"), or the newest of all without a pin."""
    versions = list(available)
    if not versions:
        return None
    if not pin:
        return versions[0]
    pin = str(pin).strip()
    for v in versions:
        up = upstream_version(v)
        if up == pin or v == pin or up.startswith(pin + "."):
            return v
    return None
