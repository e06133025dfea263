"""Choices shared by the CLI, the planner, the inventory and the daemon config.

They are `StrEnum`s so that the value an operator writes in YAML (`throughput`), the value the CLI accepts
and the value rendered into JSON are one and the same string.
"""

from __future__ import annotations

from enum import StrEnum


class Precision(StrEnum):
    """Numeric format of the weights (activations and KV cache are fp32 or 16-bit, see `compute_bytes`)."""

    FP32 = "fp32"
    BF16 = "bf16"
    FP16 = "fp16"
    FP8 = "fp8"
    INT8 = "int8"
    INT4 = "int4"

    @property
    def is_quantized(self) -> bool:
        """Quantized formats store only the linear layers' weights narrower; the rest stays 16-bit."""
        return self in (Precision.FP8, Precision.INT8, Precision.INT4)


class Goal(StrEnum):
    """What the operator optimises a node for."""

    THROUGHPUT = "throughput"
    LATENCY = "latency"


class Interconnect(StrEnum):
    """How the GPUs of one server talk to each other."""

    NONE = "none"  # CPU-only: no GPUs at all
    PCIE = "pcie"
    NVLINK = "nvlink"  # bridges or a direct mesh: domains of 2 or 4 GPUs
    NVSWITCH = "nvswitch"  # every GPU of the board in one domain

    @property
    def is_nvlink(self) -> bool:
        return self in (Interconnect.NVLINK, Interconnect.NVSWITCH)


class Fit(StrEnum):
    """NIM's vocabulary for how a candidate sits on a machine."""

    COMPATIBLE = "compatible"  # the required context fits, at least one sequence
    LOW_MEMORY = "low-memory"  # the weights fit, the context had to be cut
    INCOMPATIBLE = "incompatible"  # the weights do not fit, or the hardware cannot run it

    @property
    def fits(self) -> bool:
        return self is not Fit.INCOMPATIBLE


class AttentionKind(StrEnum):
    """What the KV cache holds per token: the main driver of memory per context token."""

    MHA = "mha"  # one K and V per attention head
    GQA = "gqa"  # K and V shared by groups of heads
    MLA = "mla"  # DeepSeek's multi-head latent attention: one compressed latent per token


class Device(StrEnum):
    CPU = "cpu"
    CUDA = "cuda"


class Engine(StrEnum):
    """What runs the model behind the daemon's gateway. AUTO is a request, never a decision."""

    AUTO = "auto"  # vLLM wherever a vLLM build runs, else the builtin engine
    VLLM = "vllm"  # vLLM's OpenAI server: true tensor parallelism, paged KV cache
    BUILTIN = "builtin"  # transformers in the daemon: accelerate splits layers across GPUs

    @property
    def backend(self) -> str:
        """The serving library, as NIM-style profile names spell it (`vllm-fp8-tp8-pp1`)."""
        return "transformers" if self is Engine.BUILTIN else self.value
