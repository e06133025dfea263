"""The memory model: what one device (a GPU, or the host RAM of a CPU-only node) must hold.

    weights at the chosen precision (the most loaded pipeline stage, split by tensor parallelism)
  + KV cache per token x context x concurrent sequences
  + activations of the largest engine step
  + framework overhead (CUDA context, communication buffers, the Python runtime)
  must stay under the device's memory less a safety margin.

The two engines place a model differently, and the per-device terms follow what each one does:
* vLLM (the default where it runs) is true tensor parallelism: weights, KV heads, attention heads, expert
  widths and the vocabulary are split across the TP ranks, which all compute every step; it stores an fp8
  plan's KV cache in fp8 (`engine_args` passes `--kv-cache-dtype fp8` by the same rule, `kv_cache_bytes`).
* The builtin engine (transformers with accelerate's `device_map="auto"`) splits layers, not tensors: each
  GPU holds a share of the layers and their KV cache, one GPU computes at a time, and that GPU holds the
  whole step's activations. Its "tp x pp" GPUs are, for memory, tp*pp pipeline stages (`engine_layout`).

The activation terms describe transformers >= 5 on PyTorch, and stay an upper bound for vLLM: MLA caches the
compressed latent, but attention decompresses K and V of every attended token one layer at a time, and on
the CPU PyTorch has no fused kernel for MLA's unequal key/value head sizes, so it materialises the attention
scores. The constants below were measured with `benchmarks/planner_memory.py`; each says why it has its value.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from deepseek_node.planner.enums import AttentionKind, Device, Engine, Precision
from deepseek_node.planner.hardware import HardwareProfile
from deepseek_node.planner.models import ModelSpec

GIB = 1024**3

# Bytes per weight of a linear layer. Quantized formats carry scales: fp8 one fp32 per 128x128 block
# (DeepSeek-V3's checkpoint format), int8 one scale per output row (bitsandbytes/torchao), int4 a 16-bit
# scale and zero point per group of 128 weights (AWQ/GPTQ/nf4 are all within a percent of this).
LINEAR_BYTES: dict[Precision, float] = {
    Precision.FP32: 4.0,
    Precision.BF16: 2.0,
    Precision.FP16: 2.0,
    Precision.FP8: 1.0 + 4 / (128 * 128),
    Precision.INT8: 1.0 + 2 / 4096,
    Precision.INT4: 0.5 + 4 / 128,
}

# Embeddings, the output head, norms and routers are not quantized by any of those methods.
GPU_CONTEXT_BYTES = int(0.75 * GIB)  # CUDA context, cuBLAS workspace and allocator slack per GPU
GPU_COMM_BYTES = int(0.5 * GIB)  # NCCL buffers once a GPU talks to others (tp*pp > 1)
# Python + torch + transformers + the model code, resident before the first tensor: ~345 MiB measured with
# transformers 5.24 / torch 2.13 on x86-64; the daemon's HTTP server adds a little.
CPU_RUNTIME_BYTES = int(0.36 * GIB)

GPU_MARGIN = 0.10  # what vLLM leaves free by default (gpu_memory_utilization 0.9): fragmentation, spikes
CPU_MARGIN = 0.10
CPU_OS_RESERVE_BYTES = 1 * GIB  # the OS, sshd, exporters and page cache a CPU node keeps for itself

# Prompt tokens one engine step prefills at most (the daemon's `engine.max_batch_tokens` default); longer
# prompts are prefilled in chunks of this size.
PREFILL_CHUNK = 2048
# PyTorch's unfused attention keeps the scores, the masked scores and the softmax partly alive together:
# 2.4x the scores' size at the peak, measured for MLA's head sizes on torch 2.13.
SCORE_COPIES = 2.5
# On the CPU a step's resident cost exceeds its live tensors: operators allocate outputs before freeing
# inputs and glibc keeps freed mid-sized blocks in its heaps. Measured: about twice the live activations
# (the scores above excepted, being large enough to be mapped and unmapped) plus 32 MiB.
CPU_ACTIVATION_FACTOR = 2.0
CPU_STEP_SLACK_BYTES = 32 * 1024**2


@dataclass(frozen=True)
class Workload:
    """What the engine holds and computes at its peak."""

    context: int  # tokens one sequence may hold
    sequences: int  # sequences resident at once
    step_tokens: int  # tokens computed by the largest step
    step_sequences: int  # sequences taking part in that step
    attended: int  # tokens each of them attends to

    @classmethod
    def serving(cls, context: int, sequences: int) -> Workload:
        """Continuous batching's worst step: one sequence prefills a full chunk at the end of its context
        while every other resident sequence decodes one token."""
        chunk = min(PREFILL_CHUNK, context)
        return cls(context, sequences, chunk + sequences - 1, sequences, context)

    @classmethod
    def prefill(cls, context: int, sequences: int, chunk: int) -> Workload:
        """A batch of `sequences` prompts prefilled together in chunks of `chunk` tokens each."""
        return cls(context, sequences, chunk * sequences, sequences, context)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes on the most loaded device."""

    weights: int
    kv_cache: int
    activations: int
    overhead: int
    capacity: int
    usable: int  # capacity less the safety margin (and the OS reserve on CPU nodes)

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.activations + self.overhead

    @property
    def fits(self) -> bool:
        return self.total <= self.usable

    def to_dict(self) -> dict[str, Any]:
        def gib(v: int) -> float:
            return round(v / GIB, 2)

        return {
            "weights_gib": gib(self.weights),
            "kv_cache_gib": gib(self.kv_cache),
            "activations_gib": gib(self.activations),
            "overhead_gib": gib(self.overhead),
            "total_gib": gib(self.total),
            "usable_gib": gib(self.usable),
            "capacity_gib": gib(self.capacity),
        }


def compute_bytes(precision: Precision) -> int:
    """Activations and the KV cache: fp32 for fp32 plans, else 16-bit (weight-only quantization)."""
    return 4 if precision is Precision.FP32 else 2


def kv_cache_bytes(precision: Precision, engine: Engine = Engine.VLLM) -> int:
    """Bytes per cached KV element. vLLM keeps an fp8 plan's cache in fp8: such a plan only exists on GPUs
    with fp8 tensor cores, and halving the cache doubles the sequences it holds. Otherwise as activations."""
    if engine is Engine.VLLM and precision is Precision.FP8:
        return 1
    return compute_bytes(precision)


def engine_layout(engine: Engine, tp: int, pp: int) -> tuple[int, int]:
    """(tp, pp) as memory sees it: the builtin engine's GPUs each hold a share of the layers (accelerate's
    device_map), whatever the plan calls them, so tp x pp GPUs are tp*pp stages with no tensor split."""
    return (1, tp * pp) if engine is Engine.BUILTIN else (tp, pp)


def _unquantized_bytes(precision: Precision) -> int:
    return 4 if precision is Precision.FP32 else 2


def weight_bytes(model: ModelSpec, precision: Precision) -> int:
    """All weights of the model at `precision` (one copy, no parallelism)."""
    p = model.params
    rest = p.embedding + p.lm_head + p.other
    return math.ceil(p.linear * LINEAR_BYTES[precision] + rest * _unquantized_bytes(precision))


def _largest_layer_bytes(model: ModelSpec, precision: Precision) -> float:
    """Pipeline stages are cut by layer count, so a stage of MoE layers is the heaviest."""
    p = model.params
    attention = p.attention / model.layers
    dense_mlp = 3 * model.hidden_size * model.intermediate_size
    moe_mlp = (
        (model.routed_experts + model.shared_experts) * 3 * model.hidden_size * model.moe_intermediate_size
    )
    mlp = moe_mlp if model.is_moe else dense_mlp
    other = p.other / model.layers
    return (attention + mlp) * LINEAR_BYTES[precision] + other * _unquantized_bytes(precision)


def device_weight_bytes(
    model: ModelSpec, precision: Precision, tp: int, pp: int, engine: Engine = Engine.VLLM
) -> int:
    """Weights on the most loaded GPU: the first stage holds the embedding, the last the output head, and
    tensor parallelism splits everything (the vocabulary too) across its ranks."""
    tp, pp = engine_layout(engine, tp, pp)
    if pp == 1:
        return math.ceil(weight_bytes(model, precision) / tp)
    p = model.params
    layers = math.ceil(model.layers / pp) * _largest_layer_bytes(model, precision)
    ends = max(p.embedding, p.lm_head) * _unquantized_bytes(precision)
    return math.ceil((layers + ends) / tp)


def kv_bytes_per_token(
    model: ModelSpec, precision: Precision, tp: int, pp: int, engine: Engine = Engine.VLLM
) -> int:
    """KV cache per context token on one device."""
    tp, pp = engine_layout(engine, tp, pp)
    layers = math.ceil(model.layers / pp)
    if model.attention is AttentionKind.MLA:
        # The latent is shared by all heads, so every tensor-parallel rank keeps all of it.
        per_layer = model.kv_elements_per_token_per_layer
    else:
        # KV heads split across ranks; with fewer KV heads than ranks each rank keeps a copy of one.
        per_layer = 2 * math.ceil(model.kv_heads / tp) * model.head_dim
    return layers * per_layer * kv_cache_bytes(precision, engine)


def scores_materialized(model: ModelSpec, device: Device) -> bool:
    """PyTorch's fused CPU attention needs equal key and value head sizes; MLA's differ (192 vs 128)."""
    return device is Device.CPU and model.attention is AttentionKind.MLA


def activation_bytes(
    model: ModelSpec,
    precision: Precision,
    tp: int,
    work: Workload,
    device: Device,
    engine: Engine = Engine.VLLM,
) -> int:
    """Transient memory of the largest step, one layer at a time (earlier layers' temporaries are freed).

    The residual stream (input, residual, normalised input, block output) lives across the layer; then
    the attention block or the MLP block, whichever is larger; then the last-token logits in fp32. vLLM's
    ranks each compute their share of the heads, expert widths and vocabulary; the builtin engine computes
    a whole layer on whichever GPU holds it, so nothing is divided by tp there.
    """
    tp, _ = engine_layout(engine, tp, 1)
    cb = compute_bytes(precision)
    t = work.step_tokens
    h = model.hidden_size
    heads = max(1, model.heads // tp)
    residual = 4 * t * h * cb
    if model.attention is AttentionKind.MLA:
        qk = model.qk_nope_head_dim + model.qk_rope_head_dim
        projections = t * (heads * (qk + model.v_head_dim) + model.kv_lora_rank + model.qk_rope_head_dim)
        # Keys and values decompressed from the latent for every attended token of every sequence.
        expanded = work.step_sequences * work.attended * heads * model.mla_expanded_per_token_per_head
        attention = (projections + expanded) * cb
    else:
        kv_heads = math.ceil(model.kv_heads / tp)
        attention = t * (2 * heads + 2 * kv_heads) * model.head_dim * cb
    scores = 0
    if scores_materialized(model, device):
        scores = int(SCORE_COPIES * heads * t * work.attended * 4)
    if model.is_moe:
        inter = model.moe_intermediate_size // tp
        # Token-expert pairs are gathered, projected up (gate and up), gated and projected down.
        routed = t * model.experts_per_token * (2 * h + 3 * inter) * cb
        shared = 3 * t * model.shared_experts * inter * cb
        router = t * model.routed_experts * 4
        mlp = routed + shared + router
    else:
        mlp = 3 * t * (model.intermediate_size // tp) * cb
    logits = 2 * work.step_sequences * math.ceil(model.vocab_size / tp) * 4
    factor, slack = (CPU_ACTIVATION_FACTOR, CPU_STEP_SLACK_BYTES) if device is Device.CPU else (1.0, 0)
    block = max(attention * factor + scores, mlp * factor)
    return int((residual + logits) * factor + block) + slack


def overhead_bytes(profile: HardwareProfile, tp: int, pp: int, engine: Engine = Engine.VLLM) -> int:
    if profile.is_cpu_only:
        return CPU_RUNTIME_BYTES
    # The builtin engine is one process moving activations between GPUs itself: no NCCL buffers.
    talks = tp * pp > 1 and engine is not Engine.BUILTIN
    return GPU_CONTEXT_BYTES + (GPU_COMM_BYTES if talks else 0)


def usable_bytes(profile: HardwareProfile) -> int:
    capacity = profile.device_memory_gib * GIB
    if profile.is_cpu_only:
        return int(capacity * (1 - CPU_MARGIN) - CPU_OS_RESERVE_BYTES)
    return int(capacity * (1 - GPU_MARGIN))


def device_of(profile: HardwareProfile) -> Device:
    return Device.CPU if profile.is_cpu_only else Device.CUDA


def estimate(
    model: ModelSpec,
    profile: HardwareProfile,
    precision: Precision,
    tp: int,
    pp: int,
    work: Workload,
    engine: Engine = Engine.VLLM,
) -> MemoryEstimate:
    """Memory of the most loaded device for `work` under this layout, as `engine` places it."""
    device = device_of(profile)
    return MemoryEstimate(
        weights=device_weight_bytes(model, precision, tp, pp, engine),
        kv_cache=kv_bytes_per_token(model, precision, tp, pp, engine) * work.context * work.sequences,
        activations=activation_bytes(model, precision, tp, work, device, engine),
        overhead=overhead_bytes(profile, tp, pp, engine),
        capacity=int(profile.device_memory_gib * GIB),
        usable=usable_bytes(profile),
    )


def serving_estimate(
    model: ModelSpec,
    profile: HardwareProfile,
    precision: Precision,
    tp: int,
    pp: int,
    context: int,
    sequences: int,
    engine: Engine = Engine.VLLM,
) -> MemoryEstimate:
    return estimate(model, profile, precision, tp, pp, Workload.serving(context, sequences), engine)


def _largest(lo: int, hi: int, ok: Any) -> int:
    """Largest n in [lo, hi] with ok(n), for monotone ok; lo - 1 if none."""
    if hi < lo or not ok(lo):
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if ok(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def max_sequences(
    model: ModelSpec,
    profile: HardwareProfile,
    precision: Precision,
    tp: int,
    pp: int,
    context: int,
    cap: int,
    engine: Engine = Engine.VLLM,
) -> int:
    """How many sequences of `context` tokens fit at once (0: not even one)."""

    def ok(n: int) -> bool:
        return serving_estimate(model, profile, precision, tp, pp, context, n, engine).fits

    return max(0, _largest(1, cap, ok))


def max_context(
    model: ModelSpec,
    profile: HardwareProfile,
    precision: Precision,
    tp: int,
    pp: int,
    limit: int,
    step: int = 256,
    engine: Engine = Engine.VLLM,
) -> int:
    """The longest context one sequence can have, in multiples of `step` (0: not even `step` tokens)."""

    def ok(n: int) -> bool:
        return serving_estimate(model, profile, precision, tp, pp, n * step, 1, engine).fits

    if limit < step:
        return limit if ok_exact(model, profile, precision, tp, pp, limit, engine) else 0
    return max(0, _largest(1, limit // step, ok)) * step


def ok_exact(
    model: ModelSpec,
    profile: HardwareProfile,
    precision: Precision,
    tp: int,
    pp: int,
    context: int,
    engine: Engine = Engine.VLLM,
) -> bool:
    return serving_estimate(model, profile, precision, tp, pp, context, 1, engine).fits
