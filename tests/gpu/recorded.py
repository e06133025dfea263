"""Recorded systems: what Ansible's setup module, /sys and the package manager report on the machines the GPU
roles support. Each one is materialised (a /sys tree, listing files) so the real probe, the real roles' vars
and decision tasks run on them (tests/gpu/test_render.py) and the pure helpers are checked against them.

Values are those such machines report (device ids, class codes, kernel names, repository version strings);
trimmed to what the roles read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

H100_SXM = "0x2330"
A100_SXM4_80 = "0x20b2"
L40S = "0x26b9"
L4 = "0x27b8"
NVSWITCH_H100 = "0x22a3"
NVSWITCH_A100 = "0x1af1"
GPU_CLASS = "0x030200"  # 3D controller
VGA_CLASS = "0x030000"
NVSWITCH_CLASS = "0x068000"
AUDIO_CLASS = "0x040300"  # a GPU's HDMI audio function: NVIDIA, but not a GPU
HGX_GPU_BUSES = ("18", "2a", "3a", "5d", "9a", "ab", "ba", "db")


@dataclass
class Recorded:
    name: str
    facts: dict[str, Any]
    devices: list[tuple[str, str, str, str]] = field(default_factory=list)  # (address, vendor, device, class)
    secure_boot: bool | None = None  # None: no EFI at all
    virtualization: str = "none"
    headers_listing: str = ""  # what the headers query prints (apt-cache policy / dnf list)
    repo: dict[str, list[str]] = field(default_factory=dict)  # package -> versions offered
    policy: str = "auto"
    vars: dict[str, Any] = field(default_factory=dict)  # inventory vars of the host (pins)

    @property
    def family(self) -> str:
        return self.facts["os_family"]

    def materialise(self, root: Path) -> Path:
        """Lay out the recorded /sys tree and listing files under root/<name>; returns that directory."""
        base = root / self.name
        devices = base / "hw" / "sys" / "bus" / "pci" / "devices"
        devices.mkdir(parents=True, exist_ok=True)
        for address, vendor, device, klass in self.devices:
            d = devices / address
            d.mkdir(exist_ok=True)
            (d / "vendor").write_text(vendor + "\n")
            (d / "device").write_text(device + "\n")
            (d / "class").write_text(klass + "\n")
            (d / "numa_node").write_text("0\n")
        if self.secure_boot is not None:
            efivars = base / "hw" / "sys" / "firmware" / "efi" / "efivars"
            efivars.mkdir(parents=True, exist_ok=True)
            var = efivars / "SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c"
            var.write_bytes(b"\x06\x00\x00\x00" + (b"\x01" if self.secure_boot else b"\x00"))
        (base / "headers.txt").write_text(self.headers_listing)
        (base / "repo.txt").write_text(self.repo_listing())
        (base / "virt.txt").write_text(self.virtualization + "\n")
        (base / "facts.json").write_text(json.dumps(self.facts))
        return base

    def repo_listing(self) -> str:
        lines = []
        for pkg, versions in self.repo.items():
            for v in versions:
                if self.family == "RedHat":
                    lines.append(f"{pkg}.x86_64    {v}    cuda-rhel9-x86_64")
                else:
                    lines.append(f"{pkg} | {v} | file:/srv/deepseek-node/bundle/apt ./ Packages")
        return "\n".join(lines) + "\n"

    def probe(self, root: Path) -> dict[str, Any]:
        """The preflight module's answer on this system (the real probe over the materialised tree)."""
        from deepseek_node.gpu.probe import probe

        base = self.materialise(root)

        def run(argv: list[str]) -> tuple[int, str, str]:
            if argv[0] == "systemd-detect-virt":
                return (1 if self.virtualization == "none" else 0), self.virtualization + "\n", ""
            return 0, self.headers_listing, ""

        headers_pkg = (
            f"kernel-devel-{self.facts['kernel']}"
            if self.family == "RedHat"
            else f"linux-headers-{self.facts['kernel']}"
        )
        result = probe(
            hw_root=str(base / "hw"),
            kernel=self.facts["kernel"],
            models_dir=str(base),
            headers_package=headers_pkg,
            headers_query=["query"] if self.headers_listing else [],
            run=run,
            modules_dir=str(base / "modules"),
        )
        return result


def _facts(distribution: str, version: str, family: str, kernel: str, release: str = "") -> dict[str, Any]:
    return {
        "distribution": distribution,
        "distribution_version": version,
        "distribution_major_version": version.split(".")[0],
        "distribution_release": release,
        "os_family": family,
        "kernel": kernel,
        "architecture": "x86_64",
        "pkg_mgr": "dnf" if family == "RedHat" else "apt",
        "service_mgr": "systemd",
    }


def _hgx(gpu: str, switch: str, switches: int) -> list[tuple[str, str, str, str]]:
    devs = [(f"0000:{bus}:00.0", "0x10de", gpu, GPU_CLASS) for bus in HGX_GPU_BUSES]
    devs += [(f"0000:{5 + i:02x}:00.0", "0x10de", switch, NVSWITCH_CLASS) for i in range(switches)]
    devs.append(("0000:00:00.0", "0x8086", "0x09a2", "0x060000"))  # host bridge: not NVIDIA
    return devs


DEB_DRIVER = "535.309.01-0+deb12u1"
NCT = {p: ["1.17.8-1"] for p in
       ("nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container-tools", "libnvidia-container1")}  # fmt: skip
NCT_RPM = {p: ["1.17.8-1"] for p in NCT}

SYSTEMS: dict[str, Recorded] = {
    r.name: r
    for r in [
        Recorded(
            name="debian12-hgx-h100",
            facts=_facts("Debian", "12.11", "Debian", "6.1.0-37-amd64", "bookworm"),
            devices=_hgx(H100_SXM, NVSWITCH_H100, 4),
            secure_boot=False,
            headers_listing="linux-headers-6.1.0-37-amd64:\n  Installed: (none)\n  Candidate: 6.1.140-1\n",
            repo={
                "nvidia-kernel-dkms": [DEB_DRIVER],
                "nvidia-smi": [DEB_DRIVER],
                "libcuda1": [DEB_DRIVER],
                "libnvidia-ml1": [DEB_DRIVER],
                "linux-headers-6.1.0-37-amd64": ["6.1.140-1"],
                "nvidia-fabricmanager-535": ["535.309.01-1"],
                "nvidia-cuda-toolkit": ["11.8.89~11.8.0-5~deb12u1"],
                **NCT,
            },
        ),
        Recorded(
            name="debian12-hgx-fm-mismatch",
            facts=_facts("Debian", "12.11", "Debian", "6.1.0-37-amd64", "bookworm"),
            devices=_hgx(H100_SXM, NVSWITCH_H100, 4),
            secure_boot=False,
            headers_listing="linux-headers-6.1.0-37-amd64:\n  Installed: (none)\n  Candidate: 6.1.140-1\n",
            repo={
                "nvidia-kernel-dkms": [DEB_DRIVER],
                "nvidia-smi": [DEB_DRIVER],
                "libcuda1": [DEB_DRIVER],
                "libnvidia-ml1": [DEB_DRIVER],
                "nvidia-fabricmanager-535": ["535.261.03-1"],  # an older driver's Fabric Manager
                "nvidia-cuda-toolkit": ["11.8.89~11.8.0-5~deb12u1"],
                **NCT,
            },
        ),
        Recorded(
            name="ubuntu2204-l40s-secureboot",
            facts=_facts("Ubuntu", "22.04", "Debian", "5.15.0-105-generic", "jammy"),
            devices=[(f"0000:{b}:00.0", "0x10de", L40S, GPU_CLASS) for b in ("17", "31", "b1", "ca")]
            + [("0000:17:00.1", "0x10de", "0x22ba", AUDIO_CLASS)],
            secure_boot=True,
            headers_listing="linux-headers-5.15.0-105-generic:\n  Installed: (none)\n  Candidate: 5.15.0-105.115\n",
            repo={
                "nvidia-dkms-535-server": ["535.161.08-0ubuntu2.22.04.1"],
                "nvidia-utils-535-server": ["535.161.08-0ubuntu2.22.04.1"],
                "libnvidia-compute-535-server": ["535.161.08-0ubuntu2.22.04.1"],
                "nvidia-compute-utils-535-server": ["535.161.08-0ubuntu2.22.04.1"],
                "linux-headers-5.15.0-105-generic": ["5.15.0-105.115"],
                "cuda-toolkit-12-2": ["12.2.2-1", "12.2.1-1"],
                **NCT,
            },
            vars={"cuda_toolkit_version": "12.2"},
        ),
        Recorded(
            name="ubuntu2404-hgx-cuda124",
            facts=_facts("Ubuntu", "24.04", "Debian", "6.8.0-45-generic", "noble"),
            devices=_hgx(H100_SXM, NVSWITCH_H100, 4),
            secure_boot=False,
            headers_listing="linux-headers-6.8.0-45-generic:\n  Installed: (none)\n  Candidate: 6.8.0-45.45\n",
            repo={
                "nvidia-dkms-535-server": ["535.183.01-0ubuntu0.24.04.1"],
                "nvidia-utils-535-server": ["535.183.01-0ubuntu0.24.04.1"],
                "libnvidia-compute-535-server": ["535.183.01-0ubuntu0.24.04.1"],
                "nvidia-compute-utils-535-server": ["535.183.01-0ubuntu0.24.04.1"],
                "nvidia-fabricmanager-535": ["535.183.01-1"],
                "cuda-toolkit-12-4": ["12.4.1-1"],
                **NCT,
            },
            vars={"cuda_toolkit_version": "12.4"},
        ),
        Recorded(
            name="rocky9-hgx-a100",
            facts=_facts("Rocky", "9.4", "RedHat", "5.14.0-427.13.1.el9_4.x86_64", "Blue Onyx"),
            devices=_hgx(A100_SXM4_80, NVSWITCH_A100, 6),
            secure_boot=False,
            headers_listing="Available Packages\nkernel-devel.x86_64  5.14.0-427.13.1.el9_4  appstream\n",
            repo={
                "kmod-nvidia-latest-dkms": ["3:550.54.15-1.el9", "3:535.161.08-1.el9"],
                "nvidia-driver": ["3:550.54.15-1.el9", "3:535.161.08-1.el9"],
                "nvidia-driver-cuda": ["3:550.54.15-1.el9", "3:535.161.08-1.el9"],
                "nvidia-driver-libs": ["3:550.54.15-1.el9", "3:535.161.08-1.el9"],
                "nvidia-persistenced": ["3:550.54.15-1.el9", "3:535.161.08-1.el9"],
                "kernel-devel-5.14.0-427.13.1.el9_4.x86_64": ["5.14.0-427.13.1.el9_4"],
                "nvidia-fabric-manager": ["550.54.15-1", "535.161.08-1"],
                "cuda-toolkit-12-4": ["12.4.1-1"],
                **NCT_RPM,
            },
            vars={
                "nvidia_driver_version": "550.54.15",
                "nvidia_driver_branch": "550",
                "cuda_toolkit_version": "12.4",
            },
        ),
        Recorded(
            name="rhel9-kvm-l4",
            facts=_facts("RedHat", "9.4", "RedHat", "5.14.0-427.16.1.el9_4.x86_64", "Plow"),
            devices=[("0000:06:00.0", "0x10de", L4, GPU_CLASS)],
            secure_boot=None,
            virtualization="kvm",
            headers_listing="Available Packages\nkernel-devel.x86_64  5.14.0-427.16.1.el9_4  rhel-9-appstream\n",
            repo={
                "kmod-nvidia-latest-dkms": ["3:550.54.15-1.el9"],
                "nvidia-driver": ["3:550.54.15-1.el9"],
                "nvidia-driver-cuda": ["3:550.54.15-1.el9"],
                "nvidia-driver-libs": ["3:550.54.15-1.el9"],
                "nvidia-persistenced": ["3:550.54.15-1.el9"],
                "cuda-toolkit-12-4": ["12.4.1-1"],
                **NCT_RPM,
            },
            vars={"cuda_toolkit_version": "12.4.1"},
        ),
        Recorded(
            name="debian12-cpu-only",
            facts=_facts("Debian", "12.11", "Debian", "6.1.0-37-amd64", "bookworm"),
            devices=[("0000:00:02.0", "0x1af4", "0x1042", "0x018000")],
            secure_boot=None,
            virtualization="kvm",
        ),
        Recorded(
            name="debian12-cpu-required",
            facts=_facts("Debian", "12.11", "Debian", "6.1.0-37-amd64", "bookworm"),
            devices=[("0000:00:02.0", "0x1af4", "0x1042", "0x018000")],
            virtualization="kvm",
            policy="required",
        ),
        Recorded(
            name="debian12-gpu-in-container",
            facts=_facts("Debian", "12.11", "Debian", "6.1.0-37-amd64", "bookworm"),
            devices=[("0000:17:00.0", "0x10de", L40S, GPU_CLASS)],
            virtualization="docker",
            headers_listing="linux-headers-6.1.0-37-amd64:\n  Installed: (none)\n  Candidate: 6.1.140-1\n",
        ),
        Recorded(
            name="debian12-no-headers",
            facts=_facts("Debian", "12.11", "Debian", "6.1.0-21-amd64", "bookworm"),
            devices=[("0000:17:00.0", "0x10de", L40S, GPU_CLASS)],
            headers_listing="linux-headers-6.1.0-21-amd64:\n  Installed: (none)\n  Candidate: (none)\n",
        ),
    ]
}
