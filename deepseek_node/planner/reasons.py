"""The reasons a plan gives: what the model and the box are, and why each decision went the way it did."""

from __future__ import annotations

from deepseek_node.planner import memory
from deepseek_node.planner.candidates import Candidate, PlanRequest, gib_text
from deepseek_node.planner.enums import Engine, Goal, Interconnect
from deepseek_node.planner.hardware import HardwareProfile
from deepseek_node.planner.layout import precision_ladder


def count_text(n: int) -> str:
    for scale, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.1f}{unit}"
    return str(n)


def context_reasons(req: PlanRequest) -> list[str]:
    m = req.model
    p = m.params
    shape = f"{count_text(p.total)} parameters"
    if m.is_moe:
        shape += f" MoE ({count_text(p.active)} active, {m.routed_experts} experts)"
    kv = m.layers * m.kv_elements_per_token_per_layer * 2
    reasons = [
        f"{m.name}: {shape}, {m.attention.value.upper()} attention, KV cache {kv / 1024:.1f} KiB per token "
        f"at 16 bits, native precision {m.native_precision.value} (from {m.source})"
    ]
    if req.max_context is None:
        reasons.append(
            f"context: {req.required_context} tokens required (default; set deepseek_max_context to change), "
            f"the model allows {m.max_context}"
        )
    elif req.max_context > m.max_context:
        reasons.append(f"context: deepseek_max_context {req.max_context} exceeds the model's {m.max_context}")
    else:
        reasons.append(f"context: {req.required_context} tokens required (deepseek_max_context)")
    return reasons


def hardware_reason(p: HardwareProfile) -> str:
    usable = memory.usable_bytes(p)
    if p.is_cpu_only:
        return f"{p.label}: no GPU, {p.host_memory_gib:g} GiB host RAM ({gib_text(usable)} usable after margin and OS)"
    link = {
        Interconnect.PCIE: "PCIe only",
        Interconnect.NVLINK: f"NVLink domains of {p.nvlink_domain}",
        Interconnect.NVSWITCH: f"one NVSwitch domain of {p.nvlink_domain}",
    }.get(p.interconnect, p.interconnect.value)
    return (
        f"{p.label}: {p.gpu_count}x {p.gpu_name} ({p.gpu_memory_gib:g} GiB each, {gib_text(usable)} usable after "
        f"the {memory.GPU_MARGIN:.0%} margin), {link}, compute capability {p.compute_capability}"
    )


def precision_reasons(req: PlanRequest, cands: list[Candidate], chosen: Candidate) -> list[str]:
    ladder = {r.precision: r for r in precision_ladder(req.model, req.profile, req.serving_engine)}
    reasons = []
    for c in cands:
        if c is chosen:
            reasons.append(f"precision {c.precision.value}: {ladder[c.precision].why}; {c.why}")
            break
        reasons.append(f"not {c.precision.value}: {c.why}")
    return reasons


def layout_reason(req: PlanRequest, c: Candidate) -> str:
    p, m = req.profile, req.model
    if p.is_cpu_only:
        return "tp1 pp1: one process on the CPU"
    parts = []
    if c.engine is Engine.BUILTIN and p.gpu_count > 1:
        parts.append("tp1: the builtin engine has no tensor parallelism (accelerate splits layers)")
    elif c.tp > 1:
        parts.append(f"tp{c.tp} inside one {'NVSwitch' if p.interconnect is Interconnect.NVSWITCH else 'NVLink'} "
                     f"domain (divides the {m.heads} attention heads)")  # fmt: skip
    elif p.gpu_count > 1 and p.nvlink_domain <= 1:
        parts.append("tp1: no NVLink, and a per-layer all-reduce over PCIe would cost more than it gains")
    else:
        parts.append("tp1")
    if c.pp > 1:
        why = (
            "every GPU's memory for KV cache" if req.goal is Goal.THROUGHPUT else "the fewest stages that fit"
        )
        if p.nvlink_domain <= 1:
            where = "across PCIe"
        elif c.tp * c.pp > p.nvlink_domain:
            where = "across NVLink domains (PCIe between them)"
        else:
            where = "within the domain"
        parts.append(f"pp{c.pp} {where}: {why}")
    else:
        parts.append("pp1")
    unused = p.gpu_count - c.tp * c.pp
    if unused:
        parts.append(f"{unused} GPU(s) unused: the {req.goal.value} goal does not need them")
    return ", ".join(parts)


def memory_reasons(req: PlanRequest, c: Candidate) -> list[str]:
    est = c.memory
    assert est is not None
    per_token = memory.kv_bytes_per_token(req.model, c.precision, c.tp, c.pp, c.engine)
    where = "host RAM" if req.profile.is_cpu_only else "per GPU"
    reasons = [
        f"memory {where}: weights {gib_text(est.weights)} + KV cache {gib_text(est.kv_cache)} ({c.max_running} x "
        f"{c.max_context} tokens x {per_token / 1024:.1f} KiB) + activations {gib_text(est.activations)} + "
        f"overhead {gib_text(est.overhead)} = {gib_text(est.total)} of {gib_text(est.usable)} usable"
    ]
    if c.max_running >= req.running_cap:
        reasons.append(f"max_running {c.max_running}: the {req.goal.value} cap on {req.device.value}")
    else:
        reasons.append(
            f"max_running {c.max_running}: as many {c.max_context}-token sequences as memory holds"
        )
    if memory.scores_materialized(req.model, req.device):
        reasons.append(
            "MLA on the CPU materialises attention scores (no fused kernel): long contexts cost more"
        )
    return reasons
