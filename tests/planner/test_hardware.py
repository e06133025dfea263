"""Hardware profiles: the catalog's facts, per-host overrides and the errors for bad ones."""

from __future__ import annotations

import pytest

from deepseek_node.planner import HARDWARE_PROFILES, Interconnect, PlannerInputError, resolve_profile
from deepseek_node.planner.hardware import parse_compute_capability, validate_profile


def _problem(exc: pytest.ExceptionInfo[PlannerInputError]) -> str:
    return str(exc.value)


@pytest.mark.parametrize(
    "gpu, counts",
    [
        ("t4-16g", (1, 2, 4, 8)),
        ("l4-24g", (1, 2, 4, 8)),
        ("a10-24g", (1, 2, 4)),
        ("l40s-48g", (1, 2, 4, 8)),
        ("a100-pcie-40g", (1, 2, 4, 8)),
        ("a100-pcie-80g", (1, 2, 4, 8)),
        ("a100-sxm-40g", (4, 8)),
        ("a100-sxm-80g", (4, 8)),
        ("h100-pcie-80g", (1, 2, 4, 8)),
        ("h100-sxm-80g", (4, 8)),
        ("h200-sxm-141g", (4, 8)),
        ("h200-nvl-141g", (1, 2, 4, 8)),
    ],
)
def test_catalog_has_every_server_size(gpu: str, counts: tuple[int, ...]) -> None:
    for n in counts:
        profile = HARDWARE_PROFILES[f"{gpu}-x{n}"]
        assert profile.gpu_count == n


def test_catalog_has_cpu_only() -> None:
    cpu = HARDWARE_PROFILES["cpu-only"]
    assert cpu.is_cpu_only and cpu.interconnect is Interconnect.NONE and cpu.host_memory_gib > 0


@pytest.mark.parametrize(
    "name, gib, cc, fp8, bf16",
    [
        ("t4-16g-x1", 15.0, "7.5", False, False),
        ("l4-24g-x1", 22.49, "8.9", True, True),
        ("a10-24g-x1", 22.49, "8.6", False, True),
        ("l40s-48g-x1", 44.99, "8.9", True, True),
        ("a100-pcie-40g-x1", 40.0, "8.0", False, True),
        ("a100-sxm-80g-x8", 80.0, "8.0", False, True),
        ("h100-sxm-80g-x8", 79.65, "9.0", True, True),
        ("h200-sxm-141g-x8", 140.4, "9.0", True, True),
    ],
)
def test_gpu_facts_are_what_the_driver_reports(name: str, gib: float, cc: str, fp8: bool, bf16: bool) -> None:
    p = HARDWARE_PROFILES[name]
    assert (p.gpu_memory_gib, p.compute_capability, p.fp8, p.bf16) == (gib, cc, fp8, bf16)


@pytest.mark.parametrize("profile", list(HARDWARE_PROFILES.values()), ids=lambda p: p.name)
def test_catalog_profiles_are_consistent(profile) -> None:
    assert validate_profile(profile) == []
    if profile.interconnect is Interconnect.NVSWITCH:
        assert profile.nvlink_domain == profile.gpu_count
    if profile.interconnect is Interconnect.PCIE:
        assert profile.nvlink_domain == 1


def test_pcie_only_cards_never_claim_nvlink() -> None:
    for name in ("l40s-48g-x8", "l4-24g-x8", "t4-16g-x8", "h100-pcie-80g-x8", "a10-24g-x4"):
        assert HARDWARE_PROFILES[name].nvlink_domain == 1


def test_h200_nvl_eight_cards_are_two_islands() -> None:
    p = HARDWARE_PROFILES["h200-nvl-141g-x8"]
    assert (p.nvlink_domain, p.islands) == (4, 2)


def test_unknown_profile_suggests_the_close_names() -> None:
    with pytest.raises(PlannerInputError) as exc:
        resolve_profile("h100-80g-x8")
    text = _problem(exc)
    assert "deepseek_hardware_profile" in text and "'h100-sxm-80g-x8'" in text and "fix:" in text


@pytest.mark.parametrize("name", [None, ""])
def test_missing_profile_says_where_to_set_it(name: object) -> None:
    with pytest.raises(
        PlannerInputError, match="deepseek_hardware_profile: is not set; fix: set it in group_vars"
    ):
        resolve_profile(name)


def test_gpu_count_override_keeps_nvswitch_domain_whole() -> None:
    p = resolve_profile("h100-sxm-80g-x8", {"gpu_count": 4})
    assert (p.gpu_count, p.nvlink_domain, p.interconnect) == (4, 4, Interconnect.NVSWITCH)
    assert p.overridden == ("gpu_count=4",)
    assert p.label == "h100-sxm-80g-x8 (gpu_count=4)"


def test_gpu_count_override_shrinks_bridge_domain() -> None:
    assert resolve_profile("h200-nvl-141g-x8", {"gpu_count": 2}).nvlink_domain == 2
    assert resolve_profile("l40s-48g-x4", {"gpu_count": 2}).nvlink_domain == 1


def test_bridged_pcie_cards_by_override() -> None:
    p = resolve_profile("a100-pcie-80g-x4", {"interconnect": "nvlink", "nvlink_domain": 2})
    assert (p.interconnect, p.nvlink_domain, p.islands) == (Interconnect.NVLINK, 2, 2)


def test_cpu_only_host_memory_override() -> None:
    assert resolve_profile("cpu-only", {"host_memory_gib": 64}).host_memory_gib == 64.0


@pytest.mark.parametrize(
    "overrides, key, words",
    [
        ({"gpu_count": -1}, "gpu_count", "must not be negative"),
        ({"gpu_count": True}, "gpu_count", "whole number"),
        ({"gpu_count": "4"}, "gpu_count", "whole number"),
        ({"gpu_memory_gib": 0}, "gpu_memory_gib", "greater than 0"),
        ({"gpu_memory_gib": -80}, "gpu_memory_gib", "greater than 0"),
        ({"fp8": "yes"}, "fp8", "true or false"),
        ({"interconnect": "infiniband"}, "interconnect", "pcie, nvlink, nvswitch"),
        ({"compute_capability": "nine"}, "compute_capability", "compute capability"),
        ({"gpus": 4}, "gpus", "is not a hardware field"),
    ],
)
def test_bad_override_values_name_key_and_fix(overrides: dict, key: str, words: str) -> None:
    with pytest.raises(PlannerInputError) as exc:
        resolve_profile("h100-sxm-80g-x8", overrides)
    text = _problem(exc)
    assert f"deepseek_hardware_overrides.{key}" in text and words in text and "fix:" in text


def test_unknown_override_field_suggests_the_right_one() -> None:
    with pytest.raises(PlannerInputError, match="did you mean 'gpu_count'"):
        resolve_profile("h100-sxm-80g-x8", {"gpu_cnt": 4})


@pytest.mark.parametrize(
    "base, overrides, key, words",
    [
        ("a100-sxm-80g-x8", {"fp8": True}, "fp8", "8.9 or newer"),
        ("t4-16g-x1", {"bf16": True}, "bf16", "8.0 or newer"),
        ("h100-sxm-80g-x8", {"nvlink_domain": 3}, "nvlink_domain", "equal NVLink domains"),
        ("h100-sxm-80g-x8", {"nvlink_domain": 16}, "nvlink_domain", "equal NVLink domains"),
        ("l40s-48g-x4", {"nvlink_domain": 2}, "nvlink_domain", "interconnect is pcie"),
        ("l40s-48g-x4", {"interconnect": "nvlink"}, "interconnect", "single-GPU domains"),
        ("l40s-48g-x4", {"interconnect": "none"}, "interconnect", "need an interconnect"),
        ("cpu-only", {"gpu_count": 4}, "gpu_count", "cpu-only has no GPUs"),
        ("cpu-only", {"interconnect": "pcie"}, "interconnect", "no GPU interconnect"),
    ],
)
def test_contradictions_are_errors(base: str, overrides: dict, key: str, words: str) -> None:
    with pytest.raises(PlannerInputError) as exc:
        resolve_profile(base, overrides)
    text = _problem(exc)
    assert f"deepseek_hardware_overrides.{key}" in text and words in text and "fix:" in text


def test_every_bad_override_is_reported_at_once() -> None:
    with pytest.raises(PlannerInputError) as exc:
        resolve_profile("h100-sxm-80g-x8", {"gpu_count": -2, "gpu_memory_gib": "lots", "colour": "green"})
    assert len(exc.value.problems) == 3


def test_overrides_must_be_a_mapping() -> None:
    with pytest.raises(PlannerInputError, match="must be a mapping"):
        resolve_profile("h100-sxm-80g-x8", ["gpu_count", 4])


@pytest.mark.parametrize("value, expected", [("8.9", (8, 9)), (8.9, (8, 9)), ("9", (9, 0)), (7, (7, 0))])
def test_compute_capability_forms(value: object, expected: tuple[int, int]) -> None:
    assert parse_compute_capability(value) == expected
