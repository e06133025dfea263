#!/usr/bin/python3
"""What `provision doctor` reads on one host, as JSON on stdout; changes nothing.

Standard library only and self-contained, on purpose: Ansible copies this very file to each host and runs it
with the system python3 (`ansible.builtin.script`), and `provision doctor` without an inventory imports it to
read the local machine. The controller turns the readings into findings (deepseek_node/doctor/checks.py).

Options come as JSON in the DEEPSEEK_DOCTOR_OPTIONS environment variable (never on the command line, which
every local user can read: it may carry the API key for /health/ready):
  units, daemon_config, tls_dir, models_dir, port, api_key, nvml_paths, thresholds, cuda_compat.

GPU readings come from NVML (pynvml, from the system or the daemon's virtualenv), else from
`nvidia-smi -q -x`, else there is no GPU to read. Xid events from the kernel log of the current boot
(journalctl -k, else dmesg).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import glob
import json
import os
import re
import shutil
import ssl
import subprocess
import sys
import urllib.error
import urllib.request
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from typing import Any

Run = Callable[[Sequence[str]], tuple[int, str, str]]

DEFAULTS: dict[str, Any] = {
    "units": ["deepseek-node", "deepseek-node-engine"],
    "daemon_config": "/etc/deepseek-node/daemon.yaml",
    "tls_dir": "/etc/deepseek-node/tls",
    "models_dir": "/var/lib/deepseek-node/models",
    "port": 8443,
    "api_key": "",
    "nvml_paths": ["/opt/deepseek-node/venv/lib/python3*/site-packages"],
    "thresholds": {},
    "cuda_compat": "",
}
# NVML clocks event (throttle) reasons, by the names nvidia-smi's XML uses after its prefix.
EVENT_BITS = {
    "gpu_idle": 0x1,
    "applications_clocks_setting": 0x2,
    "sw_power_cap": 0x4,
    "hw_slowdown": 0x8,
    "sync_boost": 0x10,
    "sw_thermal_slowdown": 0x20,
    "hw_thermal_slowdown": 0x40,
    "hw_power_brake_slowdown": 0x80,
    "display_clocks_setting": 0x100,
}
XID_MARK = "NVRM: Xid"
_NUM = re.compile(r"-?\d+(?:\.\d+)?")


def run_command(argv: Sequence[str], timeout: float = 30) -> tuple[int, str, str]:
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError:
        return 127, "", "not found"
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 1, "", str(exc)
    return p.returncode, p.stdout, p.stderr


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


def _number(text: str | None) -> float | None:
    """`81559 MiB`, `700.00 W`, `34 C` -> the number; `N/A` and friends -> None."""
    if text is None:
        return None
    m = _NUM.search(text)
    return float(m.group(0)) if m else None


def _int(text: str | None) -> int | None:
    n = _number(text)
    return None if n is None else int(n)


# --- GPUs: NVML ----------------------------------------------------------------------------------------------


def import_pynvml(extra_paths: Sequence[str] = ()) -> Any:
    try:
        import pynvml  # type: ignore[import-not-found]

        return pynvml
    except ImportError:
        pass
    for pattern in extra_paths:
        for path in sorted(glob.glob(pattern)):
            if os.path.isdir(path) and path not in sys.path:
                sys.path.append(path)
    try:
        import pynvml  # type: ignore[import-not-found]

        return pynvml
    except ImportError:
        return None


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # a counter the GPU does not support (NVMLError_NotSupported) is simply not read
        return None


def nvml_readings(nvml: Any) -> dict[str, Any]:
    """Driver, CUDA driver API version and per-GPU readings from NVML; `error` says why none were read."""
    if nvml is None:
        return {"error": "pynvml (nvidia-ml-py) is not installed"}
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_DriverNotLoaded, _LibraryNotFound, _LibRmVersionMismatch
        return {"error": f"{type(exc).__name__}: {exc}"}
    try:
        out: dict[str, Any] = {"driver_version": _text(nvml.nvmlSystemGetDriverVersion()), "gpus": []}
        cuda = _try(lambda: int(nvml.nvmlSystemGetCudaDriverVersion_v2()))
        out["cuda_driver_version"] = f"{cuda // 1000}.{(cuda % 1000) // 10}" if cuda else None
        uncorrected = getattr(nvml, "NVML_MEMORY_ERROR_TYPE_UNCORRECTED", 1)
        corrected = getattr(nvml, "NVML_MEMORY_ERROR_TYPE_CORRECTED", 0)
        volatile = getattr(nvml, "NVML_VOLATILE_ECC", 0)
        aggregate = getattr(nvml, "NVML_AGGREGATE_ECC", 1)
        sm = getattr(nvml, "NVML_CLOCK_SM", 1)
        for i in range(int(nvml.nvmlDeviceGetCount())):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = _try(lambda h=h: nvml.nvmlDeviceGetMemoryInfo(h))
            events_fn = getattr(nvml, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
                nvml, "nvmlDeviceGetCurrentClocksThrottleReasons", None
            )
            remap = _try(lambda h=h: nvml.nvmlDeviceGetRemappedRows(h))
            ecc_mode = _try(lambda h=h: nvml.nvmlDeviceGetEccMode(h))

            def mw(fn: str, h: Any = h) -> float | None:
                v = _try(lambda: getattr(nvml, fn)(h))
                return None if v is None else round(v / 1000, 2)

            out["gpus"].append(
                {
                    "index": i,
                    "name": _text(_try(lambda h=h: nvml.nvmlDeviceGetName(h)) or "?"),
                    "uuid": _text(_try(lambda h=h: nvml.nvmlDeviceGetUUID(h)) or ""),
                    "bus_id": _text(_try(lambda h=h: nvml.nvmlDeviceGetPciInfo(h).busId) or ""),
                    "persistence_mode": _try(lambda h=h: bool(nvml.nvmlDeviceGetPersistenceMode(h))),
                    "temperature_c": _try(
                        lambda h=h: float(
                            nvml.nvmlDeviceGetTemperature(h, getattr(nvml, "NVML_TEMPERATURE_GPU", 0))
                        )
                    ),
                    "power_draw_w": mw("nvmlDeviceGetPowerUsage"),
                    "power_limit_w": mw("nvmlDeviceGetEnforcedPowerLimit"),
                    "default_power_limit_w": mw("nvmlDeviceGetPowerManagementDefaultLimit"),
                    "clocks_event_reasons": _try(lambda h=h, f=events_fn: int(f(h))) if events_fn else None,
                    "sm_clock_mhz": _try(lambda h=h: int(nvml.nvmlDeviceGetClockInfo(h, sm))),
                    "max_sm_clock_mhz": _try(lambda h=h: int(nvml.nvmlDeviceGetMaxClockInfo(h, sm))),
                    "memory_total_mib": round(mem.total / 2**20) if mem else None,
                    "memory_used_mib": round(mem.used / 2**20) if mem else None,
                    "ecc_enabled": bool(ecc_mode[0]) if ecc_mode else None,
                    "ecc_volatile_uncorrected": _try(
                        lambda h=h: int(nvml.nvmlDeviceGetTotalEccErrors(h, uncorrected, volatile))
                    ),
                    "ecc_aggregate_uncorrected": _try(
                        lambda h=h: int(nvml.nvmlDeviceGetTotalEccErrors(h, uncorrected, aggregate))
                    ),
                    "ecc_volatile_corrected": _try(
                        lambda h=h: int(nvml.nvmlDeviceGetTotalEccErrors(h, corrected, volatile))
                    ),
                    "remapped_rows_correctable": int(remap[0]) if remap else None,
                    "remapped_rows_uncorrectable": int(remap[1]) if remap else None,
                    "remap_pending": bool(remap[2]) if remap else None,
                    "remap_failure": bool(remap[3]) if remap else None,
                }
            )
        return out
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


# --- GPUs: nvidia-smi -q -x ----------------------------------------------------------------------------------


def _find_text(el: ET.Element, *paths: str) -> str | None:
    for path in paths:
        found = el.find(path)
        if found is not None and found.text is not None and found.text.strip():
            return found.text.strip()
    return None


def _yes(text: str | None, true: tuple[str, ...] = ("yes", "enabled", "active")) -> bool | None:
    if text is None or text.upper() == "N/A":
        return None
    return text.strip().lower() in true


def _sum_counts(el: ET.Element | None, names: Sequence[str]) -> int | None:
    """Sum the named counters under `el` (N/A ones count as absent); None when none of them reads."""
    if el is None:
        return None
    values = [_int(_find_text(el, n)) for n in names]
    read = [v for v in values if v is not None]
    return sum(read) if read else None


def _event_mask(gpu: ET.Element) -> int | None:
    block = gpu.find("clocks_event_reasons")
    prefix = "clocks_event_reason_"
    if block is None:
        block, prefix = gpu.find("clocks_throttle_reasons"), "clocks_throttle_reason_"
    if block is None:
        return None
    mask, seen = 0, False
    for child in block:
        name = child.tag.removeprefix(prefix)
        if name in EVENT_BITS and child.text:
            seen = True
            if child.text.strip().lower() == "active":
                mask |= EVENT_BITS[name]
    return mask if seen else None


def smi_readings(xml_text: str) -> dict[str, Any]:
    """The same readings as nvml_readings, from `nvidia-smi -q -x` (old and new element names)."""
    root = ET.fromstring(xml_text)
    out: dict[str, Any] = {
        "driver_version": _find_text(root, "driver_version"),
        "cuda_driver_version": _find_text(root, "cuda_version"),
        "gpus": [],
    }
    for i, gpu in enumerate(root.findall("gpu")):
        power = gpu.find("gpu_power_readings")
        if power is None:
            power = gpu.find("power_readings")
        volatile = gpu.find("ecc_errors/volatile")
        aggregate = gpu.find("ecc_errors/aggregate")
        unc = (
            "dram_uncorrectable",
            "sram_uncorrectable",
            "sram_uncorrectable_parity",
            "sram_uncorrectable_secded",
            "double_bit/total",
        )
        cor = ("dram_correctable", "sram_correctable", "single_bit/total")
        minor = _int(_find_text(gpu, "minor_number"))
        out["gpus"].append(
            {
                "index": i if minor is None else minor,
                "name": _find_text(gpu, "product_name") or "?",
                "uuid": _find_text(gpu, "uuid") or "",
                "bus_id": gpu.get("id") or _find_text(gpu, "pci/pci_bus_id") or "",
                "persistence_mode": _yes(_find_text(gpu, "persistence_mode")),
                "temperature_c": _number(_find_text(gpu, "temperature/gpu_temp")),
                "power_draw_w": None
                if power is None
                else _number(_find_text(power, "power_draw", "instant_power_draw", "average_power_draw")),
                "power_limit_w": None
                if power is None
                else _number(_find_text(power, "current_power_limit", "enforced_power_limit", "power_limit")),
                "default_power_limit_w": None
                if power is None
                else _number(_find_text(power, "default_power_limit")),
                "clocks_event_reasons": _event_mask(gpu),
                "sm_clock_mhz": _int(_find_text(gpu, "clocks/sm_clock")),
                "max_sm_clock_mhz": _int(_find_text(gpu, "max_clocks/sm_clock")),
                "memory_total_mib": _number(_find_text(gpu, "fb_memory_usage/total")),
                "memory_used_mib": _number(_find_text(gpu, "fb_memory_usage/used")),
                "ecc_enabled": _yes(_find_text(gpu, "ecc_mode/current_ecc")),
                "ecc_volatile_uncorrected": _sum_counts(volatile, unc),
                "ecc_aggregate_uncorrected": _sum_counts(aggregate, unc),
                "ecc_volatile_corrected": _sum_counts(volatile, cor),
                "remapped_rows_correctable": _int(_find_text(gpu, "remapped_rows/remapped_row_corr")),
                "remapped_rows_uncorrectable": _int(_find_text(gpu, "remapped_rows/remapped_row_unc")),
                "remap_pending": _yes(_find_text(gpu, "remapped_rows/remapped_row_pending")),
                "remap_failure": _yes(_find_text(gpu, "remapped_rows/remapped_row_failure")),
            }
        )
    return out


def gpu_readings(run: Run, nvml: Any) -> dict[str, Any]:
    """NVML first, nvidia-smi's XML second; with neither, `source: none` and every reason why."""
    reasons = []
    got = nvml_readings(nvml)
    if "error" not in got:
        return {"source": "nvml", **got}
    reasons.append(f"NVML: {got['error']}")
    rc, out, err = run(["nvidia-smi", "-q", "-x"])
    if rc == 0 and out.strip():
        try:
            return {"source": "nvidia-smi", **smi_readings(out)}
        except ET.ParseError as exc:
            reasons.append(f"nvidia-smi: unreadable XML ({exc})")
    else:
        # "Failed to initialize NVML: Driver/library version mismatch" is said here, on stdout.
        reasons.append(f"nvidia-smi: {(err or out).strip()[:300] or f'exit {rc}'}")
    return {"source": "none", "error": "; ".join(reasons), "gpus": []}


# --- driver, library, toolkit --------------------------------------------------------------------------------


def kernel_module_version(root: str = "/") -> str | None:
    """The loaded kernel module's version (/proc/driver/nvidia/version), None without one."""
    text = _read(os.path.join(root, "proc/driver/nvidia/version"))
    m = re.search(r"Kernel Module(?: for \S+)?\s+(\d+\.\d+(?:\.\d+)?)", text or "")
    return m.group(1) if m else None


def library_version(root: str = "/") -> str | None:
    """The installed user-space driver (libnvidia-ml.so.<version>), which NVML loads."""
    patterns = (
        "usr/lib/*/libnvidia-ml.so.*.*",
        "usr/lib/*/nvidia/current/libnvidia-ml.so.*.*",
        "usr/lib64/libnvidia-ml.so.*.*",
    )
    versions = set()
    for pattern in patterns:
        for path in glob.glob(os.path.join(root, pattern)):
            m = re.search(r"libnvidia-ml\.so\.(\d+\.\d+(?:\.\d+)?)$", path)
            if m:
                versions.add(m.group(1))
    return sorted(versions)[-1] if versions else None


def cuda_toolkit(run: Run, root: str = "/") -> dict[str, Any]:
    """The installed CUDA toolkit release and where it was read from (none: no toolkit)."""
    raw = _read(os.path.join(root, "usr/local/cuda/version.json"))
    if raw:
        with contextlib.suppress(ValueError, AttributeError):
            return {"version": json.loads(raw)["cuda"]["version"], "source": "/usr/local/cuda/version.json"}
    raw = _read(os.path.join(root, "usr/local/cuda/version.txt"))
    m = re.search(r"CUDA Version (\d+\.\d+(?:\.\d+)?)", raw or "")
    if m:
        return {"version": m.group(1), "source": "/usr/local/cuda/version.txt"}
    rc, out, _ = run(["dpkg-query", "-W", "-f", "${Version}", "nvidia-cuda-toolkit"])
    if rc == 0 and out.strip():
        return {"version": out.strip(), "source": "package nvidia-cuda-toolkit"}
    for nvcc in ("nvcc", os.path.join(root, "usr/local/cuda/bin/nvcc")):
        rc, out, _ = run([nvcc, "--version"])
        m = re.search(r"release (\d+\.\d+)", out or "")
        if rc == 0 and m:
            return {"version": m.group(1), "source": "nvcc --version"}
    return {"version": None, "source": None}


# --- kernel log ----------------------------------------------------------------------------------------------


def xid_lines(run: Run) -> dict[str, Any]:
    """`NVRM: Xid` lines of the current boot's kernel log: the journal first, dmesg where there is none."""
    errors = []
    for source, argv in (
        ("journal", ["journalctl", "-k", "-b", "--no-pager", "-o", "short-iso", "-q"]),
        ("dmesg", ["dmesg", "--time-format", "iso"]),
        ("dmesg", ["dmesg"]),
    ):
        rc, out, err = run(argv)
        if rc == 0 and (out.strip() or source == "journal"):
            return {
                "source": source,
                "lines": [ln for ln in out.splitlines() if XID_MARK in ln],
                "error": None,
            }
        errors.append(f"{argv[0]}: {(err or out).strip() or f'exit {rc}'}")
    return {"source": None, "lines": [], "error": "; ".join(errors)}


# --- services, health, certificate, disk ---------------------------------------------------------------------

_UNIT_PROPS = ("Id", "LoadState", "ActiveState", "SubState", "UnitFileState", "Result", "NRestarts")


def parse_systemctl_show(text: str) -> list[dict[str, Any]]:
    """`systemctl show -p ... a b` prints one block per unit, separated by a blank line."""
    units = []
    for block in re.split(r"\n\s*\n", text.strip()):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if props.get("Id"):
            units.append(
                {
                    "name": props["Id"].removesuffix(".service"),
                    "load_state": props.get("LoadState", ""),
                    "active_state": props.get("ActiveState", ""),
                    "sub_state": props.get("SubState", ""),
                    "unit_file_state": props.get("UnitFileState", ""),
                    "result": props.get("Result", ""),
                    "restarts": _int(props.get("NRestarts")),
                }
            )
    return units


def unit_states(run: Run, names: Sequence[str]) -> dict[str, Any]:
    rc, out, err = run(["systemctl", "show", "-p", ",".join(_UNIT_PROPS), *[f"{n}.service" for n in names]])
    if rc != 0:
        return {"units": [], "error": f"systemctl: {(err or out).strip() or f'exit {rc}'}"}
    return {"units": parse_systemctl_show(out), "error": None}


def daemon_config(path: str) -> dict[str, Any]:
    """The deployed daemon.yaml: model device/path, server port/cert, and the planner's decision.

    The template writes every value JSON-encoded, so without PyYAML a line reader gets the same values."""
    text = _read(path)
    if text is None:
        return {}
    try:
        import yaml  # type: ignore[import-untyped]

        data = yaml.safe_load(text)
        return data if isinstance(data, dict) else {}
    except ImportError:
        pass
    except Exception:
        return {}
    data: dict[str, Any] = {}
    section: dict[str, Any] | None = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#") or ":" not in line:
            continue
        key, _, value = line.partition(":")
        value = value.strip()
        if not line.startswith(" "):
            if value:
                with contextlib.suppress(ValueError):
                    data[key] = json.loads(value)
                section = None
            else:
                section = data.setdefault(key, {})
        elif section is not None and line.startswith("  ") and not line.startswith("   ") and value:
            with contextlib.suppress(ValueError):
                section[key.strip()] = json.loads(value)
    return data


def _https_get(url: str, cafile: str | None, key: str, timeout: float = 10) -> tuple[int | None, str, str]:
    try:
        ctx = ssl.create_default_context(cafile=cafile) if cafile else ssl.create_default_context()
    except (OSError, ssl.SSLError) as exc:
        return None, "", f"cannot load the CA {cafile}: {exc}"
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {key}"} if key else {})
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=timeout) as resp:
            return resp.status, resp.read(2000).decode(errors="replace"), ""
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(2000).decode(errors="replace"), ""
    except (urllib.error.URLError, OSError, ssl.SSLError) as exc:
        return None, "", str(getattr(exc, "reason", exc))


def health(port: int, cafile: str, key: str, host: str = "127.0.0.1") -> dict[str, Any]:
    base = f"https://{host}:{port}"
    live, _, live_err = _https_get(base + "/health/live", cafile, "")
    ready, body, ready_err = _https_get(base + "/health/ready", cafile, key)
    return {
        "url": base,
        "live_status": live,
        "ready_status": ready,
        "ready_body": body[:500],
        "error": ready_err or live_err or None,
        "key_given": bool(key),
    }


def cert_not_after(path: str) -> dict[str, Any]:
    """A PEM certificate's expiry (UTC ISO): cryptography where installed, else the ssl module's decoder."""
    if not os.path.exists(path):
        return {"path": path, "not_after": None, "error": "not found"}
    try:
        from cryptography import x509  # type: ignore[import-not-found]

        with open(path, "rb") as fh:
            cert = x509.load_pem_x509_certificate(fh.read())
        when = getattr(cert, "not_valid_after_utc", None) or cert.not_valid_after.replace(tzinfo=dt.UTC)
        return {"path": path, "not_after": when.isoformat(), "error": None}
    except ImportError:
        pass
    except Exception as exc:
        return {"path": path, "not_after": None, "error": f"unreadable: {exc}"}
    try:
        info = ssl._ssl._test_decode_cert(path)  # type: ignore[attr-defined]
        when = dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(info["notAfter"]), tz=dt.UTC)
        return {"path": path, "not_after": when.isoformat(), "error": None}
    except Exception as exc:
        return {"path": path, "not_after": None, "error": f"unreadable: {exc}"}


def disk(path: str) -> dict[str, Any]:
    """Free space where the models live (the nearest existing parent before the first rollout)."""
    probe = path
    while probe and not os.path.exists(probe):
        probe = os.path.dirname(probe.rstrip("/")) or "/"
    try:
        usage = shutil.disk_usage(probe or "/")
    except OSError as exc:
        return {
            "path": path,
            "measured_at": probe,
            "total_bytes": None,
            "free_bytes": None,
            "error": str(exc),
        }
    return {
        "path": path,
        "measured_at": probe,
        "total_bytes": usage.total,
        "free_bytes": usage.free,
        "error": None,
    }


# --- everything ----------------------------------------------------------------------------------------------


def collect(
    options: dict[str, Any] | None = None, run: Run = run_command, root: str = "/", nvml: Any = ...
) -> dict[str, Any]:
    """Every reading of this host as one JSON-ready dict (deepseek_node.doctor.readings.Readings.from_dict)."""
    opts = {**DEFAULTS, **{k: v for k, v in (options or {}).items() if v not in (None, "")}}
    if nvml is ...:
        nvml = import_pynvml(opts["nvml_paths"])
    cfg = daemon_config(os.path.join(root, opts["daemon_config"].lstrip("/")))
    server = cfg.get("server") if isinstance(cfg.get("server"), dict) else {}
    model = cfg.get("model") if isinstance(cfg.get("model"), dict) else {}
    plan = cfg.get("plan") if isinstance(cfg.get("plan"), dict) else {}
    port = int(server.get("port") or opts["port"])
    cert_path = str(server.get("tls_cert") or os.path.join(opts["tls_dir"], "server.crt"))
    gpus = gpu_readings(run, nvml)
    rc, hostname, _ = run(["hostname", "-f"])
    return {
        "host": hostname.strip() if rc == 0 and hostname.strip() else os.uname().nodename,
        "collected_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "gpu_source": gpus["source"],
        "gpu_error": gpus.get("error"),
        "driver_version": gpus.get("driver_version"),
        "cuda_driver_version": gpus.get("cuda_driver_version"),
        "kernel_module_version": kernel_module_version(root),
        "library_version": library_version(root),
        "cuda_toolkit": cuda_toolkit(run, root),
        "cuda_compat": opts["cuda_compat"] or None,
        "reboot_required": os.path.exists(os.path.join(root, "run/reboot-required"))
        or os.path.exists(os.path.join(root, "var/run/reboot-required")),
        "gpus": gpus.get("gpus", []),
        "kernel_log": xid_lines(run),
        "systemd": unit_states(run, opts["units"]),
        "health": health(port, os.path.join(opts["tls_dir"], "ca.crt"), str(opts["api_key"] or "")),
        "certificate": cert_not_after(os.path.join(root, cert_path.lstrip("/"))),
        "disk": disk(os.path.join(root, opts["models_dir"].lstrip("/"))),
        "plan": {
            "device": model.get("device"),
            "expected_gpu_memory_gib": plan.get("expected_gpu_memory_gib"),
            "tp": plan.get("tp"),
            "pp": plan.get("pp"),
            "configured": bool(cfg),
        },
        "thresholds": opts["thresholds"] or {},
    }


def main() -> None:
    try:
        options = json.loads(os.environ.get("DEEPSEEK_DOCTOR_OPTIONS") or "{}")
    except ValueError as exc:
        print(json.dumps({"error": f"DEEPSEEK_DOCTOR_OPTIONS is not JSON: {exc}"}))
        sys.exit(2)
    print(json.dumps(collect(options)))


if __name__ == "__main__":
    main()
