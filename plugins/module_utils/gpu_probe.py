"""Hardware facts of one host, read without changing anything (the deepseek_preflight_facts module).

Standard library only, on purpose: the module runs on targets with the system python3, before anything is
installed. The controller imports this same file as deepseek_node.gpu.probe (`provision check`, the unit
tests).

What it reads (all under `hw_root`, so tests can point it at a recorded tree):
- GPUs and NVSwitches from /sys/bus/pci/devices/*/{vendor,device,class}: works before any driver exists.
- The loaded driver from /proc/driver/nvidia/version and /sys/module/{nvidia,nouveau}.
- Secure Boot from the SecureBoot EFI variable in /sys/firmware/efi/efivars.
- Once a driver exists, NVML through pynvml (nvidia-ml-py): names, memory, compute capability, NVLink peers.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

NVIDIA_VENDOR = "0x10de"
GPU_CLASSES = ("0x0300", "0x0302")  # VGA compatible controller, 3D controller
NVSWITCH_CLASS = "0x0680"  # bridge, other: how NVSwitch ASICs enumerate
EFI_GLOBAL_GUID = "8be4df61-93ca-11d2-aa0d-00e098032b8c"
# For readable reports before a driver (and NVML) exists; NVML names win once it does.
KNOWN_DEVICES = {
    "0x1db1": "Tesla V100-SXM2-16GB",
    "0x1db5": "Tesla V100-SXM2-32GB",
    "0x20b0": "A100-SXM4-40GB",
    "0x20b2": "A100-SXM4-80GB",
    "0x20b5": "A100 80GB PCIe",
    "0x20f1": "A100-PCIE-40GB",
    "0x2236": "A10",
    "0x2324": "H800",
    "0x2330": "H100 80GB HBM3",
    "0x2331": "H100 PCIe",
    "0x2335": "H200",
    "0x233a": "H800 NVL",
    "0x2321": "H100 NVL",
    "0x26b5": "L40",
    "0x26b9": "L40S",
    "0x27b8": "L4",
    "0x1ac0": "NVSwitch (V100 generation)",
    "0x1ac1": "NVSwitch (V100 generation)",
    "0x1ac2": "NVSwitch (V100 generation)",
    "0x1af1": "NVSwitch (A100 generation)",
    "0x22a3": "NVSwitch (H100 generation)",
}
Run = Callable[[Sequence[str]], tuple[int, str, str]]


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read().strip()
    except OSError:
        return None


def _under(root: str, path: str) -> str:
    return os.path.join(root, path.lstrip("/"))


def pci_devices(hw_root: str = "/") -> list[dict[str, Any]]:
    """Every NVIDIA function on the PCI bus with its address, ids, class and bound driver."""
    base = _under(hw_root, "/sys/bus/pci/devices")
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    out = []
    for name in names:
        d = os.path.join(base, name)
        vendor = (_read(os.path.join(d, "vendor")) or "").lower()
        if vendor != NVIDIA_VENDOR:
            continue
        device = (_read(os.path.join(d, "device")) or "").lower()
        klass = (_read(os.path.join(d, "class")) or "").lower()
        driver = (
            os.path.basename(os.path.realpath(os.path.join(d, "driver")))
            if os.path.exists(os.path.join(d, "driver"))
            else None
        )
        numa = _read(os.path.join(d, "numa_node"))
        out.append(
            {
                "address": name,
                "vendor": vendor,
                "device": device,
                "class": klass,
                "name": KNOWN_DEVICES.get(device, f"NVIDIA device {device}"),
                "driver": driver,
                "numa_node": int(numa) if numa and numa.lstrip("-").isdigit() else None,
            }
        )
    return out


def split_devices(devices: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(GPUs, NVSwitches) among NVIDIA PCI functions; audio and USB functions of a GPU are neither."""
    gpus = [d for d in devices if d["class"][:6] in GPU_CLASSES]
    switches = [d for d in devices if d["class"][:6] == NVSWITCH_CLASS]
    return gpus, switches


def secure_boot(hw_root: str = "/") -> dict[str, Any]:
    """Secure Boot from the EFI SecureBoot variable (4 attribute bytes, then 1 = enabled)."""
    efi = _under(hw_root, "/sys/firmware/efi")
    if not os.path.isdir(efi):
        return {"enabled": False, "efi": False, "source": "no EFI firmware (legacy boot or container)"}
    var = os.path.join(efi, "efivars", f"SecureBoot-{EFI_GLOBAL_GUID}")
    try:
        with open(var, "rb") as fh:
            data = fh.read()
    except OSError:
        return {"enabled": False, "efi": True, "source": "EFI without a SecureBoot variable"}
    enabled = len(data) >= 5 and data[4] == 1
    return {"enabled": enabled, "efi": True, "source": "efivars"}


_KMOD = re.compile(r"Kernel Module\s+(?:for\s+\S+\s+)?(\d+(?:\.\d+)+)")


def loaded_driver(hw_root: str = "/") -> dict[str, Any]:
    """The NVIDIA kernel module currently loaded (if any) and whether nouveau holds the cards."""
    text = _read(_under(hw_root, "/proc/driver/nvidia/version")) or ""
    m = _KMOD.search(text)
    version = m.group(1) if m else _read(_under(hw_root, "/sys/module/nvidia/version"))
    return {
        "loaded": bool(version),
        "version": version or None,
        "open_kernel_module": "Open Kernel Module" in text,
        "nouveau_loaded": os.path.isdir(_under(hw_root, "/sys/module/nouveau")),
    }


def kernel_headers(kernel: str, modules_dir: str = "/lib/modules") -> dict[str, Any]:
    """Are the running kernel's headers installed (the `build` link DKMS compiles against)?"""
    build = os.path.join(modules_dir, kernel, "build")
    return {"kernel": kernel, "path": build, "installed": os.path.isfile(os.path.join(build, "Makefile"))}


def _nearest_existing(path: str) -> str:
    """`path`, or its nearest existing parent: where a directory still to be created will live."""
    while path and not os.path.exists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    return path


def free_gib(path: str) -> dict[str, Any]:
    """Free space on the filesystem that holds `path` (or its nearest existing parent)."""
    probe_path = _nearest_existing(path)
    try:
        st = os.statvfs(probe_path or "/")
    except OSError:
        return {"path": path, "measured_at": probe_path, "free_gib": None}
    return {"path": path, "measured_at": probe_path, "free_gib": round(st.f_bavail * st.f_frsize / 2**30, 1)}


def measure_space(needs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each destination's filesystem (device, free bytes) and the bytes already under it (a previous run)."""
    rows = []
    for need in needs:
        path = str(need.get("path") or "/")
        at = _nearest_existing(path)
        row: dict[str, Any] = {**need, "measured_at": at, "device": None, "free_bytes": None}
        try:
            st = os.statvfs(at)
            row["device"] = os.stat(at).st_dev
            row["free_bytes"] = st.f_bavail * st.f_frsize
        except OSError:
            pass
        present = 0
        if os.path.isdir(path):
            for dirpath, _dirs, names in os.walk(path):
                for name in names:
                    with contextlib.suppress(OSError):  # removed while we walked
                        present += os.lstat(os.path.join(dirpath, name)).st_size
        row["present_bytes"] = present
        rows.append(row)
    return rows


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def import_pynvml(extra_paths: Sequence[str] = ()) -> Any:
    """pynvml (from nvidia-ml-py) from the interpreter, or from extra site-packages globs (the daemon's venv)."""
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


def nvml_facts(nvml: Any) -> dict[str, Any]:
    """GPUs as the driver sees them: name, memory, compute capability and NVLink peers (GPU or NVSwitch)."""
    if nvml is None:
        return {"available": False, "error": "pynvml (nvidia-ml-py) is not installed", "gpus": []}
    try:
        nvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound / DriverNotLoaded without a driver
        return {"available": False, "error": f"{type(exc).__name__}: {exc}", "gpus": []}
    try:
        out: dict[str, Any] = {"available": True, "error": None, "gpus": []}
        out["driver_version"] = _text(nvml.nvmlSystemGetDriverVersion())
        try:
            cuda = int(nvml.nvmlSystemGetCudaDriverVersion_v2())
            out["cuda_driver_version"] = f"{cuda // 1000}.{(cuda % 1000) // 10}"
        except Exception:
            out["cuda_driver_version"] = None
        max_links = int(getattr(nvml, "NVML_NVLINK_MAX_LINKS", 18))
        switch_type = int(getattr(nvml, "NVML_NVLINK_DEVICE_TYPE_SWITCH", 2))
        gpu_type = int(getattr(nvml, "NVML_NVLINK_DEVICE_TYPE_GPU", 0))
        for i in range(int(nvml.nvmlDeviceGetCount())):
            h = nvml.nvmlDeviceGetHandleByIndex(i)
            major, minor = nvml.nvmlDeviceGetCudaComputeCapability(h)
            gpu: dict[str, Any] = {
                "index": i,
                "name": _text(nvml.nvmlDeviceGetName(h)),
                "uuid": _text(nvml.nvmlDeviceGetUUID(h)),
                "pci_bus_id": _text(nvml.nvmlDeviceGetPciInfo(h).busId),
                "memory_total_mib": int(nvml.nvmlDeviceGetMemoryInfo(h).total) // 2**20,
                "compute_capability": f"{major}.{minor}",
            }
            active, to_switch, peers = 0, 0, set()
            for link in range(max_links):
                try:
                    if not nvml.nvmlDeviceGetNvLinkState(h, link):
                        continue
                except Exception:
                    break  # no (more) NVLinks on this GPU
                active += 1
                try:
                    kind = int(nvml.nvmlDeviceGetNvLinkRemoteDeviceType(h, link))
                except Exception:
                    kind = -1
                if kind == switch_type:
                    to_switch += 1
                elif kind == gpu_type:
                    with contextlib.suppress(Exception):
                        peers.add(_text(nvml.nvmlDeviceGetNvLinkRemotePciInfo_v2(h, link).busId))
            gpu["nvlink"] = {
                "active_links": active,
                "links_to_nvswitch": to_switch,
                "gpu_peers": sorted(peers),
            }
            out["gpus"].append(gpu)
        out["nvswitch_fabric"] = any(g["nvlink"]["links_to_nvswitch"] for g in out["gpus"])
        return out
    except Exception as exc:
        return {"available": False, "error": f"{type(exc).__name__}: {exc}", "gpus": []}
    finally:
        with contextlib.suppress(Exception):
            nvml.nvmlShutdown()


def _run(argv: Sequence[str]) -> tuple[int, str, str]:
    try:
        p = subprocess.run(list(argv), capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, "", str(exc)
    return p.returncode, p.stdout, p.stderr


def virtualization(run: Run = _run) -> str:
    """systemd-detect-virt's answer: "none" on bare metal, else e.g. "kvm" or "systemd-nspawn"."""
    rc, out, _ = run(["systemd-detect-virt"])
    value = out.strip()
    return value or ("none" if rc == 1 else "unknown")


_CANDIDATE = re.compile(r"Candidate:\s*(\S+)")


def package_candidate(argv: Sequence[str], run: Run = _run) -> str | None:
    """The version a package manager would install (`apt-cache policy PKG`, `dnf -q list --available PKG`)."""
    if not argv:
        return None
    rc, out, _ = run(argv)
    if rc != 0:
        return None
    m = _CANDIDATE.search(out)
    if m:
        return None if m.group(1) == "(none)" else m.group(1)
    rows = [line.split() for line in out.splitlines() if line.strip() and not line.startswith("Available")]
    return rows[-1][1] if rows and len(rows[-1]) >= 2 else None


def probe(
    hw_root: str = "/",
    kernel: str | None = None,
    models_dir: str = "/var/lib/deepseek-node/models",
    nvml_paths: Sequence[str] = (),
    headers_package: str = "",
    headers_query: Sequence[str] = (),
    run: Run = _run,
    nvml: Any = None,
    modules_dir: str = "/lib/modules",
    space: Sequence[dict[str, Any]] = (),
) -> dict[str, Any]:
    kernel = kernel or os.uname().release
    gpus, switches = split_devices(pci_devices(hw_root))
    driver = loaded_driver(hw_root)
    headers = kernel_headers(kernel, modules_dir)
    headers["package"] = headers_package or None
    headers["candidate"] = package_candidate(headers_query, run) if headers_query else None
    if nvml is None and driver["loaded"]:
        nvml = import_pynvml(nvml_paths)
    nv = (
        nvml_facts(nvml)
        if driver["loaded"] or nvml is not None
        else {
            "available": False,
            "error": "no NVIDIA driver loaded",
            "gpus": [],
        }
    )
    return {
        "kernel": kernel,
        "kernel_headers": headers,
        "pci": {"gpus": gpus, "nvswitches": switches},
        "driver": driver,
        "nvml": nv,
        "secure_boot": secure_boot(hw_root),
        "virtualization": virtualization(run),
        "disk": free_gib(models_dir),
        "space": measure_space(space),
        "hw_root": hw_root,
    }
