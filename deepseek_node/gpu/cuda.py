"""Which NVIDIA driver can run which CUDA toolkit: NVIDIA's published minimum driver versions.

Source: the CUDA Toolkit release notes, "CUDA Toolkit and Corresponding Driver Versions" (the toolkit driver
version each release was built and tested with, Linux x86_64) and "CUDA Toolkit and Minimum Required Driver
Version for CUDA Minor Version Compatibility". A driver at or above the release's own version runs everything
the toolkit builds; with minor version compatibility a driver at or above the major's floor runs most of it
(not PTX compiled by the newer toolkit, and no new driver APIs).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum

from deepseek_node.gpu.versions import compare_versions


class CompatMode(StrEnum):
    """How strictly a driver must match the toolkit."""

    STRICT = "strict"  # the release's own toolkit driver version
    MINOR_VERSION = "minor_version"  # the major's minor-version-compatibility floor


# (major, minor, update) -> minimum Linux x86_64 driver for that toolkit release (update 0 = GA).
TOOLKIT_DRIVER: dict[tuple[int, int, int], str] = {
    (11, 0, 1): "450.36.06",  # 11.0.1 RC
    (11, 0, 2): "450.51.05",  # 11.0.2 GA
    (11, 0, 3): "450.51.06",
    (11, 1, 0): "455.23",
    (11, 1, 1): "455.32",
    (11, 2, 0): "460.27.03",
    (11, 2, 1): "460.32.03",
    (11, 2, 2): "460.32.03",
    (11, 3, 0): "465.19.01",
    (11, 3, 1): "465.19.01",
    (11, 4, 0): "470.42.01",
    (11, 4, 1): "470.57.02",
    (11, 4, 2): "470.57.02",
    (11, 4, 3): "470.82.01",
    (11, 4, 4): "470.82.01",
    (11, 5, 0): "495.29.05",
    (11, 5, 1): "495.29.05",
    (11, 5, 2): "495.29.05",
    (11, 6, 0): "510.39.01",
    (11, 6, 1): "510.47.03",
    (11, 6, 2): "510.47.03",
    (11, 7, 0): "515.43.04",
    (11, 7, 1): "515.48.07",
    (11, 8, 0): "520.61.05",
    (12, 0, 0): "525.60.13",
    (12, 0, 1): "525.85.12",
    (12, 1, 0): "530.30.02",
    (12, 1, 1): "530.30.02",
    (12, 2, 0): "535.54.03",
    (12, 2, 1): "535.86.09",
    (12, 2, 2): "535.104.05",
    (12, 3, 0): "545.23.06",
    (12, 3, 1): "545.23.08",
    (12, 3, 2): "545.23.08",
    (12, 4, 0): "550.54.14",
    (12, 4, 1): "550.54.15",
    (12, 5, 0): "555.42.02",
    (12, 5, 1): "555.42.06",
    (12, 6, 0): "560.28.03",
    (12, 6, 1): "560.35.03",
    (12, 6, 2): "560.35.03",
    (12, 6, 3): "560.35.05",
    (12, 8, 0): "570.26",
    (12, 8, 1): "570.124.06",
    (12, 9, 0): "575.51.03",
    (12, 9, 1): "575.57.08",
    (13, 0, 0): "580.65.06",
}

# Minor version compatibility: the lowest driver any toolkit of the major can run on.
MINOR_VERSION_FLOOR: dict[int, str] = {11: "450.80.02", 12: "525.60.13", 13: "580.65.06"}


class CudaVersionError(ValueError):
    """A CUDA version this module cannot read or does not know."""


@dataclass(frozen=True)
class CudaRelease:
    major: int
    minor: int
    update: int = 0

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.update}"

    @property
    def short(self) -> str:
        return f"{self.major}.{self.minor}"


_RELEASE = re.compile(r"^(\d+)\.(\d+)(?:\.(\d+))?$")


def parse_cuda_release(text: str) -> CudaRelease:
    """A toolkit release from what operators and packages write.

    "12.4", "12.4.1", NVIDIA repo package versions ("12.4.1-1"), and Debian's nvidia-cuda-toolkit versions
    ("11.8.89~11.8.0-5~deb12u1", where the part after the first "~" is the toolkit release).
    """
    raw = str(text).strip()
    if not raw:
        raise CudaVersionError("empty CUDA version")
    candidate = raw.split(":", 1)[-1]  # drop a Debian epoch
    if "~" in candidate:
        candidate = candidate.split("~", 1)[1]
    candidate = candidate.split("-", 1)[0].split("+", 1)[0]
    m = _RELEASE.match(candidate)
    if not m:
        raise CudaVersionError(f"cannot read a CUDA release from {raw!r}: write it like 12.4 or 12.4.1")
    return CudaRelease(int(m.group(1)), int(m.group(2)), int(m.group(3) or 0))


def minimum_driver(release: CudaRelease | str, mode: CompatMode | str = CompatMode.STRICT) -> str:
    """The lowest driver that runs this toolkit release, per NVIDIA's table."""
    rel = parse_cuda_release(release) if isinstance(release, str) else release
    mode = CompatMode(mode)
    if mode is CompatMode.MINOR_VERSION:
        if rel.major not in MINOR_VERSION_FLOOR:
            raise CudaVersionError(f"CUDA {rel.major}.x is not in the driver table (known: 11.x, 12.x, 13.x)")
        return MINOR_VERSION_FLOOR[rel.major]
    if (rel.major, rel.minor, rel.update) in TOOLKIT_DRIVER:
        return TOOLKIT_DRIVER[(rel.major, rel.minor, rel.update)]
    # An update newer than the table knows needs at least what the newest known update of that minor needs.
    same_minor = sorted(k for k in TOOLKIT_DRIVER if k[:2] == (rel.major, rel.minor) and k[2] <= rel.update)
    if same_minor:
        return TOOLKIT_DRIVER[same_minor[-1]]
    raise CudaVersionError(
        f"CUDA {rel.short} is not in the driver table (known: 11.0 to 13.0): pin a listed release or "
        "set cuda_toolkit_driver_compat: minor_version"
    )


@dataclass(frozen=True)
class CompatResult:
    ok: bool
    cuda: str
    driver: str
    minimum: str
    mode: str
    message: str

    def as_dict(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "cuda": self.cuda,
            "driver": self.driver,
            "minimum": self.minimum,
            "mode": self.mode,
            "message": self.message,
        }


def check_driver(cuda: str, driver: str, mode: CompatMode | str = CompatMode.STRICT) -> CompatResult:
    """Can `driver` (e.g. "535.261.03") run CUDA `cuda` (e.g. "12.4.1")? The message says how to fix a refusal."""
    mode = CompatMode(mode)
    rel = parse_cuda_release(cuda)
    if not str(driver).strip():
        raise CudaVersionError("empty driver version")
    need = minimum_driver(rel, mode)
    ok = compare_versions(str(driver), need) >= 0
    if ok:
        msg = f"driver {driver} runs CUDA {rel} (needs >= {need}, {mode.value})"
    else:
        fix = (
            "install a driver branch that meets it, or pin an older CUDA toolkit (cuda_toolkit_version)"
            if mode is CompatMode.MINOR_VERSION
            else "install a driver that meets it, pin an older CUDA toolkit (cuda_toolkit_version), or accept "
            "NVIDIA's minor version compatibility limits with cuda_toolkit_driver_compat: minor_version"
        )
        msg = f"driver {driver} cannot run CUDA {rel}: NVIDIA requires driver >= {need} ({mode.value}); {fix}"
    return CompatResult(ok, str(rel), str(driver), need, mode.value, msg)


def pick_cuda_package(available: list[str], pin: str = "") -> str | None:
    """The newest package version whose CUDA release matches `pin` ("12.4" matches 12.4.x, "12.4.1" only that);
    the newest readable one without a pin. Versions that name no CUDA release are ignored."""
    wanted = None
    if str(pin).strip():
        wanted = parse_cuda_release(pin)
        exact = str(pin).strip().count(".") >= 2
    for version in available:
        try:
            rel = parse_cuda_release(version)
        except CudaVersionError:
            continue
        if wanted is None:
            return version
        if (rel.major, rel.minor) == (wanted.major, wanted.minor) and (
            not exact or rel.update == wanted.update
        ):
            return version
    return None
