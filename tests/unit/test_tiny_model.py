"""The tiny DeepSeek-V3 checkpoint has the published DeepSeek-V3/R1 layout and loads in transformers and vLLM.

vLLM pins an older transformers than the daemon, so it lives in its own interpreter: the vLLM test runs
there in a subprocess (DEEPSEEK_NODE_VLLM_PYTHON, default `<repo>/.venv-vllm/bin/python`).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

from deepseek_node.tiny_model import (
    FP8_BLOCK,
    FP8_QUANTIZATION_CONFIG,
    LAYOUT_VERSION,
    TinyModelSpec,
    dequantize_fp8_blocks,
    is_fp8_linear,
    make_tiny_model,
    published_state_dict,
    quantize_fp8_blocks,
    tiny_model_cached,
    tiny_reference_model,
)

REPO = Path(__file__).resolve().parents[2]
ATTN = (
    "q_a_proj",
    "q_a_layernorm",
    "q_b_proj",
    "kv_a_proj_with_mqa",
    "kv_a_layernorm",
    "kv_b_proj",
    "o_proj",
)
MLP = ("gate_proj", "up_proj", "down_proj")
# Keys of DeepSeek-V3/R1's published config.json that describe the model (auto_map and versions aside).
PUBLISHED_CONFIG_KEYS = {
    "architectures", "attention_bias", "attention_dropout", "aux_loss_alpha", "bos_token_id", "eos_token_id",
    "ep_size", "first_k_dense_replace", "hidden_act", "hidden_size", "initializer_range", "intermediate_size",
    "kv_lora_rank", "max_position_embeddings", "model_type", "moe_intermediate_size", "moe_layer_freq",
    "n_group", "n_routed_experts", "n_shared_experts", "norm_topk_prob", "num_attention_heads",
    "num_experts_per_tok", "num_hidden_layers", "num_key_value_heads", "num_nextn_predict_layers",
    "pretraining_tp", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "rms_norm_eps", "rope_scaling",
    "rope_theta", "routed_scaling_factor", "scoring_func", "seq_aux", "tie_word_embeddings", "topk_group",
    "topk_method", "torch_dtype", "use_cache", "v_head_dim", "vocab_size",
}  # fmt: skip


def _config(model_dir: Path) -> dict[str, Any]:
    return json.loads((model_dir / "config.json").read_text())


def _tensors(model_dir: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(model_dir / "model.safetensors"))


def published_shapes(cfg: dict[str, Any]) -> dict[str, tuple[int, ...]]:
    """Every tensor name and shape of a DeepSeek-V3 checkpoint, from its config, as the published one has."""
    h, heads, vocab = cfg["hidden_size"], cfg["num_attention_heads"], cfg["vocab_size"]
    q_lora, kv_lora, rope = cfg["q_lora_rank"], cfg["kv_lora_rank"], cfg["qk_rope_head_dim"]
    nope, v = cfg["qk_nope_head_dim"], cfg["v_head_dim"]
    shapes: dict[str, tuple[int, ...]] = {
        "model.embed_tokens.weight": (vocab, h),
        "model.norm.weight": (h,),
        "lm_head.weight": (vocab, h),
    }
    for i in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        attn = {
            "q_a_proj": (q_lora, h),
            "q_a_layernorm": (q_lora,),
            "q_b_proj": (heads * (nope + rope), q_lora),
            "kv_a_proj_with_mqa": (kv_lora + rope, h),
            "kv_a_layernorm": (kv_lora,),
            "kv_b_proj": (heads * (nope + v), kv_lora),
            "o_proj": (h, heads * v),
        }
        shapes.update({f"{p}self_attn.{n}.weight": s for n, s in attn.items()})

        def mlp(prefix: str, inter: int) -> None:
            shapes[prefix + "gate_proj.weight"] = (inter, h)
            shapes[prefix + "up_proj.weight"] = (inter, h)
            shapes[prefix + "down_proj.weight"] = (h, inter)

        if i < cfg["first_k_dense_replace"]:
            mlp(p + "mlp.", cfg["intermediate_size"])
            continue
        experts = cfg["n_routed_experts"]
        shapes[p + "mlp.gate.weight"] = (experts, h)
        shapes[p + "mlp.gate.e_score_correction_bias"] = (experts,)
        mlp(p + "mlp.shared_experts.", cfg["moe_intermediate_size"] * cfg["n_shared_experts"])
        for e in range(experts):
            mlp(f"{p}mlp.experts.{e}.", cfg["moe_intermediate_size"])
    return shapes


@pytest.fixture(scope="module")
def fp8_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Built through the CLI, so `provision model make-tiny --fp8` itself is what is checked."""
    from typer.testing import CliRunner

    from deepseek_node.cli.main import app

    out = tmp_path_factory.mktemp("models") / "deepseek-tiny-fp8"
    result = CliRunner().invoke(app, ["model", "make-tiny", "--out", str(out), "--fp8"])
    assert result.exit_code == 0, result.output
    return out


# --- the published layout ------------------------------------------------------------------------------


def test_config_is_like_the_published_one(tiny_model_dir: Path) -> None:
    cfg = _config(tiny_model_dir)
    assert set(cfg) >= PUBLISHED_CONFIG_KEYS
    assert "quantization_config" not in cfg
    assert cfg["architectures"] == ["DeepseekV3ForCausalLM"] and cfg["model_type"] == "deepseek_v3"
    assert (cfg["topk_method"], cfg["scoring_func"], cfg["norm_topk_prob"]) == ("noaux_tc", "sigmoid", True)
    assert cfg["n_routed_experts"] % cfg["n_group"] == 0 and cfg["topk_group"] <= cfg["n_group"]
    assert cfg["num_experts_per_tok"] <= cfg["n_routed_experts"]
    # vLLM's CPU MLA kernel is built for the real latent size only.
    assert (cfg["kv_lora_rank"], cfg["qk_rope_head_dim"]) == (512, 64)
    # Matrices engines fuse split on fp8 block boundaries (as in R1), with or without fp8.
    for key in ("q_lora_rank", "intermediate_size", "moe_intermediate_size"):
        assert cfg[key] % 128 == 0, key
    assert cfg["rope_scaling"]["type"] == "yarn"
    assert cfg["first_k_dense_replace"] == 1 < cfg["num_hidden_layers"]  # one dense, then MoE
    assert cfg["vocab_size"] == len(
        json.loads((tiny_model_dir / "tokenizer.json").read_text())["model"]["vocab"]
    )
    generation = json.loads((tiny_model_dir / "generation_config.json").read_text())
    assert (generation["temperature"], generation["top_p"], generation["do_sample"]) == (0.6, 0.95, True)
    assert (generation["bos_token_id"], generation["eos_token_id"]) == (
        cfg["bos_token_id"],
        cfg["eos_token_id"],
    )
    note = json.loads((tiny_model_dir / "deepseek-node-tiny.json").read_text())
    assert note["layout"] == LAYOUT_VERSION and note["fp8"] is False


def test_tensors_have_the_published_names_and_shapes(tiny_model_dir: Path) -> None:
    import torch

    tensors = _tensors(tiny_model_dir)
    assert {n: tuple(t.shape) for n, t in tensors.items()} == published_shapes(_config(tiny_model_dir))
    assert {t.dtype for n, t in tensors.items()} == {torch.float32}
    bias = tensors["model.layers.1.mlp.gate.e_score_correction_bias"]
    assert bias.abs().sum() > 0  # a loader that drops it cannot go unnoticed


def test_transformers_loads_it_without_key_problems_and_same_logits(
    tiny_model_dir: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """transformers fuses the per-expert tensors on load; nothing is missing, left over or re-initialised."""
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    before = hf_logging.get_verbosity()
    hf_logging.set_verbosity_warning()
    try:
        model, info = AutoModelForCausalLM.from_pretrained(
            str(tiny_model_dir), local_files_only=True, output_loading_info=True
        )
    finally:
        hf_logging.set_verbosity(before)
    assert {k: v for k, v in info.items() if v} == {}
    err = capfd.readouterr().err
    for word in ("MISSING", "UNEXPECTED", "MISMATCH", "newly initialized"):
        assert word not in err, err
    reference = tiny_reference_model(_config(tiny_model_dir), TinyModelSpec().seed)
    ids = torch.tensor([[0, 5, 17, 42, 99, 3, 250, 7]])
    with torch.no_grad():
        assert torch.equal(model.eval()(ids).logits, reference(ids).logits)


# --- R1's native fp8 -----------------------------------------------------------------------------------


def test_fp8_names_follow_r1() -> None:
    quantized = [
        "model.layers.0.self_attn.q_a_proj.weight",
        "model.layers.0.self_attn.kv_a_proj_with_mqa.weight",
        "model.layers.0.mlp.down_proj.weight",
        "model.layers.3.mlp.shared_experts.up_proj.weight",
        "model.layers.3.mlp.experts.255.gate_proj.weight",
    ]
    kept = [
        "model.embed_tokens.weight",
        "lm_head.weight",
        "model.norm.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.0.self_attn.kv_a_layernorm.weight",
        "model.layers.3.mlp.gate.weight",
        "model.layers.3.mlp.gate.e_score_correction_bias",
    ]
    assert all(map(is_fp8_linear, quantized))
    assert not any(map(is_fp8_linear, kept))


def test_block_quantization_round_trip_with_partial_blocks() -> None:
    import torch

    gen = torch.Generator().manual_seed(1)
    w = torch.randn(300, 200, generator=gen)
    w[:128, :128] *= 1000  # blocks are scaled independently: a loud block leaves the others precise
    w[256:, 128:] = 0  # an all-zero block must not divide by zero
    q, scale_inv = quantize_fp8_blocks(w)
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape
    assert scale_inv.dtype == torch.float32 and scale_inv.shape == (3, 2)
    back = dequantize_fp8_blocks(q, scale_inv)
    assert torch.isfinite(back).all() and (back[256:, 128:] == 0).all()
    _assert_fp8_close(back, w, scale_inv)


def _assert_fp8_close(back: Any, ref: Any, scale_inv: Any) -> None:
    """Within e4m3's rounding: half a step of 3 mantissa bits, or of the subnormal step near zero."""
    rows, cols = ref.shape
    scales = scale_inv.repeat_interleave(FP8_BLOCK, 0).repeat_interleave(FP8_BLOCK, 1)[:rows, :cols]
    bound = ref.abs().float() * 2.0**-4 + scales * 2.0**-10
    assert ((back - ref.float()).abs() <= bound * 1.001).all()


def test_fp8_checkpoint_layout_and_dequantization(fp8_model_dir: Path) -> None:
    import torch

    cfg = _config(fp8_model_dir)
    assert cfg["quantization_config"] == FP8_QUANTIZATION_CONFIG
    assert cfg["torch_dtype"] == "bfloat16"
    tensors = _tensors(fp8_model_dir)
    weights = {n: t for n, t in tensors.items() if not n.endswith("_scale_inv")}
    assert {n: tuple(t.shape) for n, t in weights.items()} == published_shapes(cfg)
    reference = tiny_reference_model(cfg, TinyModelSpec().seed)
    bf16 = {n: t.to(torch.bfloat16) for n, t in published_state_dict(reference).items()}
    quantized = [n for n in weights if is_fp8_linear(n)]
    dense, layers = cfg["first_k_dense_replace"], cfg["num_hidden_layers"]
    # 5 attention projections a layer, 3 MLP ones a dense layer, shared and routed experts' on MoE layers.
    assert len(quantized) == 5 * layers + 3 * dense + (layers - dense) * 3 * (1 + cfg["n_routed_experts"])
    for name, tensor in weights.items():
        if name in quantized:
            scale_inv = tensors[f"{name}_scale_inv"]
            rows, cols = tensor.shape
            assert tensor.dtype == torch.float8_e4m3fn
            assert scale_inv.dtype == torch.float32
            assert scale_inv.shape == (math.ceil(rows / 128), math.ceil(cols / 128))
            _assert_fp8_close(dequantize_fp8_blocks(tensor, scale_inv), bf16[name].float(), scale_inv)
        elif name.endswith("e_score_correction_bias"):
            assert tensor.dtype == torch.float32 and torch.equal(tensor, reference.state_dict()[name])
        else:
            assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, bf16[name]), name
    assert set(tensors) == set(weights) | {f"{n}_scale_inv" for n in quantized}


@pytest.mark.gpu
def test_fp8_checkpoint_loads_in_transformers_on_cuda(fp8_model_dir: Path) -> None:
    """transformers keeps the weights in fp8 on the GPU and fuses the per-expert scales consistently."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs an NVIDIA GPU (CUDA)")
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9 or newer (Ada, Hopper)")
    from transformers import AutoModelForCausalLM

    model, info = AutoModelForCausalLM.from_pretrained(
        str(fp8_model_dir), local_files_only=True, output_loading_info=True, device_map="cuda"
    )
    assert {k: v for k, v in info.items() if v} == {}
    params = dict(model.named_parameters())
    fp8 = {n: p for n, p in params.items() if p.dtype == torch.float8_e4m3fn}
    assert fp8, "the weights were dequantized instead of kept in fp8"
    reference = tiny_reference_model(_config(fp8_model_dir), TinyModelSpec().seed).state_dict()
    for name, weight in fp8.items():
        scale_inv = params[f"{name}_scale_inv"].float().cpu()
        # transformers' fused experts are [E, out, in] with [E, out/128, in/128] scales: one matrix each.
        for w, s, want in zip(
            weight.cpu().reshape(-1, *weight.shape[-2:]),
            scale_inv.reshape(-1, *scale_inv.shape[-2:]),
            reference[name].reshape(-1, *weight.shape[-2:]),
            strict=True,
        ):
            _assert_fp8_close(dequantize_fp8_blocks(w, s), want.to(torch.bfloat16).float(), s)
    from transformers.integrations.finegrained_fp8 import load_finegrained_fp8_kernel

    try:  # transformers computes in fp8 with a kernel from the Hub: absent on an offline machine
        load_finegrained_fp8_kernel()
    except ImportError as exc:
        pytest.skip(f"loaded in fp8 and checked; running it needs transformers' fp8 kernel: {exc}")
    ids = torch.tensor([[0, 5, 17, 42, 99, 3, 250, 7]], device="cuda")
    with torch.no_grad():
        logits = model(ids).logits.float()
    assert torch.isfinite(logits).all()


# --- option checks and the cache -----------------------------------------------------------------------


def test_fp8_is_refused_for_llama(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="deepseek_v3"):
        make_tiny_model(tmp_path / "m", TinyModelSpec(arch="llama", fp8=True))
    assert not (tmp_path / "m").exists()


def test_cache_key_carries_the_layout_version(tmp_path: Path) -> None:
    path = tiny_model_cached(tmp_path)
    assert f"layout-{LAYOUT_VERSION}" in path.parts and path.name == "deepseek-tiny"
    stamp = (path / "model.safetensors").stat().st_mtime_ns
    assert tiny_model_cached(tmp_path) == path
    assert (path / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert json.loads((path / "deepseek-node-tiny.json").read_text())["layout"] == LAYOUT_VERSION


# --- vLLM ----------------------------------------------------------------------------------------------

_VLLM_SCRIPT = textwrap.dedent(
    """
    import json
    import sys


    def main() -> None:
        from vllm import LLM, SamplingParams

        llm = LLM(model=sys.argv[1], dtype="float32", max_model_len=256, enforce_eager=True, seed=0)
        params = SamplingParams(max_tokens=4, temperature=0, logprobs=5)
        result = llm.generate(["Hello"], params)[0]
        out = result.outputs[0]
        steps = [{str(t): lp.logprob for t, lp in step.items()} for step in out.logprobs]
        answer = {"prompt": result.prompt_token_ids, "tokens": list(out.token_ids), "logprobs": steps}
        print("RESULT " + json.dumps(answer), flush=True)


    if __name__ == "__main__":  # vLLM starts its engine in spawned processes, which import this file
        main()
    """
)


def vllm_python() -> Path:
    return Path(os.environ.get("DEEPSEEK_NODE_VLLM_PYTHON") or REPO / ".venv-vllm" / "bin" / "python")


@pytest.mark.slow
# The tiny llama through vLLM is served end to end in tests/daemon/test_vllm_engine.py.
@pytest.mark.parametrize("fixture", ["tiny_model_dir"])
def test_vllm_loads_and_agrees_with_transformers(
    fixture: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """vLLM (CPU build) serves the tiny checkpoint and its log-probabilities match transformers'."""
    python = vllm_python()
    if not os.access(python, os.X_OK):
        pytest.skip(
            f"no vLLM interpreter at {python}: set DEEPSEEK_NODE_VLLM_PYTHON to one with vllm installed"
        )
    model_dir: Path = request.getfixturevalue(fixture)
    script = tmp_path / "vllm_generate.py"
    script.write_text(_VLLM_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(VLLM_CPU_KVCACHE_SPACE="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [str(python), str(script), str(model_dir)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=900,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"vLLM failed ({proc.returncode}):\n{proc.stderr[-6000:]}"
    answer = json.loads(lines[-1].removeprefix("RESULT "))
    assert len(answer["tokens"]) == 4

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    assert answer["prompt"] == AutoTokenizer.from_pretrained(model_dir).encode("Hello")
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), local_files_only=True).eval()
    # Teacher-forced on vLLM's own tokens, so a near tie that flips one token cannot make the runs diverge.
    ids = torch.tensor([answer["prompt"] + answer["tokens"]])
    with torch.no_grad():
        logprobs = torch.log_softmax(model(ids).logits[0].float(), dim=-1)
    first = len(answer["prompt"]) - 1
    for step, top in enumerate(answer["logprobs"]):
        for token, value in top.items():
            assert abs(logprobs[first + step, int(token)].item() - value) < 1e-3, (step, token)
