"""The GPU roles' per-family vars and decision tasks, run by Ansible on recorded systems.

One ansible-playbook run (tests/gpu/playbooks/render.yml), one host per recorded system (tests/gpu/recorded.py):
Debian 12, Ubuntu 22.04 / 24.04, Rocky 9 and RHEL 9. Facts are the recording's, the preflight module reads the
recorded /sys tree, the package queries print the recorded repository listings. It checks what each role
would install and what it refuses, without installing anything.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deepseek_node.paths import project_root
from tests.gpu.recorded import SYSTEMS

PLAYBOOK = Path(__file__).parent / "playbooks" / "render.yml"


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("recorded")
    hosts = {}
    for name, rec in SYSTEMS.items():
        rec.materialise(root)
        hosts[name] = {
            "ansible_connection": "local",
            "ansible_python_interpreter": sys.executable,
            "deepseek_gpu_stack": rec.policy,
            **rec.vars,
        }
    inventory = root / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts, "vars": {"recorded_root": str(root)}}}))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(project_root() / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    }
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(PLAYBOOK)],
        cwd=project_root(),
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(
            f"ansible-playbook did not print JSON (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    results: dict[str, dict] = {name: {"render": None, "failed": None} for name in SYSTEMS}
    for play in out["plays"]:
        for task in play["tasks"]:
            for host, res in task["hosts"].items():
                if res.get("failed") and not res.get("ignore_errors"):
                    results[host]["failed"] = f"{task['task']['name']}: {res.get('msg', '')}"
                if "render" in res:
                    results[host]["render"] = res["render"]
    return results


def ok(rendered: dict, name: str) -> dict:
    r = rendered[name]
    assert r["failed"] is None, f"{name} failed: {r['failed']}"
    assert r["render"] is not None
    return r["render"]


def test_debian12_hgx(rendered: dict) -> None:
    r = ok(rendered, "debian12-hgx-h100")
    f = r["family"]
    assert f["__nvidia_driver_kernel_package"] == "nvidia-kernel-dkms"
    assert f["__nvidia_driver_versioned"] == ["nvidia-kernel-dkms", "nvidia-smi", "libcuda1", "libnvidia-ml1"]
    assert f["__nvidia_driver_headers_package"] == "linux-headers-6.1.0-37-amd64"
    assert f["__nvidia_driver_initramfs_command"] == ["update-initramfs", "-u", "-k", "all"]
    assert f["__nvidia_driver_versions_command"] == ["apt-cache", "madison"]
    assert f["__nvidia_driver_dkms_module"] == "nvidia-current"
    assert (
        f["__cuda_toolkit_package"] == "nvidia-cuda-toolkit"
        and f["__cuda_toolkit_home"] == "/usr/lib/nvidia-cuda-toolkit"
    )
    assert r["gpu"]["install"] and r["gpu"]["fabric_manager"] and r["gpu"]["nvswitch_count"] == 4
    assert r["driver"] == {
        "version": "535.309.01",
        "package_version": "535.309.01-0+deb12u1",
        "headers_available": True,
        "secure_boot": False,
        "on_controller": True,  # connection: local -- the reboot handler would not reboot this machine
    }
    # NVSwitch detected -> Fabric Manager, at exactly the driver's version.
    assert r["fabric_manager"]["package_version"] == "535.309.01-1"
    assert r["cuda"] == {
        "package_version": "11.8.89~11.8.0-5~deb12u1",
        "release": "11.8.0",
        "driver": "535.309.01",
    }
    assert r["container_toolkit"]["package_version"] == "1.17.8-1"
    assert r["fact_file"]["nvswitch_count"] == 4 and r["fact_file"]["gpu_stack"]["fabric_manager"] is True


def test_fabric_manager_of_another_driver_version_is_refused(rendered: dict) -> None:
    r = rendered["debian12-hgx-fm-mismatch"]
    assert r["render"] is None
    assert "Check Fabric Manager is offered at exactly the driver's version" in r["failed"]
    assert "535.309.01" in r["failed"] and "535.261.03-1" in r["failed"]


def test_ubuntu2204_secure_boot_pcie(rendered: dict) -> None:
    r = ok(rendered, "ubuntu2204-l40s-secureboot")
    f = r["family"]
    assert f["__nvidia_driver_kernel_package"] == "nvidia-dkms-535-server"
    assert "nvidia-compute-utils-535-server" in f["__nvidia_driver_versioned"]
    assert f["__nvidia_driver_headers_package"] == "linux-headers-5.15.0-105-generic"
    # dkms 2.8 on 22.04 reads signing settings from framework.conf only.
    assert f["__nvidia_driver_dkms_signing_conf"] == "/etc/dkms/framework.conf"
    assert (
        f["__cuda_toolkit_package"] == "cuda-toolkit-12-2"
        and f["__cuda_toolkit_home"] == "/usr/local/cuda-12.2"
    )
    assert f["__cuda_toolkit_repository"].endswith("/repos/ubuntu2204/x86_64")
    assert r["gpu"]["secure_boot"] and not r["gpu"]["fabric_manager"]
    assert r["driver"]["secure_boot"] is True and r["driver"]["version"] == "535.161.08"
    assert r["fabric_manager"]["package_version"] is None  # no NVSwitch: not even checked
    assert r["cuda"]["release"] == "12.2.2"  # pinned "12.2": the newest 12.2 update offered


def test_ubuntu2404_refuses_cuda_the_driver_cannot_run(rendered: dict) -> None:
    r = rendered["ubuntu2404-hgx-cuda124"]
    assert r["render"] is None
    assert "Refuse a toolkit the driver cannot run" in r["failed"]
    assert "driver 535.183.01 cannot run CUDA 12.4.1" in r["failed"] and ">= 550.54.15" in r["failed"]


def test_rocky9_hgx_a100(rendered: dict) -> None:
    r = ok(rendered, "rocky9-hgx-a100")
    f = r["family"]
    assert f["__nvidia_driver_family"] == "RedHat"
    assert f["__nvidia_driver_kernel_package"] == "kmod-nvidia-latest-dkms"
    assert f["__nvidia_driver_headers_package"] == "kernel-devel-5.14.0-427.13.1.el9_4.x86_64"
    assert f["__nvidia_driver_initramfs_command"] == ["dracut", "-f", "--regenerate-all"]
    assert f["__nvidia_driver_versions_command"][:2] == ["dnf", "-q"]
    assert f["__fabric_manager_package"] == "nvidia-fabric-manager"
    assert f["__cuda_toolkit_repository"].endswith("/repos/rhel9/x86_64")
    # The inventory pins 550.54.15 although 535 is offered too; Fabric Manager follows the pin.
    assert r["driver"]["version"] == "550.54.15" and r["driver"]["package_version"] == "3:550.54.15-1.el9"
    assert r["fabric_manager"]["package_version"] == "550.54.15-1"
    assert r["gpu"]["nvswitch_count"] == 6 and r["cuda"]["release"] == "12.4.1"


def test_rhel9_vm_with_passthrough_gpu(rendered: dict) -> None:
    r = ok(rendered, "rhel9-kvm-l4")
    assert r["gpu"]["virtualization"] == "kvm" and r["gpu"]["install"] and not r["gpu"]["fabric_manager"]
    assert r["driver"]["version"] == "550.54.15" and r["cuda"]["release"] == "12.4.1"
    assert r["driver"]["headers_available"] is False  # kernel-devel not in the recorded repo listing


def test_no_gpu_skips_with_the_reason(rendered: dict) -> None:
    r = ok(rendered, "debian12-cpu-only")
    assert r["gpu"]["install"] is False and "no NVIDIA GPU detected" in r["gpu"]["reason"]
    assert r["driver"]["version"] is None and r["cuda"]["release"] is None
    assert r["fact_file"]["gpu_stack"] == {
        "policy": "auto", "install": False, "golden_image": False, "fabric_manager": False}  # fmt: skip


def test_required_gpus_fail_before_any_change(rendered: dict) -> None:
    r = rendered["debian12-cpu-required"]
    assert "Stop here when this host cannot take the GPU stack" in r["failed"]
    assert "deepseek_gpu_stack is 'required'" in r["failed"]


def test_container_and_missing_headers_fail_with_the_fix(rendered: dict) -> None:
    assert "container (docker)" in rendered["debian12-gpu-in-container"]["failed"]
    assert "--apt-package linux-headers-6.1.0-21-amd64" in rendered["debian12-no-headers"]["failed"]
