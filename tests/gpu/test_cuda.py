"""CUDA toolkit vs driver: NVIDIA's minimum driver table, and refusing a pair the driver cannot run."""

from __future__ import annotations

import pytest

from deepseek_node.gpu import CompatMode, CudaVersionError, check_driver, minimum_driver, parse_cuda_release
from deepseek_node.gpu.cuda import TOOLKIT_DRIVER, pick_cuda_package


@pytest.mark.parametrize(
    ("text", "release"),
    [
        ("12.4", "12.4.0"),
        ("12.4.1", "12.4.1"),
        ("12.4.1-1", "12.4.1"),  # NVIDIA repo package version
        ("11.8.89~11.8.0-5~deb12u1", "11.8.0"),  # Debian's nvidia-cuda-toolkit
        ("11.8.89~11.8.0-5~deb12u1+standin", "11.8.0"),
        ("1:12.2.2-1", "12.2.2"),
    ],
)
def test_parse_cuda_release(text: str, release: str) -> None:
    assert str(parse_cuda_release(text)) == release


@pytest.mark.parametrize("bad", ["", "twelve", "12", "12.x"])
def test_parse_cuda_release_rejects_garbage(bad: str) -> None:
    with pytest.raises(CudaVersionError):
        parse_cuda_release(bad)


def test_table_matches_nvidia_release_notes_for_well_known_releases() -> None:
    # Spot checks against NVIDIA's "CUDA Toolkit and Corresponding Driver Versions" (Linux x86_64).
    assert minimum_driver("11.8") == "520.61.05"
    assert minimum_driver("12.0") == "525.60.13"
    assert minimum_driver("12.2.2") == "535.104.05"
    assert minimum_driver("12.4.1") == "550.54.15"
    assert minimum_driver("12.6.3") == "560.35.05"
    assert minimum_driver("12.8.1") == "570.124.06"
    assert minimum_driver("12.4", CompatMode.MINOR_VERSION) == "525.60.13"
    assert minimum_driver("11.2", "minor_version") == "450.80.02"
    # Minimums never go down within a major.
    for major in (11, 12):
        keys = sorted(k for k in TOOLKIT_DRIVER if k[0] == major)
        vals = [TOOLKIT_DRIVER[k] for k in keys]
        assert vals == sorted(vals, key=lambda v: [int(x) for x in v.split(".")])


def test_unknown_update_needs_at_least_the_newest_known_update() -> None:
    assert minimum_driver("12.6.9") == "560.35.05"
    with pytest.raises(CudaVersionError, match="not in the driver table"):
        minimum_driver("12.7")


def test_debian_pair_is_accepted() -> None:
    """Debian 12: nvidia-cuda-toolkit 11.8 on the driver from non-free (535.261.03 or the security update)."""
    for driver in ("535.261.03", "535.309.01"):
        res = check_driver("11.8.89~11.8.0-5~deb12u1", driver)
        assert res.ok, res.message


def test_driver_cuda_mismatch_is_refused_with_the_fix() -> None:
    res = check_driver("12.4.1", "535.261.03")
    assert not res.ok
    assert res.minimum == "550.54.15"
    assert "cannot run CUDA 12.4.1" in res.message and ">= 550.54.15" in res.message
    assert "cuda_toolkit_version" in res.message and "minor_version" in res.message


def test_minor_version_compatibility_is_opt_in() -> None:
    assert not check_driver("12.4", "535.261.03").ok
    assert check_driver("12.4", "535.261.03", "minor_version").ok
    # Across majors nothing helps: CUDA 13 needs the 580 branch.
    assert not check_driver("13.0", "575.57.08", "minor_version").ok


def test_versions_compare_numerically_not_as_strings() -> None:
    assert check_driver("12.2.2", "535.104.05").ok
    assert not check_driver("12.2.2", "535.86.10").ok  # "86" < "104" numerically


def test_pick_cuda_package_matches_the_pinned_release() -> None:
    offered = ["12.4.1-1", "12.4.0-1", "12.2.2-1"]
    assert pick_cuda_package(offered, "12.4") == "12.4.1-1"
    assert pick_cuda_package(offered, "12.4.0") == "12.4.0-1"
    assert pick_cuda_package(offered, "") == "12.4.1-1"
    assert pick_cuda_package(offered, "11.8") is None
    assert pick_cuda_package(["11.8.89~11.8.0-5~deb12u1"], "11.8") == "11.8.89~11.8.0-5~deb12u1"
