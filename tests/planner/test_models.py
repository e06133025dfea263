"""The model catalog and config.json analysis: parameter counts and KV cache per token."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from deepseek_node.planner import (
    MODELS,
    AttentionKind,
    PlannerInputError,
    Precision,
    load_model_dir,
    resolve_model,
)
from deepseek_node.planner.models import spec_from_config

# Sizes from the model cards (total, active) in billions.
PUBLISHED_B = {
    "deepseek-v3": (671, 37),
    "deepseek-r1": (671, 37),
    "deepseek-v2": (236, 21),
    "deepseek-coder-v2": (236, 21),
    "deepseek-coder-v2-lite": (15.7, 2.4),
    "deepseek-llm-7b": (6.9, None),
    "deepseek-llm-67b": (67.4, None),
    "deepseek-r1-distill-qwen-1.5b": (1.78, None),
    "deepseek-r1-distill-qwen-7b": (7.62, None),
    "deepseek-r1-distill-qwen-14b": (14.8, None),
    "deepseek-r1-distill-qwen-32b": (32.8, None),
    "deepseek-r1-distill-llama-8b": (8.03, None),
    "deepseek-r1-distill-llama-70b": (70.6, None),
}


def test_catalog_covers_the_family() -> None:
    assert set(MODELS) == set(PUBLISHED_B)


@pytest.mark.parametrize("name", list(PUBLISHED_B))
def test_parameter_counts_match_the_model_cards(name: str) -> None:
    total, active = PUBLISHED_B[name]
    params = MODELS[name].params
    assert params.total / 1e9 == pytest.approx(total, rel=0.02)
    if active is not None:
        assert params.active / 1e9 == pytest.approx(active, rel=0.05)


def test_v3_main_model_is_671b_and_the_mtp_layer_is_not_served() -> None:
    # The card: 685B on the Hub = 671B main model + 14B multi-token-prediction module.
    v3 = MODELS["deepseek-v3"]
    assert v3.params.total / 1e9 == pytest.approx(671, abs=1)
    assert any("multi-token" in note for note in v3.notes)


@pytest.mark.parametrize("name", ["deepseek-v3", "deepseek-r1"])
def test_v3_and_r1_are_native_fp8_mla_moe(name: str) -> None:
    m = MODELS[name]
    assert m.native_precision is Precision.FP8
    assert m.attention is AttentionKind.MLA
    assert (m.routed_experts, m.experts_per_token, m.shared_experts, m.first_dense_layers) == (256, 8, 1, 3)


def test_other_models_are_native_bf16() -> None:
    assert {m.native_precision for n, m in MODELS.items() if n not in ("deepseek-v3", "deepseek-r1")} == {
        Precision.BF16
    }


def test_mla_caches_one_latent_per_token_and_layer() -> None:
    v3 = MODELS["deepseek-v3"]
    assert v3.kv_elements_per_token_per_layer == 512 + 64
    assert v3.layers * v3.kv_elements_per_token_per_layer * 2 == 70272  # bytes per token at bf16
    lite = MODELS["deepseek-coder-v2-lite"]
    assert lite.q_lora_rank is None and lite.kv_elements_per_token_per_layer == 576


def test_mla_needs_far_less_cache_than_the_dense_67b() -> None:
    # DeepSeek-V2's point: MLA's latent cache is a fraction of the GQA cache of DeepSeek 67B.
    v2, dense = MODELS["deepseek-v2"], MODELS["deepseek-llm-67b"]
    ratio = (v2.layers * v2.kv_elements_per_token_per_layer) / (
        dense.layers * dense.kv_elements_per_token_per_layer
    )
    assert ratio < 0.2


@pytest.mark.parametrize(
    "name, kind, kv_bytes",
    [
        ("deepseek-llm-7b", AttentionKind.MHA, 2 * 30 * 32 * 128 * 2),
        ("deepseek-llm-67b", AttentionKind.GQA, 2 * 95 * 8 * 128 * 2),
        ("deepseek-r1-distill-qwen-1.5b", AttentionKind.GQA, 2 * 28 * 2 * 128 * 2),
        ("deepseek-r1-distill-llama-70b", AttentionKind.GQA, 2 * 80 * 8 * 128 * 2),
    ],
)
def test_standard_attention_kv_per_token(name: str, kind: AttentionKind, kv_bytes: int) -> None:
    m = MODELS[name]
    assert m.attention is kind
    assert m.layers * m.kv_elements_per_token_per_layer * 2 == kv_bytes


def test_qwen_distills_have_attention_biases() -> None:
    assert MODELS["deepseek-r1-distill-qwen-7b"].attention_bias
    assert not MODELS["deepseek-r1-distill-llama-8b"].attention_bias


@pytest.mark.parametrize("fixture", ["tiny_model_dir", "tiny_llama_dir"])
def test_counts_match_the_real_module(fixture: str, request: pytest.FixtureRequest) -> None:
    """The analysis of a config.json gives exactly the parameters transformers builds from it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    path: Path = request.getfixturevalue(fixture)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path, local_files_only=True))
    # V3's router score-correction bias is a buffer, but it is in the checkpoint and in memory all the same.
    stored = sum(p.numel() for p in model.parameters()) + sum(
        b.numel() for n, b in model.named_buffers() if "e_score_correction_bias" in n
    )
    spec = load_model_dir(path)
    assert spec.params.total == stored
    assert spec.native_precision is Precision.FP32
    assert isinstance(torch.__version__, str)


def test_tiny_v3_model_is_analysed_as_mla_moe(tiny_model_dir: Path) -> None:
    spec = load_model_dir(tiny_model_dir)
    assert spec.attention is AttentionKind.MLA and spec.is_moe
    assert spec.kv_elements_per_token_per_layer == 512 + 64  # kv_lora_rank + qk_rope_head_dim
    assert spec.max_context == 2048 and spec.source == str(tiny_model_dir)


def test_fp8_quantization_config_makes_fp8_native() -> None:
    config = {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4, "vocab_size": 100}
    assert spec_from_config(config, "x", "x").native_precision is Precision.BF16
    fp8 = {**config, "quantization_config": {"quant_method": "fp8"}}
    assert spec_from_config(fp8, "x", "x").native_precision is Precision.FP8
    awq = {**config, "quantization_config": {"quant_method": "awq", "bits": 4}}
    assert spec_from_config(awq, "x", "x").native_precision is Precision.INT4


def test_missing_config_keys_are_named() -> None:
    with pytest.raises(PlannerInputError, match="lacks positive integers for num_hidden_layers, vocab_size"):
        spec_from_config({"hidden_size": 64, "num_attention_heads": 4}, "x", "/models/x")


def test_model_dir_without_config(tmp_path: Path) -> None:
    with pytest.raises(PlannerInputError) as exc:
        load_model_dir(tmp_path)
    assert "deepseek_model_dir" in str(exc.value) and "has no config.json" in str(exc.value)


def test_model_dir_with_broken_config(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(PlannerInputError, match="cannot be read"):
        load_model_dir(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps([1, 2]))
    with pytest.raises(PlannerInputError, match="not a JSON object"):
        load_model_dir(tmp_path)


def test_resolve_model_prefers_the_directory(tiny_model_dir: Path) -> None:
    assert resolve_model("deepseek-v3", str(tiny_model_dir)).source == str(tiny_model_dir)
    assert resolve_model("deepseek-v3").name == "deepseek-v3"


def test_resolve_model_errors() -> None:
    with pytest.raises(PlannerInputError, match="neither deepseek_model nor deepseek_model_dir is set"):
        resolve_model(None, None)
    with pytest.raises(PlannerInputError, match=r"did you mean .*'deepseek-r1'"):
        resolve_model("deepseek-r2")
