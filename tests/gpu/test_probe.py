"""The hardware probe (the preflight role's module) on recorded /sys trees and a fake NVML."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest

from deepseek_node.gpu import probe as probe_mod
from tests.gpu.recorded import SYSTEMS


def test_gpus_and_nvswitches_by_pci_class_before_any_driver(tmp_path: Path) -> None:
    p = SYSTEMS["debian12-hgx-h100"].probe(tmp_path)
    gpus, switches = p["pci"]["gpus"], p["pci"]["nvswitches"]
    assert len(gpus) == 8 and {g["device"] for g in gpus} == {"0x2330"}
    assert gpus[0]["name"] == "H100 80GB HBM3" and gpus[0]["class"].startswith("0x0302")
    assert len(switches) == 4 and switches[0]["name"] == "NVSwitch (H100 generation)"
    assert p["driver"] == {
        "loaded": False,
        "version": None,
        "open_kernel_module": False,
        "nouveau_loaded": False,
    }
    assert p["nvml"]["available"] is False


def test_audio_functions_and_other_vendors_are_not_gpus(tmp_path: Path) -> None:
    p = SYSTEMS["ubuntu2204-l40s-secureboot"].probe(tmp_path)
    assert len(p["pci"]["gpus"]) == 4 and not p["pci"]["nvswitches"]
    assert not SYSTEMS["debian12-cpu-only"].probe(tmp_path)["pci"]["gpus"]


def test_secure_boot_from_the_efi_variable(tmp_path: Path) -> None:
    assert SYSTEMS["ubuntu2204-l40s-secureboot"].probe(tmp_path)["secure_boot"] == {
        "enabled": True, "efi": True, "source": "efivars"}  # fmt: skip
    assert SYSTEMS["debian12-hgx-h100"].probe(tmp_path)["secure_boot"]["enabled"] is False
    no_efi = SYSTEMS["rhel9-kvm-l4"].probe(tmp_path)["secure_boot"]
    assert no_efi["enabled"] is False and no_efi["efi"] is False


def test_kernel_headers_installed_or_offered(tmp_path: Path) -> None:
    p = SYSTEMS["debian12-hgx-h100"].probe(tmp_path)
    assert p["kernel_headers"]["installed"] is False and p["kernel_headers"]["candidate"] == "6.1.140-1"
    assert SYSTEMS["debian12-no-headers"].probe(tmp_path)["kernel_headers"]["candidate"] is None
    assert (
        SYSTEMS["rocky9-hgx-a100"].probe(tmp_path)["kernel_headers"]["candidate"] == "5.14.0-427.13.1.el9_4"
    )
    build = tmp_path / "debian12-hgx-h100" / "modules" / "6.1.0-37-amd64" / "build"
    build.mkdir(parents=True)
    (build / "Makefile").write_text("include ../common/Makefile\n")
    assert SYSTEMS["debian12-hgx-h100"].probe(tmp_path)["kernel_headers"]["installed"] is True


def test_loaded_driver_and_nouveau(tmp_path: Path) -> None:
    (tmp_path / "proc/driver/nvidia").mkdir(parents=True)
    (tmp_path / "proc/driver/nvidia/version").write_text(
        "NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  535.161.08  Release Build  (dvs-builder@U16)\n"
        "GCC version:  gcc version 12.2.0 (Debian 12.2.0-14)\n"
    )
    (tmp_path / "sys/module/nouveau").mkdir(parents=True)
    d = probe_mod.loaded_driver(str(tmp_path))
    assert d == {"loaded": True, "version": "535.161.08", "open_kernel_module": True, "nouveau_loaded": True}


class FakeNVMLError(Exception):
    pass


def fake_pynvml(gpus: int = 2, links: int = 4, to_switch: bool = True) -> SimpleNamespace:
    """The slice of the pynvml API the probe uses, answering like an HGX board."""

    def state(h: int, link: int) -> int:
        if link >= 18:
            raise FakeNVMLError("invalid argument")
        return 1 if link < links else 0

    return SimpleNamespace(
        NVML_NVLINK_MAX_LINKS=18,
        NVML_NVLINK_DEVICE_TYPE_GPU=0,
        NVML_NVLINK_DEVICE_TYPE_SWITCH=2,
        nvmlInit=lambda: None,
        nvmlShutdown=lambda: None,
        nvmlSystemGetDriverVersion=lambda: "535.161.08",
        nvmlSystemGetCudaDriverVersion_v2=lambda: 12020,
        nvmlDeviceGetCount=lambda: gpus,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",
        nvmlDeviceGetUUID=lambda h: f"GPU-{h:04d}",
        nvmlDeviceGetPciInfo=lambda h: SimpleNamespace(busId=f"00000000:{0x18 + h:02X}:00.0".encode()),
        nvmlDeviceGetMemoryInfo=lambda h: SimpleNamespace(total=80 * 2**30),
        nvmlDeviceGetCudaComputeCapability=lambda h: (9, 0),
        nvmlDeviceGetNvLinkState=state,
        nvmlDeviceGetNvLinkRemoteDeviceType=lambda h, link: 2 if to_switch else 0,
        nvmlDeviceGetNvLinkRemotePciInfo_v2=lambda h, link: SimpleNamespace(busId=b"00000000:99:00.0"),
    )


def test_nvml_facts_name_memory_capability_and_nvswitch_topology() -> None:
    nv = probe_mod.nvml_facts(fake_pynvml())
    assert nv["available"] and nv["driver_version"] == "535.161.08" and nv["cuda_driver_version"] == "12.2"
    g = nv["gpus"][0]
    assert g["name"] == "NVIDIA H100 80GB HBM3" and g["memory_total_mib"] == 81920
    assert g["compute_capability"] == "9.0" and g["pci_bus_id"] == "00000000:18:00.0"
    assert g["nvlink"] == {"active_links": 4, "links_to_nvswitch": 4, "gpu_peers": []}
    assert nv["nvswitch_fabric"] is True


def test_nvml_direct_nvlink_peers_without_a_switch() -> None:
    nv = probe_mod.nvml_facts(fake_pynvml(gpus=2, links=2, to_switch=False))
    assert nv["nvswitch_fabric"] is False
    assert nv["gpus"][1]["nvlink"]["gpu_peers"] == ["00000000:99:00.0"]


@pytest.mark.parametrize("error", ["NVMLError_LibraryNotFound", "NVMLError_DriverNotLoaded"])
def test_nvml_without_a_driver_is_reported_not_raised(error: str) -> None:
    broken = fake_pynvml()

    def init() -> None:
        raise type(error, (Exception,), {})("NVML Shared Library Not Found")

    broken.nvmlInit = init
    nv = probe_mod.nvml_facts(broken)
    assert nv["available"] is False and error in nv["error"]
    assert probe_mod.nvml_facts(None)["error"].startswith("pynvml")


def test_real_pynvml_without_gpu_fails_cleanly() -> None:
    """nvidia-ml-py is a project dependency; on this GPU-less machine NVML reports, it does not crash."""
    pynvml = pytest.importorskip("pynvml")
    nv = probe_mod.nvml_facts(pynvml)
    assert nv["available"] is False and nv["error"]


def test_probe_of_this_machine_runs_without_root_paths(tmp_path: Path) -> None:
    p = probe_mod.probe(models_dir=str(tmp_path / "nope" / "models"))
    assert p["disk"]["measured_at"] == str(tmp_path)
    assert p["disk"]["free_gib"] is not None
    assert set(p) >= {
        "kernel",
        "kernel_headers",
        "pci",
        "driver",
        "nvml",
        "secure_boot",
        "virtualization",
        "disk",
    }
