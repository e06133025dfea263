"""The decisions that matter: precision, TP x PP, context, concurrency, and what to do when nothing fits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepseek_node.planner import (
    HARDWARE_PROFILES,
    MODELS,
    Engine,
    Fit,
    Goal,
    Interconnect,
    NoFitError,
    PlanRequest,
    Precision,
    load_model_dir,
    plan,
    resolve_profile,
)
from deepseek_node.planner import memory as mem
from deepseek_node.planner.plan import DEFAULT_CONTEXT, MIN_CONTEXT, best_layout

H = HARDWARE_PROFILES
GPU_PROFILES = [p for p in H.values() if not p.is_cpu_only]
DAEMON_MODEL_KEYS = {"dtype", "quantization", "device", "tensor_parallel", "pipeline_parallel", "max_context"}
PLAN_KEYS = {"profile", "precision", "tp", "pp", "fits", "expected_gpu_memory_gib", "reasons"}


def _plan(model: str, profile: str, **kw):
    return plan(PlanRequest(MODELS[model], H[profile], **kw))


@pytest.mark.parametrize("goal", list(Goal))
@pytest.mark.parametrize("model", list(MODELS))
def test_every_model_on_every_profile_gets_an_explained_plan(model: str, goal: Goal) -> None:
    spec = MODELS[model]
    for profile in H.values():
        p = plan(PlanRequest(spec, profile, goal))
        assert len(p.reasons) >= 3, profile.name
        json.dumps(p.to_dict())  # the --json surface
        if not p.fits:
            assert p.suggestion, profile.name
            with pytest.raises(NoFitError):
                p.to_daemon_config()
            continue
        assert p.memory is not None and p.memory.fits, profile.name
        assert p.max_running >= 1 and MIN_CONTEXT <= p.max_context <= spec.max_context
        assert p.tp * p.pp <= profile.device_count and p.pp <= spec.layers
        assert spec.heads % p.tp == 0
        if profile.is_cpu_only:
            assert (p.tp, p.pp) == (1, 1)
        else:
            assert p.tp <= profile.nvlink_domain, "TP left its NVLink domain"
        config = p.to_daemon_config()
        assert set(config) == {"model", "engine", "plan"}
        assert set(config["model"]) == DAEMON_MODEL_KEYS and set(config["engine"]) == {"max_running"}
        assert set(config["plan"]) == PLAN_KEYS


@pytest.mark.parametrize("profile", ["a100-pcie-80g-x1", "h100-pcie-80g-x1"])
@pytest.mark.parametrize(
    "model",
    [
        "deepseek-coder-v2-lite",
        "deepseek-llm-7b",
        "deepseek-r1-distill-qwen-1.5b",
        "deepseek-r1-distill-qwen-7b",
        "deepseek-r1-distill-qwen-14b",
        "deepseek-r1-distill-qwen-32b",
        "deepseek-r1-distill-llama-8b",
    ],
)
def test_models_that_fit_one_80gb_gpu_in_bf16(model: str, profile: str) -> None:
    p = _plan(model, profile, max_context=8192)
    assert (p.fit, p.precision, p.tp, p.pp) == (Fit.COMPATIBLE, Precision.BF16, 1, 1)


@pytest.mark.parametrize("model", ["deepseek-llm-67b", "deepseek-r1-distill-llama-70b"])
def test_70b_class_on_one_80gb_gpu_is_fp8_on_hopper_int8_on_ampere(model: str) -> None:
    assert _plan(model, "h100-pcie-80g-x1", max_context=4096).precision is Precision.FP8
    assert _plan(model, "a100-pcie-80g-x1", max_context=4096).precision is Precision.INT8


def test_required_context_can_push_precision_down() -> None:
    """32k tokens of a 70B's KV cache do not fit beside fp8 weights on one H100: int4 does, and says why."""
    p = _plan("deepseek-r1-distill-llama-70b", "h100-pcie-80g-x1")
    assert (p.precision, p.max_context) == (Precision.INT4, DEFAULT_CONTEXT)
    assert any(r.startswith("not fp8:") for r in p.reasons)


@pytest.mark.parametrize("model", ["deepseek-v3", "deepseek-r1", "deepseek-v2", "deepseek-coder-v2"])
def test_big_moe_models_never_fit_one_80gb_gpu(model: str) -> None:
    for profile in GPU_PROFILES:
        if profile.gpu_count == 1 and profile.gpu_memory_gib <= 80:
            assert not plan(PlanRequest(MODELS[model], profile)).fits, profile.name


def test_v2_fits_one_h200_only_at_int4() -> None:
    p = _plan("deepseek-v2", "h200-nvl-141g-x1")
    assert p.precision is Precision.INT4
    assert not any(plan(PlanRequest(MODELS["deepseek-v3"], H[n])).fits for n in ("h200-nvl-141g-x1",))


@pytest.mark.parametrize("model", ["deepseek-v3", "deepseek-r1"])
def test_v3_r1_need_a_multi_gpu_node_even_at_fp8(model: str) -> None:
    spec = MODELS[model]
    for profile in GPU_PROFILES:
        fp8 = best_layout(PlanRequest(spec, profile), Precision.FP8)
        if profile.name in ("h200-sxm-141g-x8", "h200-nvl-141g-x8"):
            assert fp8.fit is Fit.COMPATIBLE, profile.name
        else:  # every 80 GB node, every 4-GPU node, every single GPU
            assert fp8.fit is Fit.INCOMPATIBLE, profile.name


@pytest.mark.parametrize("model", ["deepseek-v3", "deepseek-r1"])
def test_v3_r1_at_native_fp8_on_h200_node(model: str) -> None:
    p = _plan(model, "h200-sxm-141g-x8")
    assert (p.fit, p.precision, p.tp, p.pp) == (Fit.COMPATIBLE, Precision.FP8, 8, 1)
    assert p.to_daemon_config()["model"] | {"max_context": 0} == {
        "dtype": "bfloat16",
        "quantization": "fp8",
        "device": "cuda",
        "tensor_parallel": 8,
        "pipeline_parallel": 1,
        "max_context": 0,
    }
    assert "the model's native precision" in " ".join(p.reasons)


def test_v3_on_8x_h100_falls_to_int4_and_says_why_not_fp8() -> None:
    p = _plan("deepseek-v3", "h100-sxm-80g-x8")
    assert (p.precision, p.tp) == (Precision.INT4, 8)
    assert any(r.startswith("not fp8: weights") for r in p.reasons)


def test_v3_on_a100_never_uses_fp8() -> None:
    p = _plan("deepseek-v3", "a100-sxm-80g-x8")
    assert p.precision is Precision.INT4
    assert any("needs compute capability 8.9+" in r for r in p.reasons)


def test_fp8_is_only_chosen_on_native_fp8_gpus() -> None:
    for spec in MODELS.values():
        for profile in GPU_PROFILES:
            p = plan(PlanRequest(spec, profile), suggest=False)
            if p.precision is Precision.FP8:
                assert profile.fp8, (spec.name, profile.name)


def test_t4_uses_fp16_for_bf16_models() -> None:
    p = _plan("deepseek-r1-distill-qwen-1.5b", "t4-16g-x1")
    assert p.precision is Precision.FP16
    assert p.to_daemon_config()["model"]["dtype"] == "float16"


def test_quantized_compute_dtype_follows_the_gpu() -> None:
    t4 = _plan("deepseek-r1-distill-qwen-7b", "t4-16g-x1", max_context=4096)
    assert t4.precision is Precision.INT8
    assert (t4.to_daemon_config()["model"]["dtype"], t4.to_daemon_config()["model"]["quantization"]) == (
        "float16",
        "int8",
    )


@pytest.mark.parametrize(
    "profile", ["l40s-48g-x8", "l4-24g-x8", "t4-16g-x8", "h100-pcie-80g-x8", "a100-pcie-40g-x8", "a10-24g-x4"]
)
def test_pcie_boxes_pipeline_instead_of_tensor_parallel(profile: str) -> None:
    for model in ("deepseek-llm-67b", "deepseek-r1-distill-qwen-32b", "deepseek-coder-v2"):
        p = _plan(model, profile)
        if p.fits:
            assert p.tp == 1, (model, profile)
    p = _plan("deepseek-llm-67b", "a100-pcie-40g-x8")
    assert "no NVLink" in " ".join(p.reasons)


def test_tp_stays_inside_nvlink_islands() -> None:
    p = _plan("deepseek-r1", "h200-nvl-141g-x8")
    assert (p.tp, p.pp) == (4, 2)
    assert "across NVLink domains" in " ".join(p.reasons)
    bridged = resolve_profile("a100-pcie-80g-x4", {"interconnect": "nvlink", "nvlink_domain": 2})
    assert plan(PlanRequest(MODELS["deepseek-r1-distill-qwen-32b"], bridged)).tp == 2


def test_tp_divides_the_attention_heads() -> None:
    # 12 heads: 8-way TP is impossible on an 8-GPU NVSwitch board, 4-way is the widest.
    p = _plan("deepseek-r1-distill-qwen-1.5b", "h100-sxm-80g-x8")
    assert p.tp == 4 and 12 % p.tp == 0


def test_nvswitch_board_uses_full_tp() -> None:
    assert _plan("deepseek-r1-distill-llama-70b", "h100-sxm-80g-x8").tp == 8


def test_throughput_uses_every_gpu_latency_the_fewest_stages() -> None:
    throughput = _plan("deepseek-r1-distill-qwen-7b", "l40s-48g-x4", goal=Goal.THROUGHPUT)
    latency = _plan("deepseek-r1-distill-qwen-7b", "l40s-48g-x4", goal=Goal.LATENCY)
    assert (throughput.tp, throughput.pp) == (1, 4)
    assert (latency.tp, latency.pp) == (1, 1)
    assert latency.max_running <= 16 < throughput.max_running


def test_latency_adds_stages_only_when_needed() -> None:
    p = _plan("deepseek-llm-67b", "l40s-48g-x4", goal=Goal.LATENCY)
    assert (p.precision, p.pp) == (Precision.BF16, 4)
    smaller = _plan("deepseek-r1-distill-qwen-32b", "l40s-48g-x4", goal=Goal.LATENCY, max_context=4096)
    assert smaller.pp == 2


def test_low_memory_plan_cuts_context_and_says_what_would_not() -> None:
    p = _plan("deepseek-r1-distill-qwen-14b", "t4-16g-x1")
    assert p.fit is Fit.LOW_MEMORY
    assert MIN_CONTEXT <= p.max_context < DEFAULT_CONTEXT
    assert p.suggestion and "t4-16g-x2" in p.suggestion
    assert p.to_daemon_config()["plan"]["fits"] == "low-memory"


def test_operator_context_cap_beyond_the_model_is_clamped() -> None:
    p = _plan("deepseek-llm-7b", "a100-pcie-80g-x1", max_context=100_000)
    assert p.max_context == 4096
    assert any("exceeds the model's 4096" in r for r in p.reasons)


def test_operator_context_is_honoured() -> None:
    p = _plan("deepseek-r1-distill-qwen-7b", "h100-sxm-80g-x8", max_context=65536)
    assert p.max_context == 65536 and p.to_daemon_config()["model"]["max_context"] == 65536


def test_wont_fit_suggests_more_of_the_same_gpu() -> None:
    p = _plan("deepseek-v3", "h100-pcie-80g-x4")
    assert not p.fits and p.fit is Fit.INCOMPATIBLE
    assert p.suggestion == "use 8 GPUs like h100-pcie-80g-x8 (int4 tp1 pp8)"
    assert "does not fit" in p.summary() and p.suggestion in p.summary()


def test_wont_fit_suggests_another_server_when_the_gpu_tops_out() -> None:
    p = _plan("deepseek-v3", "t4-16g-x8")
    assert p.suggestion and p.suggestion.startswith("use a ")


def test_wont_fit_suggests_a_shorter_context_first() -> None:
    # A 16-bit cache (the builtin engine's) of 131072 tokens does not fit one L4 beside the weights.
    p = _plan("deepseek-r1-distill-llama-8b", "l4-24g-x1", max_context=131072, engine=Engine.BUILTIN)
    assert (p.fit, p.precision) == (Fit.LOW_MEMORY, Precision.BF16)  # it cannot quantize offline
    assert p.suggestion == "lower deepseek_max_context to 32768 (bf16 tp1 pp1)"
    # vLLM keeps an fp8 plan's cache in fp8, which holds the whole context.
    p = _plan("deepseek-r1-distill-llama-8b", "l4-24g-x1", max_context=131072)
    assert (p.fit, p.precision, p.max_context) == (Fit.COMPATIBLE, Precision.FP8, 131072)


def test_cpu_wont_fit_suggests_the_ram_it_needs() -> None:
    p = _plan("deepseek-r1-distill-qwen-32b", "cpu-only")
    assert not p.fits and p.suggestion and "host_memory_gib" in p.suggestion


def test_lab_plan_tiny_model_on_cpu(tiny_model_dir: Path) -> None:
    """The lab's node: cpu-only + the tiny DeepSeek-V3-architecture model from a local directory."""
    p = plan(PlanRequest(load_model_dir(tiny_model_dir), H["cpu-only"]))
    assert (p.fit, p.precision, p.tp, p.pp) == (Fit.COMPATIBLE, Precision.FP32, 1, 1)
    config = p.to_daemon_config()
    assert config["model"] == {
        "dtype": "float32",
        "quantization": "none",
        "device": "cpu",
        "tensor_parallel": 1,
        "pipeline_parallel": 1,
        "max_context": 2048,
    }
    assert 1 <= config["engine"]["max_running"] <= 8
    assert config["plan"]["profile"] == "cpu-only" and config["plan"]["fits"] == "compatible"
    assert config["plan"]["expected_gpu_memory_gib"] < 1


def test_cpu_prefers_fp32_then_smaller() -> None:
    assert _plan("deepseek-r1-distill-qwen-1.5b", "cpu-only").precision is Precision.FP32
    assert _plan("deepseek-r1-distill-qwen-7b", "cpu-only").precision is Precision.INT8


def test_expected_memory_stays_under_the_margin() -> None:
    for name in ("deepseek-r1", "deepseek-r1-distill-llama-70b"):
        p = _plan(name, "h200-sxm-141g-x8")
        assert p.expected_gpu_memory_gib * mem.GIB <= mem.usable_bytes(H["h200-sxm-141g-x8"])


def test_plan_is_pure() -> None:
    a = _plan("deepseek-r1", "h200-nvl-141g-x8")
    b = _plan("deepseek-r1", "h200-nvl-141g-x8")
    assert a.to_dict() == b.to_dict()


def test_interconnect_of_catalog_profiles_in_reasons() -> None:
    p = _plan("deepseek-r1-distill-llama-70b", "h100-sxm-80g-x8")
    assert H["h100-sxm-80g-x8"].interconnect is Interconnect.NVSWITCH
    assert "one NVSwitch domain of 8" in " ".join(p.reasons)
