"""Hardware profiles: the built-in catalog, per-host overrides and their validation.

An inventory names a profile (`deepseek_hardware_profile: h100-sxm-80g-x8`) and may override fields of it
per host (`deepseek_hardware_overrides: {gpu_count: 4}`). GPU memory is what the driver reports
(`nvidia-smi`'s MiB / 1024), not the marketing figure: an "80 GB" H100 has 79.6 GiB to plan with, and
planning against the marketing number is how a model that "fits" ends in an out-of-memory error.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from deepseek_node.planner.enums import Interconnect
from deepseek_node.planner.problems import PlannerInputError, Problem

PROFILE_KEY = "deepseek_hardware_profile"
OVERRIDES_KEY = "deepseek_hardware_overrides"

# Bandwidth between servers, for serving groups (pipeline stages on several servers): HGX servers ship with
# 100 Gb/s or faster NICs, PCIe servers commonly with 25 Gb/s. `deepseek_network_gbps` sets a site's own.
HGX_NETWORK_GBPS = 100.0
DEFAULT_NETWORK_GBPS = 25.0

# Native fp8 tensor cores arrived with Ada (8.9) and Hopper (9.0); bf16 with Ampere (8.0).
FP8_MIN_CC = (8, 9)
BF16_MIN_CC = (8, 0)


@dataclass(frozen=True)
class HardwareProfile:
    name: str
    gpu_name: str
    gpu_count: int
    gpu_memory_gib: float  # per GPU, as the driver reports it
    compute_capability: str  # "major.minor"; "" on CPU-only hosts
    fp8: bool  # native fp8 tensor cores
    bf16: bool
    interconnect: Interconnect
    nvlink_domain: int  # GPUs that share one NVLink/NVSwitch domain (1: PCIe only)
    host_memory_gib: float  # planned against only on CPU-only hosts
    network_gbps: float = DEFAULT_NETWORK_GBPS  # between servers; planned against only for serving groups
    description: str = ""
    overridden: tuple[str, ...] = ()  # "field=value" for each per-host override applied

    @property
    def label(self) -> str:
        """The profile name, with the per-host overrides an operator should see next to it."""
        return f"{self.name} ({', '.join(self.overridden)})" if self.overridden else self.name

    @property
    def is_cpu_only(self) -> bool:
        return self.gpu_count == 0

    @property
    def cc(self) -> tuple[int, int]:
        return parse_compute_capability(self.compute_capability) if self.compute_capability else (0, 0)

    @property
    def device_memory_gib(self) -> float:
        """Memory of one device the planner fills: a GPU, or the host RAM on CPU-only hosts."""
        return self.host_memory_gib if self.is_cpu_only else self.gpu_memory_gib

    @property
    def device_count(self) -> int:
        return max(1, self.gpu_count)

    @property
    def islands(self) -> int:
        """Groups of GPUs joined by NVLink; pipeline stages cross between them."""
        return max(1, self.gpu_count // max(1, self.nvlink_domain))

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["interconnect"] = self.interconnect.value
        data["overridden"] = list(self.overridden)
        return data


# Overridable fields and their types. `name` and `description` are identity, not hardware.
OVERRIDABLE: dict[str, type] = {
    "gpu_name": str,
    "gpu_count": int,
    "gpu_memory_gib": float,
    "compute_capability": str,
    "fp8": bool,
    "bf16": bool,
    "interconnect": Interconnect,
    "nvlink_domain": int,
    "host_memory_gib": float,
}


def parse_compute_capability(value: object) -> tuple[int, int]:
    """'8.9', 8.9 or '9' -> (8, 9) / (9, 0); ValueError otherwise."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"{value!r} is not a compute capability")
    text = str(value).strip()
    major, _, minor = text.partition(".")
    if not major.isdigit() or (minor and not minor.isdigit()):
        raise ValueError(f"{value!r} is not a compute capability like '8.9'")
    return int(major), int(minor or 0)


@dataclass(frozen=True)
class _Gpu:
    """One GPU model; `_family` turns it into the server sizes that exist."""

    key: str
    gpu_name: str
    mib: int  # nvidia-smi's memory.total
    cc: str
    fp8: bool
    bf16: bool


T4 = _Gpu("t4-16g", "NVIDIA T4 16GB", 15360, "7.5", fp8=False, bf16=False)
L4 = _Gpu("l4-24g", "NVIDIA L4 24GB", 23034, "8.9", fp8=True, bf16=True)
A10 = _Gpu("a10-24g", "NVIDIA A10 24GB", 23028, "8.6", fp8=False, bf16=True)
L40S = _Gpu("l40s-48g", "NVIDIA L40S 48GB", 46068, "8.9", fp8=True, bf16=True)
A100_PCIE_40 = _Gpu("a100-pcie-40g", "NVIDIA A100 PCIe 40GB", 40960, "8.0", fp8=False, bf16=True)
A100_PCIE_80 = _Gpu("a100-pcie-80g", "NVIDIA A100 PCIe 80GB", 81920, "8.0", fp8=False, bf16=True)
A100_SXM_40 = _Gpu("a100-sxm-40g", "NVIDIA A100 SXM4 40GB", 40960, "8.0", fp8=False, bf16=True)
A100_SXM_80 = _Gpu("a100-sxm-80g", "NVIDIA A100 SXM4 80GB", 81920, "8.0", fp8=False, bf16=True)
H100_PCIE = _Gpu("h100-pcie-80g", "NVIDIA H100 PCIe 80GB", 81559, "9.0", fp8=True, bf16=True)
H100_SXM = _Gpu("h100-sxm-80g", "NVIDIA H100 SXM5 80GB", 81559, "9.0", fp8=True, bf16=True)
H200_SXM = _Gpu("h200-sxm-141g", "NVIDIA H200 SXM 141GB", 143771, "9.0", fp8=True, bf16=True)
H200_NVL = _Gpu("h200-nvl-141g", "NVIDIA H200 NVL 141GB", 143771, "9.0", fp8=True, bf16=True)

# Typical host RAM for a server of that many GPUs; informational (GPU plans do not use it).
_HOST_RAM_GIB = {1: 128, 2: 256, 4: 512, 8: 1024}


def _family(
    gpu: _Gpu,
    counts: Mapping[int, tuple[Interconnect, int]],
    note: str,
    network_gbps: float = DEFAULT_NETWORK_GBPS,
) -> list[HardwareProfile]:
    return [
        HardwareProfile(
            name=f"{gpu.key}-x{count}",
            gpu_name=gpu.gpu_name,
            gpu_count=count,
            gpu_memory_gib=round(gpu.mib / 1024, 2),
            compute_capability=gpu.cc,
            fp8=gpu.fp8,
            bf16=gpu.bf16,
            interconnect=link,
            nvlink_domain=domain,
            host_memory_gib=_HOST_RAM_GIB[count],
            network_gbps=network_gbps,
            description=f"{count}x {gpu.gpu_name}, {note}",
        )
        for count, (link, domain) in counts.items()
    ]


_PCIE = Interconnect.PCIE
_NVL = Interconnect.NVLINK
_NVS = Interconnect.NVSWITCH
_PCIE_1248 = {n: (_PCIE, 1) for n in (1, 2, 4, 8)}
# HGX boards: the 4-GPU board is an NVLink mesh, the 8-GPU board goes through NVSwitch.
_HGX = {4: (_NVL, 4), 8: (_NVS, 8)}

CPU_ONLY = HardwareProfile(
    name="cpu-only",
    gpu_name="",
    gpu_count=0,
    gpu_memory_gib=0.0,
    compute_capability="",
    fp8=False,
    bf16=False,
    interconnect=Interconnect.NONE,
    nvlink_domain=0,
    # Deliberately modest: override `host_memory_gib` per host with the real RAM.
    host_memory_gib=16.0,
    description="no GPU: the model runs on the CPU in host RAM (set host_memory_gib per host)",
)

CATALOG: dict[str, HardwareProfile] = {
    p.name: p
    for p in [
        *_family(T4, _PCIE_1248, "PCIe only"),
        *_family(L4, _PCIE_1248, "PCIe only"),
        *_family(A10, {n: (_PCIE, 1) for n in (1, 2, 4)}, "PCIe only"),
        *_family(L40S, _PCIE_1248, "PCIe only (L40S has no NVLink)"),
        *_family(A100_PCIE_40, _PCIE_1248, "PCIe (override nvlink_domain: 2 where bridges are fitted)"),
        *_family(A100_PCIE_80, _PCIE_1248, "PCIe (override nvlink_domain: 2 where bridges are fitted)"),
        *_family(A100_SXM_40, _HGX, "HGX board", HGX_NETWORK_GBPS),
        *_family(A100_SXM_80, _HGX, "HGX board", HGX_NETWORK_GBPS),
        *_family(H100_PCIE, _PCIE_1248, "PCIe (override nvlink_domain: 2 where bridges are fitted)"),
        *_family(H100_SXM, _HGX, "HGX board", HGX_NETWORK_GBPS),
        *_family(H200_SXM, _HGX, "HGX board", HGX_NETWORK_GBPS),
        # H200 NVL cards are bridged in pairs or fours; eight cards form two 4-GPU islands.
        *_family(H200_NVL, {1: (_PCIE, 1), 2: (_NVL, 2), 4: (_NVL, 4), 8: (_NVL, 4)}, "NVLink bridges"),
        CPU_ONLY,
    ]
}


def profile_names() -> list[str]:
    return list(CATALOG)


def _coerce(field: str, value: object) -> object:
    """Convert an inventory value to the field's type, or raise ValueError saying what was expected."""
    kind = OVERRIDABLE[field]
    if kind is bool:
        if isinstance(value, bool):
            return value
        raise ValueError("must be true or false")
    if kind is int:
        # YAML's `yes` is a bool, and bool is an int in Python: refuse it rather than plan for 1 GPU.
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("must be a whole number")
        if value < 0:
            raise ValueError("must not be negative")
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            raise ValueError("must be a number of GiB")
        if value <= 0:
            raise ValueError("must be greater than 0")
        return float(value)
    if kind is Interconnect:
        try:
            return Interconnect(str(value))
        except ValueError:
            raise ValueError(f"must be one of {', '.join(i.value for i in Interconnect)}") from None
    if field == "compute_capability":
        major, minor = parse_compute_capability(value)
        return f"{major}.{minor}"
    if not isinstance(value, str):
        raise ValueError("must be a string")
    return value


def _unknown_profile(name: object) -> Problem:
    close = difflib.get_close_matches(str(name), CATALOG, n=3, cutoff=0.5)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    return Problem(
        PROFILE_KEY,
        f"{name!r} is not a known hardware profile",
        f"{hint}use one of the built-in profiles (`provision plan --list-hardware`), e.g. cpu-only or "
        "h100-sxm-80g-x8, and adjust it with deepseek_hardware_overrides",
    )


def resolve_profile(name: object, overrides: object = None) -> HardwareProfile:
    """The catalog profile `name` with `overrides` applied and checked; PlannerInputError otherwise."""
    if name is None or name == "":
        raise PlannerInputError(
            [
                Problem(
                    PROFILE_KEY,
                    "is not set",
                    "set it in group_vars or host_vars to a built-in profile such as cpu-only or "
                    "h100-sxm-80g-x8 (`provision plan --list-hardware` lists them)",
                )
            ]
        )
    if not isinstance(name, str) or name not in CATALOG:
        raise PlannerInputError([_unknown_profile(name)])
    return apply_overrides(CATALOG[name], overrides)


def apply_overrides(base: HardwareProfile, overrides: object) -> HardwareProfile:
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, Mapping):
        raise PlannerInputError(
            [Problem(OVERRIDES_KEY, "must be a mapping of profile fields", "write e.g. {gpu_count: 4}")]
        )
    problems: list[Problem] = []
    changes: dict[str, object] = {}
    for field, value in overrides.items():
        key = f"{OVERRIDES_KEY}.{field}"
        if field not in OVERRIDABLE:
            close = difflib.get_close_matches(str(field), OVERRIDABLE, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            problems.append(
                Problem(key, "is not a hardware field", f"{hint}overridable fields: {', '.join(OVERRIDABLE)}")
            )
            continue
        try:
            changes[field] = _coerce(field, value)
        except ValueError as exc:
            problems.append(Problem(key, f"{value!r} {exc}", f"give a valid {field} for this host"))
    if problems:
        raise PlannerInputError(problems)
    if base.is_cpu_only and changes.get("gpu_count"):
        raise PlannerInputError(
            [
                Problem(
                    f"{OVERRIDES_KEY}.gpu_count",
                    "cpu-only has no GPUs to count",
                    "pick the GPU profile closest to this server (e.g. l40s-48g-x4) and override that",
                )
            ]
        )
    if not base.is_cpu_only and changes.get("gpu_count") == 0:
        raise PlannerInputError(
            [
                Problem(
                    f"{OVERRIDES_KEY}.gpu_count",
                    "0 GPUs turns a GPU profile into something else",
                    "use deepseek_hardware_profile: cpu-only (with host_memory_gib) for a host without GPUs",
                )
            ]
        )
    profile = replace(base, **changes)  # type: ignore[arg-type]
    if "gpu_count" in changes and "nvlink_domain" not in changes:
        profile = replace(profile, nvlink_domain=_derived_domain(base, profile.gpu_count))
    if changes:
        shown = {k: v.value if isinstance(v, Interconnect) else v for k, v in changes.items()}
        profile = replace(profile, overridden=tuple(f"{k}={v}" for k, v in shown.items()))
    problems = validate_profile(profile)
    if problems:
        raise PlannerInputError(problems)
    return profile


def _derived_domain(base: HardwareProfile, gpu_count: int) -> int:
    """Keep the NVLink domain consistent when only the GPU count is overridden."""
    if gpu_count == 0:
        return 0
    if base.interconnect is Interconnect.NVSWITCH:
        return gpu_count  # every GPU on the board reaches the switch
    return math.gcd(max(1, base.nvlink_domain), gpu_count)


def validate_profile(p: HardwareProfile) -> list[Problem]:
    """Contradictions between fields, each with the fix."""
    key = OVERRIDES_KEY
    problems: list[Problem] = []
    if p.is_cpu_only:
        if p.interconnect is not Interconnect.NONE:
            problems.append(
                Problem(f"{key}.interconnect", "a host without GPUs has no GPU interconnect", "use none")
            )
        if p.host_memory_gib <= 0:
            problems.append(Problem(f"{key}.host_memory_gib", "must be greater than 0", "give the host RAM"))
        return problems
    if p.gpu_memory_gib <= 0:
        problems.append(
            Problem(f"{key}.gpu_memory_gib", "must be greater than 0", "give the GPU memory in GiB")
        )
    try:
        cc = parse_compute_capability(p.compute_capability)
    except ValueError:
        problems.append(
            Problem(f"{key}.compute_capability", f"{p.compute_capability!r} is not valid", "write e.g. '9.0'")
        )
        cc = (0, 0)
    if p.fp8 and cc < FP8_MIN_CC:
        problems.append(
            Problem(
                f"{key}.fp8",
                f"native fp8 needs compute capability 8.9 or newer, this GPU is {p.compute_capability}",
                "set fp8: false, or correct compute_capability",
            )
        )
    if p.bf16 and cc < BF16_MIN_CC:
        problems.append(
            Problem(
                f"{key}.bf16",
                f"bf16 needs compute capability 8.0 or newer, this GPU is {p.compute_capability}",
                "set bf16: false, or correct compute_capability",
            )
        )
    if p.interconnect is Interconnect.NONE:
        problems.append(
            Problem(
                f"{key}.interconnect",
                f"{p.gpu_count} GPUs need an interconnect",
                "use pcie, nvlink or nvswitch",
            )
        )
    if p.nvlink_domain < 1 or p.nvlink_domain > p.gpu_count or p.gpu_count % p.nvlink_domain:
        problems.append(
            Problem(
                f"{key}.nvlink_domain",
                f"{p.nvlink_domain} does not divide the {p.gpu_count} GPUs into equal NVLink domains",
                f"use a divisor of gpu_count ({', '.join(str(d) for d in _divisors(p.gpu_count))})",
            )
        )
    elif p.interconnect is Interconnect.PCIE and p.nvlink_domain > 1:
        problems.append(
            Problem(
                f"{key}.nvlink_domain",
                f"{p.nvlink_domain} GPUs share an NVLink domain but the interconnect is pcie",
                "set interconnect: nvlink (bridged cards) or nvlink_domain: 1",
            )
        )
    elif p.interconnect.is_nvlink and p.gpu_count > 1 and p.nvlink_domain == 1:
        problems.append(
            Problem(
                f"{key}.interconnect",
                f"{p.interconnect.value} with single-GPU domains links nothing",
                "set nvlink_domain to the GPUs per NVLink domain, or interconnect: pcie",
            )
        )
    return problems


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


NETWORK_KEY = "deepseek_network_gbps"


def apply_network(profile: HardwareProfile, value: object) -> HardwareProfile:
    """The profile with a site's own bandwidth between servers (`deepseek_network_gbps`); None keeps the
    profile's default. Only serving groups plan against it."""
    if value is None:
        return profile
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value) or value <= 0:
        raise PlannerInputError(
            [
                Problem(
                    NETWORK_KEY,
                    f"{value!r} is not a bandwidth in Gb/s",
                    "give the servers' link speed as a number, e.g. 100 (100 GbE) or 400 (NDR InfiniBand)",
                )
            ]
        )
    return replace(
        profile, network_gbps=float(value), overridden=(*profile.overridden, f"network_gbps={value:g}")
    )
