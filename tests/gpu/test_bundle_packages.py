"""The GPU packages reach the bundle through the roles' `<role>_bundle_apt_packages` defaults, and Debian
resolves the real ones (driver and CUDA toolkit from non-free) with their whole dependency closure."""

from __future__ import annotations

import subprocess

import pytest

from deepseek_node.bundle.apt import AptSource, PrivateApt
from deepseek_node.bundle.build import role_apt_packages
from deepseek_node.gpu import GPU_ROLES
from deepseek_node.paths import cache_dir, project_root


def test_gpu_packages_come_from_the_role_defaults() -> None:
    packages = role_apt_packages(project_root())
    assert {"nvidia-kernel-dkms", "nvidia-smi", "libcuda1", "dkms", "linux-headers-amd64", "mokutil"} <= set(
        packages["nvidia_driver"]
    )
    assert packages["cuda_toolkit"] == ["nvidia-cuda-toolkit"]
    # Only NVIDIA's repositories carry these: empty by default so the default build cannot fail on them.
    assert "fabric_manager" not in packages and "nvidia_container_toolkit" not in packages


def test_skip_role_leaves_the_gpu_stack_out_of_the_bundle() -> None:
    assert {p.parent.parent.name for p in project_root().glob("roles/*/defaults/main.yml")} >= set(GPU_ROLES)
    packages = role_apt_packages(project_root(), GPU_ROLES)
    assert not set(packages) & set(GPU_ROLES)
    assert "inference_daemon" in packages


@pytest.mark.slow
def test_debian_resolves_the_real_driver_and_cuda_closure(tmp_path) -> None:
    """apt-resolution level (no download): the packages the lab replaces with stand-ins exist for real."""
    apt = PrivateApt(cache_dir() / "bundle" / "apt-root", AptSource())
    apt.update()
    packages = role_apt_packages(project_root())
    wanted = packages["nvidia_driver"] + packages["cuda_toolkit"]
    closure = apt._resolved_names(wanted)
    assert {"nvidia-kernel-dkms", "firmware-nvidia-gsp", "nvidia-cuda-toolkit", "nvidia-cuda-dev"} <= closure
    assert len(closure) > 150
    # An empty archive dir: --print-uris lists only what is not cached, and the shared cache may hold it all.
    (tmp_path / "partial").mkdir()
    uris = subprocess.run(
        ["apt-get", *apt._opts(), "-o", f"Dir::Cache::archives={tmp_path}/", "-y", "--download-only",
         "--print-uris", "install", *packages["cuda_toolkit"]],
        capture_output=True,
        text=True,
        check=True,
    ).stdout  # fmt: skip
    size = sum(int(line.split()[2]) for line in uris.splitlines() if line.startswith("'"))
    print(f"nvidia-cuda-toolkit closure: {size / 2**20:.0f} MiB")
    assert size > 500 * 2**20  # why the lab installs a stand-in for it
