"""The GPU stack's decisions in plain Python: hardware probe, go/no-go per host, CUDA/driver compatibility,
package version pins. The Ansible roles reach them through plugins/filter/deepseek_gpu.py and the
deepseek_preflight_facts module (whose module_utils file probe.py is); `provision check` and the tests call
them directly."""

from deepseek_node.gpu.cuda import (
    CompatMode,
    CudaVersionError,
    check_driver,
    minimum_driver,
    parse_cuda_release,
    pick_cuda_package,
)
from deepseek_node.gpu.decide import GpuStack, boot_time_command, bundle_packages, decide, is_controller
from deepseek_node.gpu.versions import (
    compare_versions,
    parse_repo_versions,
    parse_repo_versions_by_package,
    pick_version,
    upstream_version,
)

# The roles that make the GPU stack: what `skip_roles` leaves out of a bundle for CPU-only fleets, demos and
# lab runs (their Debian packages are ~1.7 GiB, nearly all of it the CUDA toolkit).
GPU_ROLES = ("nvidia_driver", "fabric_manager", "cuda_toolkit", "nvidia_container_toolkit")

__all__ = [
    "GPU_ROLES",
    "CompatMode",
    "CudaVersionError",
    "GpuStack",
    "boot_time_command",
    "bundle_packages",
    "check_driver",
    "compare_versions",
    "decide",
    "is_controller",
    "minimum_driver",
    "parse_cuda_release",
    "parse_repo_versions",
    "parse_repo_versions_by_package",
    "pick_cuda_package",
    "pick_version",
    "upstream_version",
]
