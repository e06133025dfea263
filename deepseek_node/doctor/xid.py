"""Xid events: the driver's error reports in the kernel log (`NVRM: Xid (PCI:0000:3b:00): 79, ...`).

Meanings and actions follow NVIDIA's Xid catalogue (docs.nvidia.com/deploy/xid-errors) for the codes a
serving node meets in practice; an unknown code is reported as such with the general action.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from deepseek_node.doctor.severity import Severity


@dataclass(frozen=True)
class XidInfo:
    meaning: str
    severity: Severity
    fix: str


_RESET = "drain the node, then reset the GPU (`sudo nvidia-smi -r -i <GPU>`) or reboot"
_HW = "if it comes back after a reset, take the GPU out of service and open an RMA with the vendor"
XID: dict[int, XidInfo] = {
    13: XidInfo(
        "graphics engine exception (usually the application: an out-of-range access or a bad kernel)",
        Severity.WARN,
        "check the engine's log at that time (`journalctl -u deepseek-node-engine`); if it repeats with "
        "different workloads, run `dcgmi diag -r 2`",
    ),
    31: XidInfo(
        "GPU memory page fault (usually the application: an illegal address)",
        Severity.WARN,
        "check the engine's log at that time; if it repeats with a known-good model and engine, run "
        "`dcgmi diag -r 2`",
    ),
    43: XidInfo(
        "GPU stopped processing: a channel was reset (the faulting application was stopped)",
        Severity.WARN,
        "the GPU itself is usable; check which process faulted (`journalctl -u deepseek-node-engine`)",
    ),
    45: XidInfo(
        "preemptive cleanup: a process was stopped after an earlier error or by a user",
        Severity.WARN,
        "look at the Xid reported just before it; on its own it needs no action",
    ),
    48: XidInfo(
        "double-bit ECC error (uncorrectable memory error)",
        Severity.FAIL,
        f"{_RESET} to retire or remap the row; {_HW}",
    ),
    61: XidInfo(
        "internal micro-controller breakpoint/warning",
        Severity.WARN,
        f"{_RESET}; update the driver if it recurs",
    ),
    62: XidInfo(
        "internal micro-controller halt",
        Severity.FAIL,
        f"{_RESET}; update the driver; {_HW}",
    ),
    63: XidInfo(
        "ECC page retirement or row remapping recorded (a reset applies it)",
        Severity.WARN,
        f"{_RESET} so the remapping takes effect",
    ),
    64: XidInfo(
        "ECC page retirement or row remapping failed",
        Severity.FAIL,
        f"{_RESET}; {_HW}",
    ),
    74: XidInfo(
        "NVLink error",
        Severity.FAIL,
        "check `nvidia-smi nvlink -s` and `nvidia-smi nvlink -e`, reseat the board or bridge, "
        f"then {_RESET}; {_HW}",
    ),
    79: XidInfo(
        "GPU has fallen off the bus",
        Severity.FAIL,
        "reboot the host (`sudo systemctl reboot`); check the GPU's power cables, PCIe seating, riser and "
        f"cooling (`ipmitool sel list`); {_HW}",
    ),
    92: XidInfo(
        "high single-bit ECC error rate",
        Severity.WARN,
        f"watch `nvidia-smi -q -d ECC,ROW_REMAPPER`; {_RESET} when convenient",
    ),
    94: XidInfo(
        "contained ECC error (only the affected application was stopped)",
        Severity.WARN,
        f"{_RESET} when convenient so the row is remapped",
    ),
    95: XidInfo(
        "uncontained ECC error (every application on the GPU is affected)",
        Severity.FAIL,
        f"{_RESET} now; {_HW}",
    ),
    119: XidInfo(
        "GSP RPC timeout (the GPU System Processor did not answer)",
        Severity.FAIL,
        f"{_RESET}; update the driver; if it recurs, the proprietary modules "
        "(nvidia_driver_open_kernel_modules: false) can run without GSP: "
        "`options nvidia NVreg_EnableGpuFirmware=0`",
    ),
    120: XidInfo(
        "GSP error (the GPU System Processor reported an error)",
        Severity.FAIL,
        f"{_RESET}; update the driver; {_HW}",
    ),
}
UNKNOWN = XidInfo(
    "not in this table",
    Severity.WARN,
    "look the code up in NVIDIA's Xid catalogue (docs.nvidia.com/deploy/xid-errors)",
)

_LINE = re.compile(r"NVRM: Xid \((?:PCI:)?(?P<bus>[0-9A-Fa-f:.]+)\): (?P<code>\d+)(?:, (?P<rest>.*))?")
_WHEN = re.compile(r"^(?P<when>\d{4}-\d\d-\d\dT\S+)\s")


@dataclass(frozen=True)
class XidEvent:
    code: int
    bus_id: str
    detail: str
    when: str | None
    line: str

    @property
    def info(self) -> XidInfo:
        return XID.get(self.code, UNKNOWN)


def parse_xid_line(line: str) -> XidEvent | None:
    m = _LINE.search(line)
    if not m:
        return None
    when = _WHEN.match(line)
    return XidEvent(
        code=int(m.group("code")),
        bus_id=m.group("bus").lower(),
        detail=(m.group("rest") or "").strip(),
        when=when.group("when") if when else None,
        line=line.strip(),
    )


def parse_xid_lines(lines: list[str]) -> list[XidEvent]:
    return [ev for ev in (parse_xid_line(ln) for ln in lines) if ev is not None]
