"""Whether (and how) a host gets the GPU stack, decided from its probe before anything changes.

One implementation for the preflight role (through the `deepseek_gpu_decide` filter) and `provision check`.
"""

from __future__ import annotations

import ipaddress
from enum import StrEnum
from typing import Any

# Container runtimes share the host's kernel: no driver can be loaded from inside one.
CONTAINER_VIRT = {
    "docker",
    "lxc",
    "lxc-libvirt",
    "podman",
    "systemd-nspawn",
    "openvz",
    "rkt",
    "wsl",
    "container-other",
}


class GpuStack(StrEnum):
    """deepseek_gpu_stack: what to do about the GPU stack on a host."""

    AUTO = "auto"  # install where GPUs are detected, skip (with a message) where none are
    REQUIRED = "required"  # like auto, but a host without GPUs fails preflight
    ALWAYS = "always"  # install even without GPUs: golden images prepared before the cards arrive
    NEVER = "never"  # never install it


def decide(
    probe: dict[str, Any],
    policy: str = "auto",
    bundle_packages: list[str] | None = None,
    virtualization: str | None = None,
) -> dict[str, Any]:
    """The GPU-stack decision for one host.

    `probe` is the deepseek_preflight_facts module's result; `bundle_packages` the package names in the
    offline bundle (to know whether kernel headers will be installable); `virtualization` overrides the
    probe's (e.g. from Ansible facts). Returns install/skip, the reason, blocking problems (preflight fails
    with them) and warnings, plus the stable facts later roles and `provision check` read.
    """
    mode = GpuStack(policy)
    pci = probe.get("pci") or {}
    gpus = list(pci.get("gpus") or [])
    switches = list(pci.get("nvswitches") or [])
    nv = probe.get("nvml") or {}
    driver = probe.get("driver") or {}
    headers = probe.get("kernel_headers") or {}
    sb = probe.get("secure_boot") or {}
    virt = virtualization or probe.get("virtualization") or "unknown"
    in_container = virt in CONTAINER_VIRT
    problems: list[str] = []
    warnings: list[str] = []

    nvswitch_fabric = bool(switches) or bool(nv.get("nvswitch_fabric"))
    headers_pkg = headers.get("package")
    if headers.get("installed"):
        headers_source = "installed"
    elif headers.get("candidate"):
        headers_source = "repository"
    elif headers_pkg and bundle_packages is not None and headers_pkg in bundle_packages:
        headers_source = "bundle"
    else:
        headers_source = "missing"

    golden = False
    if mode is GpuStack.NEVER:
        install, reason = False, "deepseek_gpu_stack is 'never': the GPU stack is not installed on this host"
    elif not gpus:
        if mode is GpuStack.REQUIRED:
            install = False
            reason = "no NVIDIA GPU detected"
            problems.append(
                "no NVIDIA GPU on the PCI bus (vendor 0x10de, class 0x0300/0x0302) but deepseek_gpu_stack is "
                "'required': check the cards are seated and powered and appear in lspci, or set "
                "deepseek_gpu_stack: auto to skip the GPU stack on this host"
            )
        elif mode is GpuStack.ALWAYS:
            install, golden = True, True
            reason = (
                "no NVIDIA GPU detected; deepseek_gpu_stack is 'always': installing the GPU stack anyway "
                "(golden image)"
            )
        else:
            install = False
            reason = (
                "no NVIDIA GPU detected (PCI vendor 0x10de, class 0x0300/0x0302): skipping the GPU stack "
                "(driver, Fabric Manager, CUDA, container toolkit). Set deepseek_gpu_stack: always to install "
                "it anyway (golden images) or required to fail instead"
            )
    else:
        install = True
        models = sorted({g.get("name", "?") for g in (nv.get("gpus") or gpus)})
        reason = f"{len(gpus)} NVIDIA GPU(s) detected ({', '.join(models)})"

    if install and not golden:
        if in_container:
            problems.append(
                f"this host is a container ({virt}): it shares its host's kernel and cannot load the NVIDIA "
                "driver; install the GPU stack on the host, or set deepseek_gpu_stack: never here"
            )
        if headers_source == "missing":
            problems.append(
                f"no kernel headers for the running kernel {probe.get('kernel')}: {headers_pkg or 'the headers'} "
                "is neither installed nor in the bundle, so DKMS cannot build the NVIDIA module; rebuild the "
                f"bundle with --apt-package {headers_pkg or 'linux-headers-' + str(probe.get('kernel'))}, or boot "
                "the kernel the bundle carries headers for"
            )
        if driver.get("nouveau_loaded"):
            warnings.append(
                "nouveau drives the GPUs now: it is blacklisted and a reboot loads the NVIDIA driver"
            )
    if install and golden:
        if in_container:
            warnings.append(f"container ({virt}): packages and configuration only; no module can load here")
        if headers_source == "missing":
            warnings.append(
                f"no kernel headers for {probe.get('kernel')}: DKMS builds the NVIDIA module when a kernel with "
                "headers is installed (the kernel's postinst hook does it)"
            )
    if install and sb.get("enabled"):
        warnings.append(
            "Secure Boot is on: modules are signed with a MOK key whose enrolment must be confirmed once at the "
            "console (MokManager) on the next boot"
        )

    return {
        "policy": mode.value,
        "install": install,
        "golden_image": golden,
        "reason": reason,
        "problems": problems,
        "warnings": warnings,
        "gpu_count": len(gpus),
        "gpus": [{k: g.get(k) for k in ("address", "device", "name", "numa_node")} for g in gpus],
        "nvml_gpus": [
            {k: g.get(k) for k in ("index", "name", "memory_total_mib", "compute_capability", "nvlink")}
            for g in (nv.get("gpus") or [])
        ],
        "nvswitch_count": len(switches),
        "nvswitch_fabric": nvswitch_fabric,
        "fabric_manager": install and nvswitch_fabric,
        "secure_boot": bool(sb.get("enabled")),
        "efi": bool(sb.get("efi")),
        "kernel": probe.get("kernel"),
        "kernel_headers": headers_source,
        "kernel_headers_package": headers_pkg,
        "virtualization": virt,
        "container": in_container,
        "driver_loaded": bool(driver.get("loaded")),
        "driver_loaded_version": driver.get("version"),
        "nouveau_loaded": bool(driver.get("nouveau_loaded")),
    }


def bundle_packages(manifest: dict[str, Any]) -> dict[str, str]:
    """{package: version} of the .debs in a bundle manifest (apt/NAME_VERSION_ARCH.deb, epoch as %3a)."""
    out: dict[str, str] = {}
    for rel in (manifest or {}).get("files", {}):
        if rel.startswith("apt/") and rel.endswith(".deb") and rel.count("/") == 1:
            parts = rel[4:-4].split("_")
            if len(parts) == 3:
                out[parts[0]] = parts[1].replace("%3a", ":")
    return out


def is_controller(
    connection: str | None,
    inventory_hostname: str,
    ansible_host: str | None = None,
    machine_id: str | None = None,
    controller_machine_id: str | None = None,
) -> bool:
    """True when Ansible would act on the machine it runs on: it must never be rebooted by a role.

    Names and addresses catch `localhost`; the machine id (systemd's /etc/machine-id) catches the controller
    reached over SSH by its own LAN name or address.
    """
    if (connection or "").split(".")[-1] == "local":
        return True
    mine, theirs = (str(machine_id or "").strip(), str(controller_machine_id or "").strip())
    if mine and mine == theirs:
        return True
    for name in (inventory_hostname, ansible_host or ""):
        name = str(name).strip().strip("[]")
        if name in {"localhost", "localhost.localdomain", "ip6-localhost"}:
            return True
        try:
            if ipaddress.ip_address(name).is_loopback:
                return True
        except ValueError:
            pass
    return False


def boot_time_command(virtualization: str) -> str:
    """What ansible.builtin.reboot compares across the reboot to know the host came back.

    The kernel's boot_id changes on a real reboot; a container reboots without a new kernel, so there the
    start time of its PID 1 (field 22 of /proc/1/stat) tells the new boot from the old one.
    """
    if virtualization in CONTAINER_VIRT:
        return "cut -d ' ' -f 22 /proc/1/stat"
    return "cat /proc/sys/kernel/random/boot_id"
