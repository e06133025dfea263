"""What the collector read on one host (deepseek_node/doctor/collect.py's JSON), as typed records.

Checks are pure functions of these records, so a recorded host (tests/fixtures/doctor/) gives the same findings
as the live one did.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def _build(cls: type[T], data: Any) -> T:
    """A dataclass from a dict, ignoring keys it does not know (a newer collector) and missing ones."""
    if isinstance(data, cls):
        return data
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in (data or {}).items() if k in names})


@dataclass
class GpuReading:
    index: int
    name: str = "?"
    uuid: str = ""
    bus_id: str = ""
    persistence_mode: bool | None = None
    temperature_c: float | None = None
    power_draw_w: float | None = None
    power_limit_w: float | None = None
    default_power_limit_w: float | None = None
    clocks_event_reasons: int | None = None  # NVML bitmask (nvmlClocksEventReason*)
    sm_clock_mhz: int | None = None
    max_sm_clock_mhz: int | None = None
    memory_total_mib: float | None = None
    memory_used_mib: float | None = None
    ecc_enabled: bool | None = None
    ecc_volatile_uncorrected: int | None = None
    ecc_aggregate_uncorrected: int | None = None
    ecc_volatile_corrected: int | None = None
    remapped_rows_correctable: int | None = None
    remapped_rows_uncorrectable: int | None = None
    remap_pending: bool | None = None
    remap_failure: bool | None = None

    @property
    def label(self) -> str:
        return f"GPU {self.index}"


@dataclass
class CudaToolkitReading:
    version: str | None = None
    source: str | None = None


@dataclass
class KernelLogReading:
    source: str | None = None  # journal | dmesg | None (unreadable)
    lines: list[str] = field(default_factory=list)  # the `NVRM: Xid` lines only
    error: str | None = None


@dataclass
class UnitReading:
    name: str
    load_state: str = ""
    active_state: str = ""
    sub_state: str = ""
    unit_file_state: str = ""
    result: str = ""
    restarts: int | None = None


@dataclass
class SystemdReading:
    units: list[UnitReading] = field(default_factory=list)
    error: str | None = None


@dataclass
class HealthReading:
    url: str = ""
    live_status: int | None = None
    ready_status: int | None = None
    ready_body: str = ""
    error: str | None = None
    key_given: bool = False


@dataclass
class CertReading:
    path: str = ""
    not_after: str | None = None  # ISO 8601, UTC
    error: str | None = None


@dataclass
class DiskReading:
    path: str = ""
    measured_at: str = ""
    total_bytes: int | None = None
    free_bytes: int | None = None
    error: str | None = None


@dataclass
class PlanReading:
    device: str | None = None
    expected_gpu_memory_gib: float | None = None
    tp: int | None = None
    pp: int | None = None
    configured: bool = False  # a daemon.yaml was found


@dataclass
class Readings:
    host: str
    collected_at: str = ""
    gpu_source: str = "none"  # nvml | nvidia-smi | none
    gpu_error: str | None = None
    driver_version: str | None = None
    cuda_driver_version: str | None = None
    kernel_module_version: str | None = None
    library_version: str | None = None
    cuda_toolkit: CudaToolkitReading = field(default_factory=CudaToolkitReading)
    cuda_compat: str | None = None
    reboot_required: bool = False
    gpus: list[GpuReading] = field(default_factory=list)
    kernel_log: KernelLogReading = field(default_factory=KernelLogReading)
    systemd: SystemdReading = field(default_factory=SystemdReading)
    health: HealthReading = field(default_factory=HealthReading)
    certificate: CertReading = field(default_factory=CertReading)
    disk: DiskReading = field(default_factory=DiskReading)
    plan: PlanReading = field(default_factory=PlanReading)
    thresholds: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_dict(cls, data: dict[str, Any], host: str | None = None) -> Readings:
        if not isinstance(data, dict):
            raise ValueError(f"readings must be a JSON object, got {type(data).__name__}")
        d = dict(data)
        d["host"] = host or d.get("host") or "?"
        d["gpus"] = [_build(GpuReading, g) for g in d.get("gpus") or []]
        d["cuda_toolkit"] = _build(CudaToolkitReading, d.get("cuda_toolkit"))
        d["kernel_log"] = _build(KernelLogReading, d.get("kernel_log"))
        sd = dict(d.get("systemd") or {})
        sd["units"] = [_build(UnitReading, u) for u in sd.get("units") or []]
        d["systemd"] = _build(SystemdReading, sd)
        d["health"] = _build(HealthReading, d.get("health"))
        d["certificate"] = _build(CertReading, d.get("certificate"))
        d["disk"] = _build(DiskReading, d.get("disk"))
        d["plan"] = _build(PlanReading, d.get("plan"))
        return _build(cls, d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
