"""Candidates: each precision of the ladder with the layout the goal prefers, and how it fits.

A candidate is what NIM calls a profile (`<backend>-<precision>-tp<N>-pp<M>`), sized for the engine that
will run it (`PlanRequest.engine`, vLLM where it runs). For each precision the widest tensor parallelism
the engine, the NVLink domain and the attention heads allow is taken, then pipeline stages:
all of them for throughput (every GPU's memory holds KV cache), as few as hold the required context for
latency (every stage adds a hop to each token).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from deepseek_node.planner import memory
from deepseek_node.planner.engines import choose_engine
from deepseek_node.planner.enums import Device, Engine, Fit, Goal, Precision
from deepseek_node.planner.hardware import HardwareProfile
from deepseek_node.planner.layout import Rung, precision_ladder, preferred_pps, valid_tp
from deepseek_node.planner.memory import GIB, MemoryEstimate
from deepseek_node.planner.models import ModelSpec

DEFAULT_CONTEXT = 32768
# Below this a chat or code assistant is not useful: the plan is then "incompatible", not "low-memory".
MIN_CONTEXT = 2048
# Sequences decoded together. Latency caps the batch so each step stays short; a CPU is compute-bound long
# before memory runs out, so it gets small caps.
MAX_RUNNING = {
    (Device.CUDA, Goal.THROUGHPUT): 256,
    (Device.CUDA, Goal.LATENCY): 16,
    (Device.CPU, Goal.THROUGHPUT): 8,
    (Device.CPU, Goal.LATENCY): 2,
}


@dataclass(frozen=True)
class PlanRequest:
    model: ModelSpec
    profile: HardwareProfile
    goal: Goal = Goal.THROUGHPUT
    max_context: int | None = None  # the operator's cap, if any
    host: str | None = None
    engine: Engine = Engine.AUTO

    @property
    def device(self) -> Device:
        return memory.device_of(self.profile)

    @property
    def engine_choice(self) -> tuple[Engine, str]:
        """The engine the plan is sized for, and why (EngineUnavailableError for vllm where it cannot run)."""
        return choose_engine(
            self.engine, device=self.device, gpu_compute_capability=self.profile.compute_capability or None
        )

    @property
    def serving_engine(self) -> Engine:
        return self.engine_choice[0]

    @property
    def required_context(self) -> int:
        wanted = self.max_context or DEFAULT_CONTEXT
        return min(wanted, self.model.max_context)

    @property
    def min_context(self) -> int:
        return min(MIN_CONTEXT, self.required_context)

    @property
    def running_cap(self) -> int:
        return MAX_RUNNING[(self.device, self.goal)]


@dataclass(frozen=True)
class Candidate:
    """One way to run the model on the box (NIM calls these profiles)."""

    precision: Precision
    tp: int
    pp: int
    fit: Fit
    max_context: int
    max_running: int
    memory: MemoryEstimate | None
    why: str
    engine: Engine = Engine.VLLM

    @property
    def name(self) -> str:
        return f"{self.engine.backend}-{self.precision.value}-tp{self.tp}-pp{self.pp}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "engine": self.engine.value,
            "precision": self.precision.value,
            "tp": self.tp,
            "pp": self.pp,
            "fit": self.fit.value,
            "max_context": self.max_context,
            "max_running": self.max_running,
            "memory": self.memory.to_dict() if self.memory else None,
            "why": self.why,
        }


def gib_text(value: float) -> str:
    return f"{value / GIB:.1f} GiB"


def _unusable(rung: Rung, engine: Engine) -> Candidate:
    return Candidate(rung.precision, 1, 1, Fit.INCOMPATIBLE, 0, 0, None, rung.why, engine)


def _evaluate(req: PlanRequest, precision: Precision, tp: int, pp: int) -> Candidate:
    model, profile = req.model, req.profile
    engine = req.serving_engine
    required = req.required_context
    cap = req.running_cap
    running = memory.max_sequences(model, profile, precision, tp, pp, required, cap, engine)
    if running:
        est = memory.serving_estimate(model, profile, precision, tp, pp, required, running, engine)
        why = "holds the required context"
        return Candidate(precision, tp, pp, Fit.COMPATIBLE, required, running, est, why, engine)
    context = memory.max_context(model, profile, precision, tp, pp, required, engine=engine)
    if context >= req.min_context:
        running = max(1, memory.max_sequences(model, profile, precision, tp, pp, context, cap, engine))
        est = memory.serving_estimate(model, profile, precision, tp, pp, context, running, engine)
        why = f"context cut to {context} of {required} tokens"
        return Candidate(precision, tp, pp, Fit.LOW_MEMORY, context, running, est, why, engine)
    est = memory.serving_estimate(model, profile, precision, tp, pp, req.min_context, 1, engine)
    fixed = est.weights + est.overhead
    if fixed > est.usable:
        why = f"weights {gib_text(est.weights)} + overhead {gib_text(est.overhead)} per device > {gib_text(est.usable)} usable"
    else:
        why = (
            f"no room for {req.min_context} tokens of context after {gib_text(fixed)} of weights and overhead"
        )
    return Candidate(precision, tp, pp, Fit.INCOMPATIBLE, 0, 0, est, why, engine)


def best_layout(req: PlanRequest, precision: Precision) -> Candidate:
    """The layout the goal prefers for this precision: the widest TP the domain and heads allow, then PP
    (all stages for throughput; the fewest that hold the required context for latency)."""
    tp = max(valid_tp(req.model, req.profile, req.serving_engine))
    pps = preferred_pps(req.model, req.profile, tp, req.goal)
    for pp in pps:
        candidate = _evaluate(req, precision, tp, pp)
        if candidate.fit is Fit.COMPATIBLE:
            return candidate
    # Nothing holds the required context: the most stages give the most memory.
    return _evaluate(req, precision, tp, max(pps))


def candidates(req: PlanRequest) -> list[Candidate]:
    """Every precision of the ladder with its best layout, in ladder order."""
    engine = req.serving_engine
    return [
        best_layout(req, r.precision) if r.usable else _unusable(r, engine)
        for r in precision_ladder(req.model, req.profile, engine)
    ]


def choose(cands: list[Candidate]) -> Candidate | None:
    compatible = [c for c in cands if c.fit is Fit.COMPATIBLE]
    if compatible:
        return compatible[0]
    low = [c for c in cands if c.fit is Fit.LOW_MEMORY]
    if low:
        return max(low, key=lambda c: c.max_context)  # max() keeps the first (higher precision) on ties
    return None
