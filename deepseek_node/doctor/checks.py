"""The troubleshooting tables as checks: pure functions from a host's Readings to findings.

Each finding says what was seen and the fix (a command or an inventory variable). Every check reports an
`ok` finding when it passes, so the report shows what was looked at, not only what is wrong.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from deepseek_node.doctor.readings import Readings
from deepseek_node.doctor.severity import Severity
from deepseek_node.doctor.xid import parse_xid_lines
from deepseek_node.gpu.cuda import CompatMode, CudaVersionError, check_driver, parse_cuda_release

GATEWAY_UNIT = "deepseek-node"
ENGINE_UNIT = "deepseek-node-engine"


@dataclass(frozen=True)
class Thresholds:
    """Limits the checks use; each is the inventory variable `deepseek_doctor_<name>`."""

    temperature_warn_c: float = 80
    temperature_fail_c: float = 85
    cert_warn_days: float = 14
    disk_warn_free_pct: float = 10
    disk_fail_free_pct: float = 3
    # The plan's expected use of one GPU may take at most this share of its memory before it warns.
    memory_warn_pct: float = 95

    @classmethod
    def from_vars(cls, values: Mapping[str, Any] | None) -> Thresholds:
        """From `{name: value}` (the `deepseek_doctor_` prefix optional); a bad value names the variable."""
        known = {f.name for f in fields(cls)}
        picked: dict[str, float] = {}
        for key, value in (values or {}).items():
            name = str(key).removeprefix("deepseek_doctor_")
            if name not in known or value in (None, ""):
                continue
            try:
                picked[name] = float(value)
            except (TypeError, ValueError):
                raise ValueError(
                    f"deepseek_doctor_{name} must be a number, got {value!r}: set it like "
                    f"deepseek_doctor_{name}: {getattr(cls, name):g}"
                ) from None
        t = cls(**picked)
        if t.temperature_warn_c > t.temperature_fail_c:
            raise ValueError(
                "deepseek_doctor_temperature_warn_c is above deepseek_doctor_temperature_fail_c: "
                "the warning must come first"
            )
        return t


@dataclass(frozen=True)
class Finding:
    host: str
    check: str
    severity: Severity
    seen: str
    fix: str = ""
    gpu: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self) | {"severity": self.severity.value}


Check = Callable[[Readings, Thresholds], list[Finding]]


def _f(
    r: Readings, check: str, severity: Severity, seen: str, fix: str = "", gpu: int | None = None
) -> Finding:
    return Finding(r.host, check, severity, seen, fix, gpu)


def _gpus_ok(r: Readings, check: str, what: str) -> list[Finding]:
    if not r.gpus:
        return []
    return [_f(r, check, Severity.OK, f"{what} on all {len(r.gpus)} GPU(s)")]


# --- GPU presence and driver ---------------------------------------------------------------------------------


def check_gpu(r: Readings, t: Thresholds) -> list[Finding]:
    if r.gpus:
        names = sorted({g.name for g in r.gpus})
        return [
            _f(r, "gpu", Severity.OK, f"{len(r.gpus)} GPU(s) read through {r.gpu_source}: {', '.join(names)}")
        ]
    why = r.gpu_error or "no NVIDIA GPU or driver"
    if r.plan.device == "cuda":
        return [
            _f(
                r,
                "gpu",
                Severity.FAIL,
                f"no GPU could be read ({why}) but this node's plan runs on CUDA",
                "check the driver is loaded (`lsmod | grep nvidia`, `sudo modprobe nvidia`) and `nvidia-smi` "
                "answers; re-run `provision run --tags gpu` if the driver is missing",
            )
        ]
    return [_f(r, "gpu", Severity.OK, f"no GPU ({why}); GPU checks skipped")]


def check_driver_library(r: Readings, t: Thresholds) -> list[Finding]:
    """A driver upgraded under a loaded kernel module: NVML refuses with a version mismatch until a reboot."""
    text = (r.gpu_error or "").lower()
    loaded, library = r.kernel_module_version, r.library_version or r.driver_version
    fix = (
        "reboot the host to load the new driver (`sudo systemctl reboot`), or, with no process on the GPUs, "
        "reload it: `sudo systemctl stop deepseek-node deepseek-node-engine nvidia-persistenced && "
        "sudo rmmod nvidia_uvm nvidia_drm nvidia_modeset nvidia && sudo modprobe nvidia`"
    )
    if "mismatch" in text:
        seen = "driver/library version mismatch: NVML cannot start"
        if loaded and library:
            seen += f" (kernel module {loaded} loaded, user-space library {library} installed)"
        return [_f(r, "driver_library", Severity.FAIL, seen, fix)]
    if loaded and library and loaded != library:
        return [
            _f(
                r,
                "driver_library",
                Severity.FAIL,
                f"kernel module {loaded} is loaded but the installed driver library is {library} (pending reboot)",
                fix,
            )
        ]
    if not loaded and not library:
        return []
    seen = f"kernel module and library both {loaded or library}"
    if r.reboot_required:
        return [
            _f(
                r,
                "driver_library",
                Severity.WARN,
                seen + "; the system asks for a reboot (/run/reboot-required)",
                "reboot when convenient: `sudo systemctl reboot`",
            )
        ]
    return [_f(r, "driver_library", Severity.OK, seen)]


def check_driver_cuda(r: Readings, t: Thresholds) -> list[Finding]:
    """The installed CUDA toolkit against NVIDIA's minimum driver (deepseek_node/gpu/cuda.py)."""
    toolkit = r.cuda_toolkit.version
    driver = r.driver_version or r.kernel_module_version
    if not toolkit:
        return [
            _f(r, "driver_cuda", Severity.OK, "no CUDA toolkit installed (nothing to match the driver to)")
        ]
    if not driver:
        if r.gpus or r.plan.device == "cuda":
            return [
                _f(
                    r,
                    "driver_cuda",
                    Severity.WARN,
                    f"CUDA toolkit {toolkit} is installed but no driver version could be read",
                    "install the driver (`provision run --tags gpu`) and check `nvidia-smi`",
                )
            ]
        return [
            _f(r, "driver_cuda", Severity.OK, f"CUDA toolkit {toolkit} installed, no GPU driver (CPU node)")
        ]
    try:
        release = parse_cuda_release(toolkit)
        mode = CompatMode(r.cuda_compat or CompatMode.STRICT)
        strict = check_driver(str(release), driver, CompatMode.STRICT)
        if strict.ok:
            return [_f(r, "driver_cuda", Severity.OK, strict.message)]
        minor = check_driver(str(release), driver, CompatMode.MINOR_VERSION)
    except (CudaVersionError, ValueError) as exc:
        return [
            _f(
                r,
                "driver_cuda",
                Severity.WARN,
                f"cannot match CUDA {toolkit} ({r.cuda_toolkit.source}) to driver {driver}: {exc}",
                "pin a CUDA release the driver table knows (cuda_toolkit_version)",
            )
        ]
    if minor.ok and mode is CompatMode.MINOR_VERSION:
        return [
            _f(r, "driver_cuda", Severity.OK, minor.message + " (cuda_toolkit_driver_compat: minor_version)")
        ]
    if minor.ok:
        return [
            _f(
                r,
                "driver_cuda",
                Severity.WARN,
                f"driver {driver} runs CUDA {release} only with minor version compatibility "
                f"(full support needs >= {strict.minimum}): no PTX from the newer toolkit, no new driver APIs",
                f"install driver >= {strict.minimum}, pin cuda_toolkit_version to a release the driver "
                "fully supports, or accept the limits with cuda_toolkit_driver_compat: minor_version",
            )
        ]
    return [
        _f(
            r,
            "driver_cuda",
            Severity.FAIL,
            f"driver {driver} cannot run CUDA {release}: needs >= {minor.minimum} (minor version compatibility) "
            f"or >= {strict.minimum} (full)",
            f"install driver >= {strict.minimum} or pin an older cuda_toolkit_version, then "
            "`provision run --tags gpu`",
        )
    ]


# --- per-GPU state -------------------------------------------------------------------------------------------


def check_persistence(r: Readings, t: Thresholds) -> list[Finding]:
    off = [g for g in r.gpus if g.persistence_mode is False]
    if not off:
        return _gpus_ok(r, "persistence", "persistence mode on")
    return [
        _f(
            r,
            "persistence",
            Severity.WARN,
            f"persistence mode off on {', '.join(g.label for g in off)}: the driver tears the GPU down between "
            "clients (slow first request, lost clocks and ECC state)",
            "`sudo systemctl enable --now nvidia-persistenced` (nvidia_driver_persistenced: true) or "
            f"`sudo nvidia-smi -i {','.join(str(g.index) for g in off)} -pm 1`",
        )
    ]


# (bit, name, severity, why, fix)
THROTTLE_REASONS: tuple[tuple[int, str, Severity, str], ...] = (
    (
        0x4,
        "software power cap",
        Severity.WARN,
        "the GPU draws its power limit: raise the limit to the default (`sudo nvidia-smi -i {i} -pl {default}`) "
        "or accept the lower clocks",
    ),
    (
        0x8,
        "hardware slowdown",
        Severity.FAIL,
        "the board asserted a slowdown (power supply or temperature): check the PSUs and cooling "
        "(`ipmitool sdr`, `nvidia-smi -q -d PERFORMANCE,TEMPERATURE,POWER`)",
    ),
    (
        0x20,
        "software thermal slowdown",
        Severity.WARN,
        "the GPU is above its target temperature: check airflow and fan settings (`nvidia-smi -q -d TEMPERATURE`)",
    ),
    (
        0x40,
        "hardware thermal slowdown",
        Severity.FAIL,
        "the GPU is overheating: check fans, airflow and inlet temperature now (`ipmitool sdr type Temperature`)",
    ),
    (
        0x80,
        "hardware power brake",
        Severity.FAIL,
        "an external power brake is asserted (power supply or chassis): check the PSUs and the BMC's event log "
        "(`ipmitool sel list`)",
    ),
    (
        0x2,
        "application clocks setting",
        Severity.WARN,
        "clocks are pinned below the maximum: reset them with `sudo nvidia-smi -i {i} -rac` "
        "(and `sudo nvidia-smi -i {i} -rgc`)",
    ),
)


def throttle_reasons(mask: int) -> list[str]:
    """Readable names of the active clocks event reasons in an NVML bitmask."""
    names = {0x1: "idle", 0x10: "sync boost", 0x100: "display clocks setting"}
    names |= {bit: name for bit, name, _, _ in THROTTLE_REASONS}
    return [name for bit, name in sorted(names.items()) if mask & bit]


def check_throttle(r: Readings, t: Thresholds) -> list[Finding]:
    out: list[Finding] = []
    for g in r.gpus:
        mask = g.clocks_event_reasons
        if not mask:
            continue
        clocks = ""
        if g.sm_clock_mhz is not None and g.max_sm_clock_mhz:
            clocks = f" (SM {g.sm_clock_mhz} of {g.max_sm_clock_mhz} MHz)"
        for bit, name, severity, fix in THROTTLE_REASONS:
            if mask & bit:
                default = f"{g.default_power_limit_w:g}" if g.default_power_limit_w else "<default watts>"
                out.append(
                    _f(
                        r,
                        "throttle",
                        severity,
                        f"{g.label} clocks held back: {name}{clocks}",
                        fix.format(i=g.index, default=default),
                        g.index,
                    )
                )
    return out or _gpus_ok(r, "throttle", "no clock throttling (idle or boost only)")


def check_power_cap(r: Readings, t: Thresholds) -> list[Finding]:
    low = [
        g
        for g in r.gpus
        if g.power_limit_w is not None
        and g.default_power_limit_w
        and g.power_limit_w < g.default_power_limit_w - 0.5
    ]
    out = [
        _f(
            r,
            "power_cap",
            Severity.WARN,
            f"{g.label} power limit {g.power_limit_w:g} W is below its default {g.default_power_limit_w:g} W",
            f"`sudo nvidia-smi -i {g.index} -pl {g.default_power_limit_w:g}` (and remove whatever sets the lower "
            "limit at boot)",
            g.index,
        )
        for g in low
    ]
    return out or _gpus_ok(r, "power_cap", "power limit at its default")


def check_temperature(r: Readings, t: Thresholds) -> list[Finding]:
    out = []
    for g in r.gpus:
        if g.temperature_c is None:
            continue
        fix = (
            "check fans, airflow and the inlet temperature (`ipmitool sdr type Temperature`); the limits are "
            "deepseek_doctor_temperature_warn_c / _fail_c"
        )
        if g.temperature_c >= t.temperature_fail_c:
            out.append(
                _f(
                    r,
                    "temperature",
                    Severity.FAIL,
                    f"{g.label} at {g.temperature_c:g} °C (fail at {t.temperature_fail_c:g} °C)",
                    fix,
                    g.index,
                )
            )
        elif g.temperature_c >= t.temperature_warn_c:
            out.append(
                _f(
                    r,
                    "temperature",
                    Severity.WARN,
                    f"{g.label} at {g.temperature_c:g} °C (warn at {t.temperature_warn_c:g} °C)",
                    fix,
                    g.index,
                )
            )
    if out:
        return out
    temps = [g.temperature_c for g in r.gpus if g.temperature_c is not None]
    return [_f(r, "temperature", Severity.OK, f"hottest GPU {max(temps):g} °C")] if temps else []


def check_ecc(r: Readings, t: Thresholds) -> list[Finding]:
    out = []
    for g in r.gpus:
        if g.ecc_volatile_uncorrected:
            out.append(
                _f(
                    r,
                    "ecc",
                    Severity.FAIL,
                    f"{g.label}: {g.ecc_volatile_uncorrected} uncorrected ECC error(s) since the driver loaded",
                    "drain the node and reset the GPU (`sudo nvidia-smi -r -i "
                    f"{g.index}`) or reboot; if they come back, take the GPU out of service (RMA)",
                    g.index,
                )
            )
        elif g.ecc_aggregate_uncorrected:
            out.append(
                _f(
                    r,
                    "ecc",
                    Severity.WARN,
                    f"{g.label}: {g.ecc_aggregate_uncorrected} uncorrected ECC error(s) over its lifetime, none "
                    "since the driver loaded",
                    f"watch `nvidia-smi -q -d ECC,ROW_REMAPPER -i {g.index}`; open an RMA if the count grows",
                    g.index,
                )
            )
    return out or _gpus_ok(r, "ecc", "no uncorrected ECC errors")


def check_remapped_rows(r: Readings, t: Thresholds) -> list[Finding]:
    out = []
    for g in r.gpus:
        if g.remap_failure:
            out.append(
                _f(
                    r,
                    "remapped_rows",
                    Severity.FAIL,
                    f"{g.label}: row remapping failed (no spare rows left in a bank)",
                    "take the GPU out of service and open an RMA with the vendor",
                    g.index,
                )
            )
        elif g.remap_pending:
            out.append(
                _f(
                    r,
                    "remapped_rows",
                    Severity.WARN,
                    f"{g.label}: a row remap is pending ({g.remapped_rows_uncorrectable or 0} uncorrectable, "
                    f"{g.remapped_rows_correctable or 0} correctable rows remapped)",
                    f"drain the node, then `sudo nvidia-smi -r -i {g.index}` or reboot to apply the remap",
                    g.index,
                )
            )
    return out or _gpus_ok(r, "remapped_rows", "no pending or failed row remaps")


def check_memory_headroom(r: Readings, t: Thresholds) -> list[Finding]:
    """The planner's expected use of one GPU against what the driver reports for each GPU."""
    need = r.plan.expected_gpu_memory_gib
    totals = [g for g in r.gpus if g.memory_total_mib]
    if not need or r.plan.device != "cuda" or not totals:
        return []
    smallest = min(totals, key=lambda g: g.memory_total_mib or 0)
    have = (smallest.memory_total_mib or 0) / 1024
    share = 100 * need / have
    seen = f"the plan expects {need:g} GiB per GPU; {smallest.label} has {have:.1f} GiB ({share:.0f} %)"
    fix = (
        "re-plan for the real GPUs: check `provision plan -i INV` and deepseek_hardware_profile / "
        "deepseek_hardware_overrides.gpu_memory_gib, lower deepseek_max_context, then `provision run`"
    )
    if share > 100:
        return [_f(r, "memory_headroom", Severity.FAIL, seen + ": the model does not fit", fix)]
    if share > t.memory_warn_pct:
        return [
            _f(
                r,
                "memory_headroom",
                Severity.WARN,
                seen + f": under {100 - t.memory_warn_pct:g} % headroom",
                fix,
            )
        ]
    return [_f(r, "memory_headroom", Severity.OK, seen)]


def _bus_key(bus_id: str) -> str:
    """`00000000:3B:00.0` (NVML) and `0000:3b:00` (an Xid line) name the same GPU: compare bus:device."""
    return ":".join(bus_id.lower().split(".")[0].split(":")[-2:])


def check_xid(r: Readings, t: Thresholds) -> list[Finding]:
    if r.kernel_log.source is None:
        return [
            _f(
                r,
                "xid",
                Severity.WARN,
                f"the kernel log could not be read: {r.kernel_log.error or 'no journal or dmesg'}",
                "run doctor with root rights (the inventory's become) or add the user to systemd-journal",
            )
        ]
    events = parse_xid_lines(r.kernel_log.lines)
    if not events:
        return [_f(r, "xid", Severity.OK, f"no Xid events in this boot's kernel log ({r.kernel_log.source})")]
    by_gpu = {_bus_key(g.bus_id): g.index for g in r.gpus if g.bus_id}
    out = []
    seen_codes: dict[tuple[int, str], int] = {}
    for ev in events:
        seen_codes[(ev.code, ev.bus_id)] = seen_codes.get((ev.code, ev.bus_id), 0) + 1
    for (code, bus), count in seen_codes.items():
        last = [ev for ev in events if ev.code == code and ev.bus_id == bus][-1]
        gpu = by_gpu.get(_bus_key(bus))
        where = f"GPU {gpu} ({bus})" if gpu is not None else bus
        times = f"{count} time(s)" + (f", last {last.when}" if last.when else "")
        out.append(
            _f(
                r,
                "xid",
                last.info.severity,
                f"Xid {code} on {where}, {times}: {last.info.meaning}",
                last.info.fix,
                gpu,
            )
        )
    return out


# --- services, TLS, disk -------------------------------------------------------------------------------------


def check_units(r: Readings, t: Thresholds) -> list[Finding]:
    if r.systemd.error and not r.systemd.units:
        return [
            _f(
                r,
                "units",
                Severity.WARN,
                f"unit states could not be read: {r.systemd.error}",
                "check `systemctl`",
            )
        ]
    out = []
    for u in r.systemd.units:
        logs = f"`journalctl -u {u.name} -n 100`"
        if u.load_state == "not-found":
            if u.name == GATEWAY_UNIT:
                out.append(
                    _f(
                        r,
                        "units",
                        Severity.FAIL,
                        f"{u.name} is not installed",
                        "roll the node out: `provision run -i INV --limit <host>`",
                    )
                )
            else:
                out.append(
                    _f(r, "units", Severity.OK, f"{u.name} not installed (this node's engine is builtin)")
                )
            continue
        state = f"{u.name} {u.active_state}/{u.sub_state}"
        restarts = f", restarted {u.restarts} time(s)" if u.restarts else ""
        if u.active_state == "active":
            sev = Severity.WARN if (u.restarts or 0) >= 3 else Severity.OK
            fix = f"it keeps restarting: look at {logs}" if sev is Severity.WARN else ""
            out.append(_f(r, "units", sev, state + restarts, fix))
        elif u.active_state in ("failed", "inactive") or u.sub_state == "auto-restart":
            result = f" (result: {u.result})" if u.result and u.result != "success" else ""
            out.append(
                _f(
                    r,
                    "units",
                    Severity.FAIL,
                    state + result + restarts,
                    f"look at {logs}, fix the cause, then `sudo systemctl restart {u.name}`",
                )
            )
        else:
            out.append(_f(r, "units", Severity.WARN, state + restarts, f"look at {logs}"))
    return out


def check_health(r: Readings, t: Thresholds) -> list[Finding]:
    h = r.health
    gateway = next((u for u in r.systemd.units if u.name == GATEWAY_UNIT), None)
    if gateway is not None and gateway.load_state == "not-found":
        return []  # check_units already says the daemon is not installed
    if h.ready_status == 200:
        return [_f(r, "health", Severity.OK, f"{h.url}/health/ready answers 200 (ready)")]
    if h.ready_status in (401, 403) and h.live_status == 200:
        return [
            _f(
                r,
                "health",
                Severity.WARN,
                f"{h.url}/health/live answers 200; readiness not checked: "
                + ("the API key was refused" if h.key_given else "no API key to ask with"),
                "give the inventory a key with a plaintext `key` in inference_daemon_api_keys (metrics or "
                "admin scope preferred), or set DEEPSEEK_NODE_API_KEY for a local check",
            )
        ]
    if h.ready_status is None and h.live_status is None and not r.plan.configured:
        return [
            _f(
                r,
                "health",
                Severity.FAIL,
                f"the inference daemon is not deployed here (no daemon.yaml, {h.url or 'nothing'} does not answer)",
                "roll the node out: `provision run -i INV --limit <host>`",
            )
        ]
    if h.ready_status is not None:
        body = h.ready_body.strip().replace("\n", " ")[:200]
        return [
            _f(
                r,
                "health",
                Severity.FAIL,
                f"{h.url}/health/ready answers {h.ready_status}: {body}",
                f"look at `journalctl -u {GATEWAY_UNIT} -u {ENGINE_UNIT} -n 200` (model load, GPU memory)",
            )
        ]
    return [
        _f(
            r,
            "health",
            Severity.FAIL,
            f"{h.url or 'the daemon'} does not answer: {h.error or 'no response'}",
            f"`systemctl status {GATEWAY_UNIT}`; check inference_daemon_port and the certificate under tls_dir",
        )
    ]


def check_certificate(r: Readings, t: Thresholds, now: dt.datetime | None = None) -> list[Finding]:
    c = r.certificate
    fix = "re-issue it: `provision run -i INV --tags tls --limit <host>` (tls_renew_before_days renews early)"
    if c.not_after is None:
        if c.error == "not found" and not r.plan.configured:
            return []  # not rolled out yet: check_units says so
        return [_f(r, "certificate", Severity.FAIL, f"{c.path}: {c.error or 'no expiry read'}", fix)]
    when = dt.datetime.fromisoformat(c.not_after)
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    # As of when the readings were taken, so a recorded host gives the same findings later.
    if now is None and r.collected_at:
        try:
            now = dt.datetime.fromisoformat(r.collected_at)
        except ValueError:
            now = None
    now = now or dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        now = now.replace(tzinfo=dt.UTC)
    days = (when - now).total_seconds() / 86400
    if days < 0:
        return [
            _f(
                r,
                "certificate",
                Severity.FAIL,
                f"{c.path} expired {-days:.0f} day(s) ago ({c.not_after})",
                fix,
            )
        ]
    if days < t.cert_warn_days:
        return [
            _f(r, "certificate", Severity.WARN, f"{c.path} expires in {days:.1f} day(s) ({c.not_after})", fix)
        ]
    return [_f(r, "certificate", Severity.OK, f"{c.path} valid for {days:.0f} more day(s)")]


def check_disk(r: Readings, t: Thresholds) -> list[Finding]:
    d = r.disk
    if d.error or not d.total_bytes or d.free_bytes is None:
        return [_f(r, "disk", Severity.WARN, f"free space at {d.path} not read: {d.error or 'unknown'}")]
    pct = 100 * d.free_bytes / d.total_bytes
    seen = f"{d.free_bytes / 2**30:.1f} GiB free of {d.total_bytes / 2**30:.1f} GiB ({pct:.0f} %) at {d.measured_at}"
    fix = (
        f"free space under {d.measured_at} (old models: `sudo du -sh {d.path}/*`), or grow the volume; "
        "limits: deepseek_doctor_disk_warn_free_pct / _fail_free_pct"
    )
    if pct < t.disk_fail_free_pct:
        return [_f(r, "disk", Severity.FAIL, seen, fix)]
    if pct < t.disk_warn_free_pct:
        return [_f(r, "disk", Severity.WARN, seen, fix)]
    return [_f(r, "disk", Severity.OK, seen)]


CHECKS: tuple[Check, ...] = (
    check_gpu,
    check_driver_library,
    check_driver_cuda,
    check_persistence,
    check_throttle,
    check_power_cap,
    check_temperature,
    check_ecc,
    check_remapped_rows,
    check_xid,
    check_memory_headroom,
    check_units,
    check_health,
    check_certificate,
    check_disk,
)


def run_checks(r: Readings, thresholds: Thresholds | None = None) -> list[Finding]:
    """Every check over one host's readings; thresholds default to the host's recorded variables."""
    t = thresholds or Thresholds.from_vars(r.thresholds)
    findings: list[Finding] = []
    for check in CHECKS:
        findings += check(r, t)
    return findings
