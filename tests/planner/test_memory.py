"""The memory model's parts: weights, KV cache, activations, overhead, and the capacity searches."""

from __future__ import annotations

import pytest

from deepseek_node.planner import HARDWARE_PROFILES, MODELS, Device, Engine, Precision, Workload, estimate
from deepseek_node.planner import memory as mem
from deepseek_node.planner.memory import GIB

H = HARDWARE_PROFILES
V3 = MODELS["deepseek-v3"]
QWEN_1_5B = MODELS["deepseek-r1-distill-qwen-1.5b"]
LLM_7B = MODELS["deepseek-llm-7b"]


def test_bf16_weights_are_two_bytes_per_parameter() -> None:
    assert mem.weight_bytes(LLM_7B, Precision.BF16) == 2 * LLM_7B.params.total
    assert mem.weight_bytes(LLM_7B, Precision.FP32) == 4 * LLM_7B.params.total


def test_quantization_shrinks_only_the_linear_layers() -> None:
    p = QWEN_1_5B.params
    int4 = mem.weight_bytes(QWEN_1_5B, Precision.INT4)
    # Embedding and head (a quarter of this small model) stay 16-bit.
    assert int4 > 2 * (p.embedding + p.lm_head) + 0.5 * p.linear
    order = [
        mem.weight_bytes(QWEN_1_5B, x)
        for x in (Precision.FP32, Precision.BF16, Precision.INT8, Precision.INT4)
    ]
    assert order == sorted(order, reverse=True)


def test_v3_fp8_checkpoint_size() -> None:
    # ~1 byte per parameter plus 16-bit embeddings/head: the ~640 GiB the FP8 checkpoint takes.
    assert mem.weight_bytes(V3, Precision.FP8) / GIB == pytest.approx(627, rel=0.02)


def test_tensor_parallel_splits_weights() -> None:
    one = mem.device_weight_bytes(V3, Precision.FP8, 1, 1)
    assert mem.device_weight_bytes(V3, Precision.FP8, 8, 1) == pytest.approx(one / 8, rel=1e-6)


def test_pipeline_stage_holds_its_layers_and_an_end() -> None:
    one = mem.device_weight_bytes(LLM_7B, Precision.BF16, 1, 1)
    # 30 layers in two stages: embedding + 15 layers, 15 layers + head.
    assert mem.device_weight_bytes(LLM_7B, Precision.BF16, 1, 2) == pytest.approx(one / 2, rel=0.01)
    # 95 layers in eight stages: the heaviest has 12 of them.
    llm_67b = MODELS["deepseek-llm-67b"]
    one = mem.device_weight_bytes(llm_67b, Precision.BF16, 1, 1)
    assert mem.device_weight_bytes(llm_67b, Precision.BF16, 1, 8) > one / 8 * 1.01


def test_mla_latent_is_replicated_across_tensor_parallel_ranks() -> None:
    assert mem.kv_bytes_per_token(V3, Precision.FP8, 8, 1) == mem.kv_bytes_per_token(V3, Precision.FP8, 1, 1)
    # vLLM stores an fp8 plan's cache in fp8 (--kv-cache-dtype fp8); the builtin engine keeps it 16-bit.
    assert mem.kv_bytes_per_token(V3, Precision.FP8, 1, 1) == 61 * 576
    assert mem.kv_bytes_per_token(V3, Precision.FP8, 1, 1, Engine.BUILTIN) == 61 * 576 * 2


def test_gqa_heads_split_across_ranks_and_replicate_past_them() -> None:
    per_rank = mem.kv_bytes_per_token
    assert per_rank(LLM_7B, Precision.BF16, 4, 1) == per_rank(LLM_7B, Precision.BF16, 1, 1) / 4
    # 2 KV heads on 4 ranks: each rank keeps one head, not half of one.
    assert per_rank(QWEN_1_5B, Precision.BF16, 4, 1) == per_rank(QWEN_1_5B, Precision.BF16, 2, 1)


def test_pipeline_splits_the_cache_by_layers() -> None:
    full = mem.kv_bytes_per_token(LLM_7B, Precision.BF16, 1, 1)
    assert mem.kv_bytes_per_token(LLM_7B, Precision.BF16, 1, 2) == full / 2


def test_fp32_plans_keep_fp32_cache() -> None:
    assert mem.kv_bytes_per_token(LLM_7B, Precision.FP32, 1, 1) == 2 * mem.kv_bytes_per_token(
        LLM_7B, Precision.BF16, 1, 1
    )


def test_scores_materialised_only_for_mla_on_cpu() -> None:
    assert mem.scores_materialized(V3, Device.CPU)
    assert not mem.scores_materialized(V3, Device.CUDA)
    assert not mem.scores_materialized(LLM_7B, Device.CPU)


def test_mla_activations_grow_with_attended_context() -> None:
    short = mem.activation_bytes(V3, Precision.FP8, 8, Workload.serving(4096, 8), Device.CUDA)
    long = mem.activation_bytes(V3, Precision.FP8, 8, Workload.serving(32768, 8), Device.CUDA)
    assert long > 4 * short


def test_memory_grows_with_context_and_sequences() -> None:
    p = H["h100-sxm-80g-x8"]
    base = mem.serving_estimate(LLM_7B, p, Precision.BF16, 8, 1, 2048, 4).total
    assert mem.serving_estimate(LLM_7B, p, Precision.BF16, 8, 1, 4096, 4).total > base
    assert mem.serving_estimate(LLM_7B, p, Precision.BF16, 8, 1, 2048, 8).total > base


def test_gpu_overhead_counts_communication_only_when_split() -> None:
    p = H["h100-sxm-80g-x8"]
    assert mem.overhead_bytes(p, 1, 1) == mem.GPU_CONTEXT_BYTES
    assert mem.overhead_bytes(p, 2, 1) == mem.GPU_CONTEXT_BYTES + mem.GPU_COMM_BYTES


def test_usable_memory_keeps_a_margin() -> None:
    assert mem.usable_bytes(H["a100-sxm-80g-x8"]) == int(80 * GIB * 0.9)
    assert mem.usable_bytes(H["cpu-only"]) == int(16 * GIB * 0.9 - GIB)


@pytest.mark.parametrize("name", ["deepseek-llm-7b", "deepseek-v3", "deepseek-r1-distill-qwen-32b"])
def test_capacity_searches_are_tight(name: str) -> None:
    m = MODELS[name]
    p = H["h200-sxm-141g-x8"]
    precision = Precision.FP8
    n = mem.max_sequences(m, p, precision, 8, 1, 8192, 10_000)
    assert n >= 1
    assert mem.serving_estimate(m, p, precision, 8, 1, 8192, n).fits
    assert not mem.serving_estimate(m, p, precision, 8, 1, 8192, n + 1).fits
    c = mem.max_context(m, p, precision, 8, 1, 10_000_000)
    assert mem.ok_exact(m, p, precision, 8, 1, c) and not mem.ok_exact(m, p, precision, 8, 1, c + 256)


def test_nothing_fits_gives_zero() -> None:
    assert mem.max_sequences(V3, H["t4-16g-x1"], Precision.INT4, 1, 1, 2048, 16) == 0
    assert mem.max_context(V3, H["t4-16g-x1"], Precision.INT4, 1, 1, 2048) == 0


def test_estimate_reports_gib() -> None:
    e = estimate(LLM_7B, H["a100-pcie-80g-x1"], Precision.BF16, 1, 1, Workload.serving(4096, 1))
    d = e.to_dict()
    assert d["total_gib"] == pytest.approx(e.total / GIB, abs=0.01) and e.fits
