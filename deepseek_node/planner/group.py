"""Serving groups: one model served by several identical servers with vLLM's multi-node mode. Pure functions.

DeepSeek-V3/R1 (671B, ~625 GiB at their native fp8) do not fit one 8x H100 or 8x A100 server. A group spreads
them the way vLLM scales out:

* tensor parallelism (TP) inside each server, over its NVLink/NVSwitch domain, never across servers: TP
  all-reduces after every layer, which a network cannot keep up with;
* pipeline parallelism (PP) across servers: one stage per server (more where TP cannot use all of a server's
  GPUs, e.g. PCIe servers), each stage handing the next only the hidden state of the tokens in a step.

Precision follows the single-server ladder (`layout.precision_ladder`): the first precision that holds the
required context on the group wins, so native fp8 where the GPUs have it, else 16-bit or the pre-quantized
int8/int4 checkpoint the plan names. Memory is the single-server model (`memory.serving_estimate`) for the
most loaded GPU of the heaviest stage, with the same margin.

CPU-only servers may form a group too when vLLM's CPU build serves them (one process per server, PP across
servers over gloo): the group is never suggested for them (`smallest_group`, `group_note`), but an operator
who names one gets its plan, e.g. to prove a group's rollout on machines without GPUs.

The size rule for a group of N servers (`size_problem`): at least 2 servers (one is a plain inference node),
at most one pipeline stage per layer, and balanced stages. vLLM cuts the layers into stages of floor(L/PP)
or ceil(L/PP) layers and the pipeline runs at the pace of its largest stage, so a size whose largest stage
holds more than 5% above the average (`MAX_STAGE_IMBALANCE`) is refused: for DeepSeek-V3's 61 layers, 2, 3,
4, 7 and 8 servers are usable, 5 (13 layers vs 12.2) and 6 (11 vs 10.2) are not.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

from deepseek_node.planner import engine_args, memory, reasons
from deepseek_node.planner.candidates import Candidate, PlanRequest, choose, gib_text
from deepseek_node.planner.candidates import _evaluate as evaluate_layout
from deepseek_node.planner.engines import EngineUnavailableError
from deepseek_node.planner.enums import Engine, Fit, Goal, Interconnect, Precision
from deepseek_node.planner.hardware import NETWORK_KEY, HardwareProfile
from deepseek_node.planner.layout import precision_ladder, valid_tp
from deepseek_node.planner.memory import Workload
from deepseek_node.planner.models import ModelSpec
from deepseek_node.planner.plan import Plan
from deepseek_node.planner.problems import PlannerInputError, Problem

# The largest group the planner considers when it looks for the smallest one that fits.
MAX_GROUP_SERVERS = 16
# How far the largest pipeline stage may exceed the average before a group size is refused (see the module).
MAX_STAGE_IMBALANCE = 0.05
# Each step's hand-off across one server boundary must take at most this long. Every token of the step
# waits for it, and with chunked prefill every step carries a prefill chunk: beyond ~20 ms per hop the
# network, not the GPUs, paces the group (a 50 ms-per-token stream would lose two fifths to one hop).
HOP_BUDGET_S = 0.020
# vLLM hands the next stage the hidden state and the residual stream (IntermediateTensors of its decoders).
HANDOFF_TENSORS = 2
SERVERS_KEY = "serving group size"


@dataclass(frozen=True)
class GroupRequest:
    """Serve `model` on `servers` servers of one hardware profile (the group's members are identical)."""

    model: ModelSpec
    profile: HardwareProfile
    servers: int
    goal: Goal = Goal.THROUGHPUT
    max_context: int | None = None
    name: str | None = None  # the inventory group
    hosts: tuple[str, ...] = ()  # head first
    engine: Engine = Engine.AUTO

    def single(self) -> PlanRequest:
        """What one rank of the group is sized as: the per-server profile, the group's model and goal."""
        return PlanRequest(
            self.model, self.profile, self.goal, self.max_context, self.hosts[0] if self.hosts else None,
            engine=self.engine,
        )  # fmt: skip


@dataclass(frozen=True)
class Handoff:
    """What pipeline parallelism sends across each server boundary, and what the network makes of it."""

    bytes_per_token: int
    decode_tokens: int  # tokens of a pure decode step: one per running sequence
    step_tokens: int  # the largest step: a prefill chunk plus the decoding sequences
    boundaries: int  # server boundaries a step crosses, one after the other
    network_gbps: float

    @property
    def step_bytes(self) -> int:
        return self.bytes_per_token * self.step_tokens

    @property
    def hop_seconds(self) -> float:
        return self.step_bytes * 8 / (self.network_gbps * 1e9)

    @property
    def decode_hop_seconds(self) -> float:
        return self.bytes_per_token * self.decode_tokens * 8 / (self.network_gbps * 1e9)

    @property
    def needed_gbps(self) -> float:
        """The bandwidth that keeps the largest step's hand-off within `HOP_BUDGET_S`."""
        return self.step_bytes * 8 / HOP_BUDGET_S / 1e9

    @property
    def too_slow(self) -> bool:
        return self.network_gbps < self.needed_gbps

    def to_dict(self) -> dict[str, Any]:
        return {
            "bytes_per_token": self.bytes_per_token,
            "decode_tokens": self.decode_tokens,
            "step_tokens": self.step_tokens,
            "step_mib": round(self.step_bytes / 1024**2, 2),
            "boundaries": self.boundaries,
            "network_gbps": self.network_gbps,
            "hop_ms": round(self.hop_seconds * 1000, 2),
            "decode_hop_ms": round(self.decode_hop_seconds * 1000, 3),
            "needed_gbps": round(self.needed_gbps, 1),
            "too_slow": self.too_slow,
        }


@dataclass(frozen=True)
class GroupPlan:
    """A group's plan. `plan` is what every rank runs: TP inside a server, PP over the whole group, memory
    per GPU of the heaviest stage; the vLLM command lines differ per rank only in their multi-node flags."""

    name: str | None
    servers: int
    hosts: tuple[str, ...]
    stages_per_server: int
    plan: Plan
    handoff: Handoff | None
    warnings: tuple[str, ...] = ()
    candidates: tuple[Candidate, ...] = field(default=(), repr=False)

    @property
    def fits(self) -> bool:
        return self.plan.fits

    @property
    def head(self) -> str | None:
        return self.hosts[0] if self.hosts else None

    @property
    def workers(self) -> tuple[str, ...]:
        return self.hosts[1:]

    @property
    def reasons(self) -> tuple[str, ...]:
        return self.plan.reasons

    def layout_text(self) -> str:
        p = self.plan
        return f"{p.precision.value if p.precision else '-'} tp{p.tp} pp{p.pp}"

    def summary(self) -> str:
        who = f"serving group {self.name}: " if self.name else ""
        p = self.plan
        boxes = f"{self.servers} x {p.profile.label}"
        if not p.fits:
            return f"{who}{p.model.name} does not fit on {boxes}; {p.suggestion or ''}".rstrip("; ")
        return (
            f"{who}{p.model.name} on {boxes}: {self.layout_text()}, {p.max_context} tokens x "
            f"{p.max_running} sequences ({p.fit.value})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "group": self.name,
            "servers": self.servers,
            "head": self.head,
            "workers": list(self.workers),
            "stages_per_server": self.stages_per_server,
            "summary": self.summary(),
            "interconnect": self.handoff.to_dict() if self.handoff else None,
            "warnings": list(self.warnings),
            **self.plan.to_dict(),
        }


def stage_imbalance(layers: int, stages: int) -> float:
    """How far the largest of `stages` pipeline stages exceeds the average (vLLM splits layers evenly)."""
    return math.ceil(layers / stages) / (layers / stages) - 1


def group_layout(model: ModelSpec, profile: HardwareProfile) -> tuple[int, int]:
    """(tp, stages per server): the widest TP the server's NVLink domain and the heads allow, and as many
    stages as it takes to use every GPU of the server (a group's servers serve nothing else)."""
    tp = max(valid_tp(model, profile, Engine.VLLM))
    return tp, max(1, profile.gpu_count // tp)


def size_problem(model: ModelSpec, profile: HardwareProfile, servers: int) -> str | None:
    """Why a group of `servers` servers cannot serve `model` (None: it can), by the rule in the module doc."""
    if isinstance(servers, bool) or not isinstance(servers, int) or servers < 2:
        return (
            f"a serving group needs 2 or more servers, not {servers!r} (one server is a plain inference node)"
        )
    _, inner = group_layout(model, profile)
    stages = servers * inner
    if stages > model.layers:
        return (
            f"{stages} pipeline stages for {model.name}'s {model.layers} layers leave a stage without a layer"
        )
    imbalance = stage_imbalance(model.layers, stages)
    if imbalance > MAX_STAGE_IMBALANCE:
        usable = [
            n
            for n in range(2, MAX_GROUP_SERVERS + 1)
            if n * inner <= model.layers and stage_imbalance(model.layers, n * inner) <= MAX_STAGE_IMBALANCE
        ]
        return (
            f"{model.layers} layers in {stages} pipeline stages give a largest stage of "
            f"{math.ceil(model.layers / stages)} layers, {imbalance:.0%} above the average of "
            f"{model.layers / stages:.1f}, and the pipeline runs at its pace (at most "
            f"{MAX_STAGE_IMBALANCE:.0%}); usable sizes: {', '.join(map(str, usable[:6]))}"
        )
    return None


def _check(req: GroupRequest) -> tuple[PlanRequest, str]:
    """The request one rank is sized as (on vLLM) and why vLLM; PlannerInputError for what cannot be a group."""
    single = req.single()
    problems: list[Problem] = []
    why = ""
    try:
        engine, why = single.engine_choice
    except EngineUnavailableError as exc:
        engine, why = Engine.BUILTIN, str(exc)
    if engine is not Engine.VLLM:
        problems.append(
            Problem(
                "deepseek_engine",
                f"a serving group runs vLLM's multi-node mode, not the {engine.value} engine ({why})",
                "set deepseek_engine: auto or vllm for the group",
            )
        )
    why_not = size_problem(req.model, req.profile, req.servers)
    if why_not:
        problems.append(Problem(SERVERS_KEY, why_not, "put a usable number of servers in the group"))
    if problems:
        raise PlannerInputError(problems, req.name)
    return replace(single, engine=Engine.VLLM), why


def handoff(req: GroupRequest, chosen: Candidate) -> Handoff:
    per_token = HANDOFF_TENSORS * req.model.hidden_size * memory.compute_bytes(chosen.precision)
    step = Workload.serving(chosen.max_context, chosen.max_running).step_tokens
    return Handoff(per_token, chosen.max_running, step, req.servers - 1, req.profile.network_gbps)


def _layout_reason(req: GroupRequest, c: Candidate, inner: int) -> str:
    p = req.profile
    domain = "NVSwitch" if p.interconnect is Interconnect.NVSWITCH else "NVLink"
    if c.tp > 1:
        tp = f"tp{c.tp} inside each server's {domain} domain (divides the {req.model.heads} attention heads)"
    elif p.is_cpu_only:
        tp = "tp1: one CPU engine process per server"
    else:
        tp = "tp1: no NVLink inside a server"
    tp += ", never across servers (an all-reduce per layer over the network would pace every token)"
    stages = f"pp{c.pp}: {req.servers} servers x {inner} stage{'s' if inner > 1 else ''}"
    split = f"{math.floor(req.model.layers / c.pp)}-{math.ceil(req.model.layers / c.pp)} layers each"
    used = "every server used" if p.is_cpu_only else "every GPU of every server used"
    return f"{tp}; {stages}, {split}, {used}"


def handoff_reason(h: Handoff) -> str:
    kib = h.bytes_per_token / 1024
    return (
        f"interconnect: each step hands {kib:.1f} KiB per token (hidden state + residual) across "
        f"{h.boundaries} server boundar{'y' if h.boundaries == 1 else 'ies'}; the largest step ({h.step_tokens} "
        f"tokens: a prefill chunk + {h.decode_tokens - 1} decoding sequences) is "
        f"{h.step_bytes / 1024**2:.1f} MiB, {h.hop_seconds * 1000:.1f} ms per hop at {h.network_gbps:g} Gb/s "
        f"(a decode-only step {h.decode_hop_seconds * 1000:.2f} ms); it needs {h.needed_gbps:.0f} Gb/s to stay "
        f"within {HOP_BUDGET_S * 1000:.0f} ms per hop"
    )


def handoff_warning(h: Handoff) -> str:
    return (
        f"the network between the servers ({h.network_gbps:g} Gb/s) is too slow for this plan: each step's "
        f"hand-off takes {h.hop_seconds * 1000:.0f} ms per server boundary (budget {HOP_BUDGET_S * 1000:.0f} ms), "
        f"so the network paces every token; link the servers at {math.ceil(h.needed_gbps)} Gb/s or more "
        f"(RoCE or InfiniBand), or set {NETWORK_KEY} to the real speed if it is faster"
    )


def plan_group(req: GroupRequest, suggest: bool = True) -> GroupPlan:
    """The plan for `req.servers` servers; one that does not fit names the smallest group that would
    (`suggest`). PlannerInputError when the group cannot be one (see `_check`)."""
    single, engine_reason = _check(req)
    tp, inner = group_layout(req.model, req.profile)
    pp = req.servers * inner
    ladder = precision_ladder(req.model, req.profile, Engine.VLLM)
    cands = [
        evaluate_layout(single, r.precision, tp, pp)
        if r.usable
        else Candidate(r.precision, tp, pp, Fit.INCOMPATIBLE, 0, 0, None, r.why, Engine.VLLM)
        for r in ladder
    ]
    chosen = choose(cands)
    names = f" ({req.hosts[0]} head, {', '.join(req.hosts[1:])} headless)" if len(req.hosts) > 1 else ""
    why = [
        *reasons.context_reasons(single),
        f"serving group{' ' + req.name if req.name else ''}: {req.servers} x {req.profile.label}{names}, "
        f"{req.servers * req.profile.gpu_count} GPUs"
        if req.profile.gpu_count
        else "CPUs only (vLLM's CPU build)",
        reasons.hardware_reason(req.profile),
        f"engine {engine_reason}; multi-node: vLLM's multiprocessing backend, one process per server",
    ]
    host = req.hosts[0] if req.hosts else req.name
    if chosen is None:
        why += [f"{c.precision.value}: {c.why}" for c in cands]
        more = smallest_group(req, start=req.servers + 1) if suggest else None
        suggestion = (
            f"needs {more.servers} x {req.profile.name} servers ({more.layout_text()})"
            if more
            else f"no group of up to {MAX_GROUP_SERVERS} {req.profile.name} servers holds it"
        )
        result = Plan(
            host, req.model, req.profile, req.goal, Fit.INCOMPATIBLE, None, 0, 0, 0, 0, None, tuple(why),
            suggestion, tuple(cands), Engine.VLLM, engine_reason,
        )  # fmt: skip
        return GroupPlan(req.name, req.servers, req.hosts, inner, result, None, (), tuple(cands))
    why += reasons.precision_reasons(single, cands, chosen)
    why.append(_layout_reason(req, chosen, inner))
    why += reasons.memory_reasons(single, chosen)
    h = handoff(req, chosen)
    checkpoint = engine_args.checkpoint_need(
        Plan(None, req.model, req.profile, req.goal, chosen.fit, chosen.precision, tp, pp, 0, 0, None, ())
    )
    if not checkpoint.accepts(req.model.quant_method):
        why.append(f"checkpoint: {checkpoint.text}")
    why.append(handoff_reason(h))
    warnings = (handoff_warning(h),) if h.too_slow else ()
    why += [f"WARNING: {w}" for w in warnings]
    result = Plan(
        host, req.model, req.profile, req.goal, chosen.fit, chosen.precision, chosen.tp, chosen.pp,
        chosen.max_context, chosen.max_running, chosen.memory, tuple(why), None, tuple(cands),
        Engine.VLLM, engine_reason,
    )  # fmt: skip
    return GroupPlan(req.name, req.servers, req.hosts, inner, result, h, warnings, tuple(cands))


def _rank(model: ModelSpec, profile: HardwareProfile, precision: Precision) -> int:
    order = [r.precision for r in precision_ladder(model, profile, Engine.VLLM)]
    return order.index(precision) if precision in order else len(order)


def smallest_group(
    req: GroupRequest, precision: Precision | None = None, start: int = 2, limit: int = MAX_GROUP_SERVERS
) -> GroupPlan | None:
    """The smallest usable group (from `start` servers) whose plan holds the required context, at
    `precision` or a better one of the ladder when given; None when no group of up to `limit` does."""
    if req.profile.is_cpu_only:
        return None
    for servers in range(max(2, start), limit + 1):
        if size_problem(req.model, req.profile, servers):
            continue
        try:
            gp = plan_group(replace(req, servers=servers), suggest=False)
        except PlannerInputError:
            return None
        if gp.plan.fit is not Fit.COMPATIBLE or gp.plan.precision is None:
            continue
        if precision is None or _rank(req.model, req.profile, gp.plan.precision) <= _rank(
            req.model, req.profile, precision
        ):
            return gp
    return None


def servers_for(
    req: PlanRequest, precision: Precision, limit: int = MAX_GROUP_SERVERS
) -> tuple[int, Candidate] | None:
    """The fewest servers of `req.profile` that hold the required context at exactly `precision` (one
    candidate per size: cheap enough for every single-server plan's notes)."""
    if req.profile.is_cpu_only:
        return None
    tp, inner = group_layout(req.model, req.profile)
    single = replace(req, engine=Engine.VLLM)
    for servers in range(2, limit + 1):
        if size_problem(req.model, req.profile, servers):
            continue
        c = evaluate_layout(single, precision, tp, servers * inner)
        if c.fit is Fit.COMPATIBLE:
            return servers, c
    return None


def group_note(req: PlanRequest, chosen_precision: Precision | None) -> str | None:
    """For a single-server plan that had to step down the ladder (or does not fit): the smallest group of
    these servers that serves the model at the ladder's first usable precision."""
    try:
        engine = req.serving_engine
    except EngineUnavailableError:
        return None
    if req.profile.is_cpu_only or engine is not Engine.VLLM:
        return None
    ladder = [r for r in precision_ladder(req.model, req.profile, Engine.VLLM) if r.usable]
    if not ladder or chosen_precision is ladder[0].precision:
        return None
    found = servers_for(req, ladder[0].precision)
    if not found:
        return None
    servers, c = found
    return (
        f"serving group: at {c.precision.value} ({ladder[0].why}) it needs {servers} x {req.profile.name} "
        f"servers ({c.precision.value} tp{c.tp} pp{c.pp}, {gib_text(c.memory.total if c.memory else 0)} per GPU)"
    )
