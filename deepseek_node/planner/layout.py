"""Which precisions a box can run and how a model may be split over its GPUs. Pure functions, no memory.

Tensor parallelism (TP) splits every layer and all-reduces after each one, so it stays inside an NVLink or
NVSwitch domain and must divide the attention heads. Pipeline parallelism (PP) cuts the layer stack into
stages that only pass activations forward, so it is what crosses PCIe between domains.
"""

from __future__ import annotations

from dataclasses import dataclass

from deepseek_node.planner.enums import Engine, Goal, Precision
from deepseek_node.planner.hardware import HardwareProfile
from deepseek_node.planner.models import ModelSpec


@dataclass(frozen=True)
class Rung:
    """One step of the precision ladder, with why it is there (or why it is not usable)."""

    precision: Precision
    usable: bool
    why: str


# Why the builtin engine cannot take these precisions from an offline bundle.
_BUILTIN_LIMITS = {
    Precision.FP8: "the builtin engine's fp8 kernels come from the Hugging Face Hub, which an air-gapped "
    "node cannot reach: serve fp8 with vLLM",
    Precision.INT8: "the builtin engine quantizes with bitsandbytes, which the bundle does not carry: "
    "serve a pre-quantized checkpoint with vLLM",
    Precision.INT4: "the builtin engine quantizes with bitsandbytes, which the bundle does not carry: "
    "serve a pre-quantized checkpoint with vLLM",
}


def precision_ladder(model: ModelSpec, profile: HardwareProfile, engine: Engine = Engine.VLLM) -> list[Rung]:
    """`_ladder`, with what the engine cannot serve from an offline bundle marked unusable and why."""
    rungs = _ladder(model, profile)
    if engine is not Engine.BUILTIN:
        return rungs
    return [
        Rung(r.precision, False, _BUILTIN_LIMITS[r.precision])
        if r.usable and r.precision in _BUILTIN_LIMITS
        else r
        for r in rungs
    ]


def _ladder(model: ModelSpec, profile: HardwareProfile) -> list[Rung]:
    """Precisions in order of preference for this model on this box, unusable ones included with why.

    GPU: the model's native precision, then bf16 (fp16 where the GPU lacks bf16), fp8 where the GPU has
    native fp8, then int8 and int4 weight-only quantization. CPU: fp32 first, because it is exact for any
    checkpoint and PyTorch's CPU kernels are fastest in it, then bf16, int8, int4.
    """
    native = model.native_precision
    if profile.is_cpu_only:
        rungs = [Rung(Precision.FP32, True, "exact, and the fastest CPU path")]
        rungs.append(Rung(Precision.BF16, True, "half the memory of fp32 on the CPU"))
        if native is Precision.FP8:
            rungs[0] = Rung(Precision.FP32, True, "the fp8 checkpoint dequantized (CPUs have no fp8)")
        rungs += [
            Rung(Precision.INT8, True, "weight-only quantization (runs on the CPU)"),
            Rung(Precision.INT4, True, "weight-only quantization (runs on the CPU)"),
        ]
        return rungs
    half = Precision.BF16 if profile.bf16 else Precision.FP16
    rungs: list[Rung] = []
    if native is Precision.FP8 and not profile.fp8:
        rungs.append(
            Rung(
                Precision.FP8,
                False,
                f"native, but needs compute capability 8.9+ and {profile.gpu_name} is {profile.compute_capability}",
            )
        )
    elif native is Precision.BF16 and not profile.bf16:
        rungs.append(
            Rung(
                Precision.BF16,
                False,
                f"native, but needs compute capability 8.0+ and {profile.gpu_name} is "
                f"{profile.compute_capability}: fp16 instead",
            )
        )
    else:
        rungs.append(Rung(native, True, "the model's native precision"))
    rungs.append(Rung(half, True, f"{'dequantized ' if native is Precision.FP8 else ''}16-bit weights"))
    if profile.fp8:
        rungs.append(Rung(Precision.FP8, True, "native fp8 tensor cores, half the memory of bf16"))
    else:
        rungs.append(Rung(Precision.FP8, False, f"{profile.gpu_name} has no native fp8"))
    rungs.append(Rung(Precision.INT8, True, "weight-only quantization"))
    rungs.append(Rung(Precision.INT4, True, "weight-only quantization (some quality loss)"))
    seen: set[Precision] = set()
    unique = []
    for rung in rungs:
        if rung.precision in seen:
            continue
        seen.add(rung.precision)
        unique.append(rung)
    return unique


def valid_tp(model: ModelSpec, profile: HardwareProfile, engine: Engine = Engine.VLLM) -> list[int]:
    """TP degrees that stay in one NVLink domain, tile the box's domains and divide the attention heads.
    The builtin engine has no tensor parallelism (accelerate splits layers), so it spreads by stages only."""
    if profile.is_cpu_only or engine is Engine.BUILTIN:
        return [1]
    domain = max(1, profile.nvlink_domain)
    return [t for t in range(1, domain + 1) if domain % t == 0 and model.heads % t == 0]


def pp_range(model: ModelSpec, profile: HardwareProfile, tp: int) -> list[int]:
    """PP degrees from 1 up to the GPUs left after TP (a stage needs at least one layer)."""
    return list(range(1, min(profile.device_count // tp, model.layers) + 1))


def preferred_pps(model: ModelSpec, profile: HardwareProfile, tp: int, goal: Goal) -> list[int]:
    """PP degrees to try, best first. Throughput wants every GPU's memory for KV cache, so all stages;
    latency wants as few stages as fit, because each stage adds a hop to every token."""
    pps = pp_range(model, profile, tp)
    return list(reversed(pps)) if goal is Goal.THROUGHPUT else pps
