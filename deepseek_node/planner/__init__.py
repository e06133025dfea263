"""The serving planner: which precision, parallelism, context and concurrency a DeepSeek model gets on a box.

Pure functions over two catalogs (hardware profiles, DeepSeek models) and any local `config.json`. The CLI
(`provision plan`) and the Ansible filter (`deepseek_plan`) are thin surfaces over `plan()`; `engine_args`
turns a plan into vLLM's command line and environment (the `deepseek_vllm_args` filter's answer).
"""

from deepseek_node.planner.engines import EngineUnavailableError, choose_engine
from deepseek_node.planner.enums import AttentionKind, Device, Engine, Fit, Goal, Interconnect, Precision
from deepseek_node.planner.hardware import CATALOG as HARDWARE_PROFILES
from deepseek_node.planner.hardware import HardwareProfile, apply_overrides, resolve_profile
from deepseek_node.planner.memory import MemoryEstimate, Workload, estimate
from deepseek_node.planner.models import CATALOG as MODELS
from deepseek_node.planner.models import ModelSpec, load_model_dir, resolve_model, spec_from_config
from deepseek_node.planner.plan import (
    DEFAULT_CONTEXT,
    Candidate,
    NoFitError,
    Plan,
    PlanRequest,
    candidates,
    plan,
)
from deepseek_node.planner.problems import PlannerInputError, Problem

__all__ = [
    "DEFAULT_CONTEXT",
    "HARDWARE_PROFILES",
    "MODELS",
    "AttentionKind",
    "Candidate",
    "Device",
    "Engine",
    "EngineUnavailableError",
    "Fit",
    "Goal",
    "HardwareProfile",
    "Interconnect",
    "MemoryEstimate",
    "ModelSpec",
    "NoFitError",
    "Plan",
    "PlanRequest",
    "PlannerInputError",
    "Precision",
    "Problem",
    "Workload",
    "apply_overrides",
    "candidates",
    "choose_engine",
    "estimate",
    "load_model_dir",
    "plan",
    "resolve_model",
    "resolve_profile",
    "spec_from_config",
]
