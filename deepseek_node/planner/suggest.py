"""What would fit: the smallest change for a plan that does not fit, or only with a cut context."""

from __future__ import annotations

from dataclasses import replace

from deepseek_node.planner import memory
from deepseek_node.planner.candidates import DEFAULT_CONTEXT, PlanRequest
from deepseek_node.planner.enums import Fit, Precision
from deepseek_node.planner.group import MAX_GROUP_SERVERS, GroupRequest, smallest_group
from deepseek_node.planner.hardware import CATALOG as HARDWARE
from deepseek_node.planner.layout import precision_ladder
from deepseek_node.planner.memory import GIB
from deepseek_node.planner.plan import Plan, plan


def _fits_fully(req: PlanRequest) -> Plan | None:
    result = plan(req, suggest=False)
    return result if result.fit is Fit.COMPATIBLE else None


def _describe(result: Plan) -> str:
    assert result.precision is not None
    return f"{result.precision.value} tp{result.tp} pp{result.pp}"


def smallest_change(req: PlanRequest) -> str | None:
    """The least disruptive change that gives a compatible plan: a shorter context if the operator asked
    for more than the default, more RAM (CPU) or more of the same GPU, another catalog profile, else the
    number of GPUs a multi-node deployment would need."""
    if req.max_context and req.max_context > DEFAULT_CONTEXT:
        shorter = _fits_fully(replace(req, max_context=DEFAULT_CONTEXT))
        if shorter:
            return f"lower deepseek_max_context to {DEFAULT_CONTEXT} ({_describe(shorter)})"
    if req.profile.is_cpu_only:
        return _more_host_memory(req)
    same_gpu = sorted(
        (
            p
            for p in HARDWARE.values()
            if p.gpu_name == req.profile.gpu_name and p.gpu_count > req.profile.gpu_count
        ),
        key=lambda p: p.gpu_count,
    )
    for profile in same_gpu:
        bigger = _fits_fully(replace(req, profile=profile))
        if bigger:
            return f"use {profile.gpu_count} GPUs like {profile.name} ({_describe(bigger)})"
    others = sorted(
        (p for p in HARDWARE.values() if not p.is_cpu_only and p.name != req.profile.name),
        key=lambda p: (p.gpu_count * p.gpu_memory_gib, p.gpu_count),
    )
    for profile in others:
        other = _fits_fully(replace(req, profile=profile))
        if other:
            return f"use a {profile.name} server ({_describe(other)})"
    return _multi_node(req)


def _more_host_memory(req: PlanRequest) -> str:
    """RAM a CPU node needs for the required context, at the ladder's first precision and at int4."""

    def needed(precision: Precision) -> float:
        est = memory.serving_estimate(req.model, req.profile, precision, 1, 1, req.required_context, 1)
        ram = (est.total + memory.CPU_OS_RESERVE_BYTES) / (1 - memory.CPU_MARGIN)
        return -(-ram // GIB)  # whole GiB, rounded up

    first = precision_ladder(req.model, req.profile, req.serving_engine)[0].precision
    return (
        f"set deepseek_hardware_overrides: {{host_memory_gib: {needed(Precision.INT4):.0f}}} or more "
        f"(int4; {needed(first):.0f} for {first.value}) if the host has the RAM, or use a GPU profile"
    )


def _multi_node(req: PlanRequest) -> str:
    """The smallest serving group of these servers (or of the largest server with the same GPU) that holds
    the model, else a rough count of GPUs at int4."""
    same_gpu = [p for p in HARDWARE.values() if p.gpu_name == req.profile.gpu_name and p.gpu_count]
    largest = max(same_gpu, key=lambda p: p.gpu_count, default=req.profile)
    for profile in dict.fromkeys([req.profile, largest]):
        if profile.is_cpu_only:
            continue
        group = GroupRequest(req.model, profile, 2, req.goal, req.max_context, engine=req.engine)
        found = smallest_group(group)
        if found:
            return (
                f"needs {found.servers} x {profile.name} servers as a serving group ({found.layout_text()}, "
                f"{found.plan.expected_gpu_memory_gib:.1f} GiB per GPU)"
            )
    est = memory.serving_estimate(req.model, req.profile, Precision.INT4, 1, 1, req.required_context, 1)
    per_gpu = memory.usable_bytes(req.profile) - memory.GPU_CONTEXT_BYTES - memory.GPU_COMM_BYTES
    gpus = -(-(est.weights + est.kv_cache + est.activations) // max(1, per_gpu))
    return (
        f"no single catalog server holds it: about {int(gpus)} x {req.profile.gpu_name or 'GPU'} at int4; "
        f"no serving group of up to {MAX_GROUP_SERVERS} servers holds it either"
    )
