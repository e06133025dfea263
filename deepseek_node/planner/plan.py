"""The decision: precision, TP x PP, context and concurrency for one model on one box, with its reasons.

Order of decisions:
0. The engine (`engines.choose_engine`): vLLM where a vLLM build runs, else the builtin engine; memory is
   sized for how that engine places the model.
1. The required context: the operator's `deepseek_max_context`, else 32768 tokens (DeepSeek evaluates R1
   with 32,768-token generations), never more than the model's own limit.
2. For each precision on the ladder (native first, see `layout.precision_ladder`) the best layout for the
   goal; the first precision that holds the required context wins ("compatible"). Lowering precision is
   the planner's own knob; cutting the context is the operator's, so it only happens when no precision
   holds the required context ("low-memory", the longest context wins).
3. Concurrency: as many sequences of that context as memory holds, capped per goal.
4. Nothing fits: the plan says so and names the smallest change that would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from deepseek_node.planner import memory, reasons
from deepseek_node.planner.candidates import (
    DEFAULT_CONTEXT,
    MIN_CONTEXT,
    Candidate,
    PlanRequest,
    best_layout,
    candidates,
    choose,
)
from deepseek_node.planner.enums import Device, Engine, Fit, Goal, Precision
from deepseek_node.planner.hardware import HardwareProfile
from deepseek_node.planner.memory import GIB, MemoryEstimate
from deepseek_node.planner.models import ModelSpec

__all__ = [
    "DEFAULT_CONTEXT",
    "MIN_CONTEXT",
    "Candidate",
    "NoFitError",
    "Plan",
    "PlanRequest",
    "best_layout",
    "candidates",
    "plan",
]


class NoFitError(ValueError):
    """A plan that does not fit was asked for a daemon config."""


@dataclass(frozen=True)
class Plan:
    host: str | None
    model: ModelSpec
    profile: HardwareProfile
    goal: Goal
    fit: Fit
    precision: Precision | None
    tp: int
    pp: int
    max_context: int
    max_running: int
    memory: MemoryEstimate | None
    reasons: tuple[str, ...]
    suggestion: str | None = None
    candidates: tuple[Candidate, ...] = field(default=(), repr=False)
    engine: Engine = Engine.VLLM
    engine_reason: str = ""

    @property
    def fits(self) -> bool:
        return self.fit.fits

    @property
    def device(self) -> Device:
        return memory.device_of(self.profile)

    @property
    def expected_gpu_memory_gib(self) -> float:
        """Expected use of one GPU (host RAM on CPU-only nodes), without the safety margin."""
        return round(self.memory.total / GIB, 2) if self.memory else 0.0

    @property
    def dtype(self) -> str:
        """The torch dtype computations run in ("none" quantization aside): what vLLM's --dtype takes."""
        return self._dtype_and_quantization()[0]

    def _dtype_and_quantization(self) -> tuple[str, str]:
        p = self.precision
        if p is Precision.FP32:
            return "float32", "none"
        if p is Precision.BF16:
            return "bfloat16", "none"
        if p is Precision.FP16:
            return "float16", "none"
        compute = "bfloat16" if (self.profile.bf16 or self.profile.is_cpu_only) else "float16"
        return compute, {Precision.FP8: "fp8", Precision.INT8: "int8", Precision.INT4: "int4"}[p]  # type: ignore[index]

    def to_daemon_config(self) -> dict[str, Any]:
        """The `model`/`engine` keys the inference daemon reads, plus the decision behind them."""
        if not self.fits or self.precision is None:
            raise NoFitError(self.summary())
        dtype, quantization = self._dtype_and_quantization()
        return {
            "model": {
                "dtype": dtype,
                "quantization": quantization,
                "device": self.device.value,
                "tensor_parallel": self.tp,
                "pipeline_parallel": self.pp,
                "max_context": self.max_context,
            },
            "engine": {"max_running": self.max_running},
            "plan": {
                "profile": self.profile.name,
                "precision": self.precision.value,
                "tp": self.tp,
                "pp": self.pp,
                "fits": self.fit.value,
                "expected_gpu_memory_gib": self.expected_gpu_memory_gib,
                "reasons": list(self.reasons),
            },
        }

    def summary(self) -> str:
        who = f"host {self.host}: " if self.host else ""
        if not self.fits:
            return (
                f"{who}{self.model.name} does not fit on {self.profile.name}; {self.suggestion or ''}".rstrip(
                    "; "
                )
            )
        assert self.precision is not None
        return (
            f"{who}{self.model.name} on {self.profile.name}: {self.precision.value} tp{self.tp} pp{self.pp}, "
            f"{self.max_context} tokens x {self.max_running} sequences ({self.fit.value})"
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "host": self.host,
            "model": self.model.to_dict(),
            "profile": self.profile.to_dict(),
            "goal": self.goal.value,
            "engine": self.engine.value,
            "engine_reason": self.engine_reason,
            "fit": self.fit.value,
            "precision": self.precision.value if self.precision else None,
            "tp": self.tp,
            "pp": self.pp,
            "max_context": self.max_context,
            "max_running": self.max_running,
            "expected_gpu_memory_gib": self.expected_gpu_memory_gib,
            "memory": self.memory.to_dict() if self.memory else None,
            "reasons": list(self.reasons),
            "suggestion": self.suggestion,
            "candidates": [c.to_dict() for c in self.candidates],
        }


def plan(req: PlanRequest, suggest: bool = True) -> Plan:
    """Decide how to serve `req.model` on `req.profile`. Pure: the same request gives the same plan."""
    # What would fit asks plan() about other boxes; imported here because it builds on this module.
    from deepseek_node.planner.group import group_note
    from deepseek_node.planner.suggest import smallest_change

    engine, engine_reason = req.engine_choice
    cands = candidates(req)
    chosen = choose(cands)
    why = [*reasons.context_reasons(req), reasons.hardware_reason(req.profile), f"engine {engine_reason}"]
    if chosen is None:
        why += [f"{c.precision.value}: {c.why}" for c in cands]
        suggestion = smallest_change(req) if suggest else None
        note = group_note(req, None) if suggest else None
        if note:
            why.append(note)
        return Plan(
            req.host, req.model, req.profile, req.goal, Fit.INCOMPATIBLE, None, 0, 0, 0, 0, None,
            tuple(why), suggestion, tuple(cands), engine, engine_reason,
        )  # fmt: skip
    why += reasons.precision_reasons(req, cands, chosen)
    why.append(reasons.layout_reason(req, chosen))
    why += reasons.memory_reasons(req, chosen)
    note = group_note(req, chosen.precision) if suggest else None
    if note:
        why.append(note)
    suggestion = None
    if chosen.fit is Fit.LOW_MEMORY and suggest:
        suggestion = smallest_change(req)
        if suggestion:
            why.append(f"for the full {req.required_context} tokens: {suggestion}")
    return Plan(
        req.host, req.model, req.profile, req.goal, chosen.fit, chosen.precision, chosen.tp, chosen.pp,
        chosen.max_context, chosen.max_running, chosen.memory, tuple(why), suggestion, tuple(cands),
        engine, engine_reason,
    )  # fmt: skip
