"""The GPU stack's decisions as Ansible filters: one implementation (deepseek_node.gpu), two surfaces."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

try:
    from deepseek_node import gpu
except ImportError:  # ansible-playbook from a checkout whose package is not installed in this interpreter
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from deepseek_node import gpu

from ansible.errors import AnsibleFilterError


def deepseek_gpu_decide(
    probe: dict[str, Any],
    policy: str = "auto",
    bundle_packages: Any = None,
    virtualization: str | None = None,
) -> dict[str, Any]:
    """Install or skip the GPU stack on this host, why, and what blocks it (see deepseek_node.gpu.decide)."""
    names = None if bundle_packages is None else list(bundle_packages)
    try:
        return gpu.decide(probe, policy=policy, bundle_packages=names, virtualization=virtualization or None)
    except ValueError as exc:
        raise AnsibleFilterError(
            f"deepseek_gpu_decide: {exc} (deepseek_gpu_stack: auto|required|always|never)"
        ) from exc


def deepseek_bundle_packages(manifest: dict[str, Any]) -> dict[str, str]:
    return gpu.bundle_packages(manifest)


def deepseek_cuda_check(cuda: str, driver: str, mode: str = "strict") -> dict[str, Any]:
    """{ok, cuda, driver, minimum, mode, message}: can this driver run this CUDA toolkit?"""
    try:
        return gpu.check_driver(str(cuda), str(driver), mode).as_dict()
    except ValueError as exc:
        return {"ok": False, "cuda": str(cuda), "driver": str(driver), "minimum": None, "mode": mode,
                "message": str(exc)}  # fmt: skip


def deepseek_cuda_release(text: str) -> str:
    try:
        return str(gpu.parse_cuda_release(str(text)))
    except ValueError as exc:
        raise AnsibleFilterError(str(exc)) from exc


def deepseek_pick_cuda(available: list[str], pin: str = "") -> str:
    """The repository version of a CUDA toolkit package matching the pinned release; "" when none does."""
    try:
        return gpu.pick_cuda_package(list(available or []), str(pin or "")) or ""
    except ValueError as exc:
        raise AnsibleFilterError(f"cuda_toolkit_version: {exc}") from exc


def deepseek_repo_versions(stdout: str, family: str = "Debian", by_package: bool = False) -> Any:
    """Versions a repository offers, from `apt-cache madison` / `dnf list --showduplicates` output."""
    if by_package:
        return gpu.parse_repo_versions_by_package(stdout or "", family)
    return gpu.parse_repo_versions(stdout or "", family)


def deepseek_pick_version(available: list[str], pin: str = "") -> str:
    """The repository version matching the pin (upstream version or branch); "" when none does."""
    return gpu.pick_version(available or [], str(pin or "")) or ""


def deepseek_upstream_version(version: str) -> str:
    return gpu.upstream_version(str(version))


def deepseek_version_compare(a: str, b: str) -> int:
    return gpu.compare_versions(str(a), str(b))


def deepseek_boot_time_command(virtualization: str) -> str:
    return gpu.boot_time_command(str(virtualization or ""))


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "deepseek_gpu_decide": deepseek_gpu_decide,
            "deepseek_bundle_packages": deepseek_bundle_packages,
            "deepseek_cuda_check": deepseek_cuda_check,
            "deepseek_cuda_release": deepseek_cuda_release,
            "deepseek_pick_cuda": deepseek_pick_cuda,
            "deepseek_repo_versions": deepseek_repo_versions,
            "deepseek_pick_version": deepseek_pick_version,
            "deepseek_upstream_version": deepseek_upstream_version,
            "deepseek_version_compare": deepseek_version_compare,
            "deepseek_is_controller": gpu.is_controller,
            "deepseek_boot_time_command": deepseek_boot_time_command,
        }
