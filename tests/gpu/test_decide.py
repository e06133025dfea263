"""Who gets the GPU stack, decided from recorded systems before anything changes."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepseek_node.gpu import GpuStack, boot_time_command, bundle_packages, decide, is_controller
from tests.gpu.recorded import SYSTEMS


def decision(name: str, tmp_path: Path, policy: str | None = None, **kw) -> dict:
    rec = SYSTEMS[name]
    return decide(rec.probe(tmp_path), policy=policy or rec.policy, **kw)


def test_no_gpu_skips_the_stack_with_a_clear_message(tmp_path: Path) -> None:
    d = decision("debian12-cpu-only", tmp_path)
    assert d["install"] is False and not d["problems"]
    assert "no NVIDIA GPU detected" in d["reason"] and "skipping the GPU stack" in d["reason"]
    assert "deepseek_gpu_stack: always" in d["reason"]


def test_no_gpu_fails_when_the_inventory_requires_gpus(tmp_path: Path) -> None:
    d = decision("debian12-cpu-required", tmp_path)
    assert d["install"] is False
    assert d["problems"] and "deepseek_gpu_stack is 'required'" in d["problems"][0]


def test_golden_image_installs_without_gpus(tmp_path: Path) -> None:
    d = decision("debian12-cpu-only", tmp_path, policy="always")
    assert d["install"] and d["golden_image"] and not d["problems"]


def test_never_wins_over_detected_gpus(tmp_path: Path) -> None:
    d = decision("debian12-hgx-h100", tmp_path, policy=GpuStack.NEVER)
    assert d["install"] is False and "never" in d["reason"]


def test_hgx_gets_fabric_manager_because_nvswitches_are_detected(tmp_path: Path) -> None:
    d = decision("debian12-hgx-h100", tmp_path)
    assert d["install"] and not d["golden_image"] and not d["problems"]
    assert d["gpu_count"] == 8 and d["nvswitch_count"] == 4 and d["fabric_manager"] is True
    assert d["kernel_headers"] == "repository"
    assert d["reason"] == "8 NVIDIA GPU(s) detected (H100 80GB HBM3)"


def test_pcie_gpus_without_nvswitch_get_no_fabric_manager(tmp_path: Path) -> None:
    d = decision("ubuntu2204-l40s-secureboot", tmp_path)
    assert d["install"] and d["fabric_manager"] is False
    assert d["secure_boot"] is True and any("MOK" in w for w in d["warnings"])


def test_nvml_switch_links_count_as_an_nvswitch_fabric(tmp_path: Path) -> None:
    p = SYSTEMS["ubuntu2204-l40s-secureboot"].probe(tmp_path)
    p["nvml"] = {"available": True, "nvswitch_fabric": True, "gpus": []}
    assert decide(p)["fabric_manager"] is True


def test_a_container_cannot_take_the_driver(tmp_path: Path) -> None:
    d = decision("debian12-gpu-in-container", tmp_path)
    assert d["problems"] and "container (docker)" in d["problems"][0]
    assert decision("debian12-gpu-in-container", tmp_path, policy="always")["problems"]
    # Without GPUs a container can still be prepared as a golden image (what the lab does): a warning only.
    p = SYSTEMS["debian12-cpu-only"].probe(tmp_path)
    g = decide(p, policy="always", virtualization="systemd-nspawn")
    assert g["install"] and g["golden_image"] and not g["problems"]
    assert any("container (systemd-nspawn)" in w for w in g["warnings"])


def test_missing_kernel_headers_block_a_gpu_host_before_any_change(tmp_path: Path) -> None:
    d = decision("debian12-no-headers", tmp_path)
    assert d["problems"] and "linux-headers-6.1.0-21-amd64" in d["problems"][0]
    assert "--apt-package linux-headers-6.1.0-21-amd64" in d["problems"][0]
    # Headers the bundle carries will be installable once offline_repo has published it.
    ok = decision("debian12-no-headers", tmp_path, bundle_packages=["linux-headers-6.1.0-21-amd64"])
    assert not ok["problems"] and ok["kernel_headers"] == "bundle"


def test_vm_with_passthrough_gpu_is_a_gpu_host(tmp_path: Path) -> None:
    d = decision("rhel9-kvm-l4", tmp_path)
    assert d["install"] and not d["problems"] and d["virtualization"] == "kvm" and d["efi"] is False


def test_unknown_policy_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        decision("debian12-cpu-only", tmp_path, policy="sometimes")


def test_bundle_packages_from_manifest() -> None:
    manifest = {"files": {
        "apt/nvidia-kernel-dkms_535.309.01-0+deb12u1_amd64.deb": {},
        "apt/libcrypt1_1%3a4.4.33-2_amd64.deb": {},
        "apt/Packages": {},
        "wheels/torch-2.13.0-cp311-none-manylinux.whl": {},
    }}  # fmt: skip
    assert bundle_packages(manifest) == {
        "nvidia-kernel-dkms": "535.309.01-0+deb12u1",
        "libcrypt1": "1:4.4.33-2",
    }


@pytest.mark.parametrize(
    ("connection", "host", "address", "controller"),
    [
        ("local", "gpu-a01", "10.0.0.5", True),
        ("ansible.builtin.local", "gpu-a01", None, True),
        ("ssh", "localhost", None, True),
        ("ssh", "gpu-a01", "127.0.0.1", True),
        ("ssh", "gpu-a01", "::1", True),
        ("ssh", "gpu-a01", "10.0.0.5", False),
        ("ssh", "dsnt1", "10.78.1.2", False),
    ],
)
def test_is_controller(connection: str, host: str, address: str | None, controller: bool) -> None:
    assert is_controller(connection, host, address) is controller


def test_reboot_wait_uses_pid1_start_in_containers() -> None:
    assert boot_time_command("systemd-nspawn") == "cut -d ' ' -f 22 /proc/1/stat"
    assert boot_time_command("none") == "cat /proc/sys/kernel/random/boot_id"
    assert boot_time_command("kvm") == "cat /proc/sys/kernel/random/boot_id"


def test_controller_reached_over_ssh_by_its_lan_address_is_recognised_by_machine_id() -> None:
    mid = "3d1219c7c4c5404aaa1f6d2a48adfda4"
    assert is_controller("ssh", "gpu-a01", "10.0.0.5", mid, mid + "\n")
    assert not is_controller("ssh", "gpu-a01", "10.0.0.5", mid, "0" * 32)
    assert not is_controller("ssh", "gpu-a01", "10.0.0.5", "", "")  # unknown ids never match
