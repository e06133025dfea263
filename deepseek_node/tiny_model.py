"""Build a tiny random-weight DeepSeek-architecture model with a locally trained tokenizer.

Real weights cannot be downloaded on an air-gapped network (nor in CI), yet the daemon must be exercised
through exactly the code path a real checkpoint takes: a directory with config.json, safetensors weights,
tokenizer.json and a chat template, loaded with `AutoModelForCausalLM.from_pretrained(dir)` offline.

The DeepSeek-V3 model is written in the published DeepSeek-V3/R1 checkpoint layout (tensor names, one
tensor per expert, config.json keys, optionally R1's block-quantized fp8), not in whatever layout the
installed transformers keeps in memory, so the same directory also loads in other engines such as vLLM.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerFast

Arch = Literal["deepseek_v3", "llama"]

# Part of the cache key of tiny_model_cached: bump it whenever the files written change, so a cached copy
# in an older layout is rebuilt rather than reused.
LAYOUT_VERSION = 2

# DeepSeek-V3's own chat template shape (simplified: no tool calls), so prompts are formatted the same way.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] }}\n"
    "{% elif message['role'] == 'user' %}<｜User｜>{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}<｜Assistant｜>{{ message['content'] }}{{ eos_token }}"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<｜Assistant｜>{% endif %}"
)
SPECIAL_TOKENS = [
    "<｜begin▁of▁sentence｜>",
    "<｜end▁of▁sentence｜>",
    "<｜pad｜>",
    "<｜User｜>",
    "<｜Assistant｜>",
]

_CORPUS = """
DeepSeek models serve chat completions on bare-metal servers inside air-gapped networks.
Operators provision GPU nodes with Ansible, verify offline bundles, and rotate TLS certificates.
The inference daemon batches requests continuously and reports metrics to Prometheus.
Tensor parallelism splits each layer across GPUs; pipeline parallelism splits layers into stages.
Quantization to int8 or int4 trades a little accuracy for memory; fp8 needs Hopper or Ada GPUs.
The key value cache grows with context length and with the number of concurrent sequences.
Audit logs record who asked what and when, without the prompt unless policy allows it.
Hello, how are you today? I am fine, thank you. What is the capital of France? Paris is.
Please write a short poem about the sea. The waves roll in and out, the gulls call overhead.
Explain how a transformer works: attention mixes tokens, feed-forward layers transform them.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 100 1000. Dates: 2024-01-31. Code: def f(x): return x * 2
"""


@dataclass(frozen=True)
class TinyModelSpec:
    arch: Arch = "deepseek_v3"
    vocab_size: int = 512
    hidden_size: int = 64
    layers: int = 2
    heads: int = 4
    max_position_embeddings: int = 2048
    seed: int = 0
    fp8: bool = False  # R1's native format: block-quantized float8_e4m3fn linear weights (deepseek_v3 only)


def _train_tokenizer(vocab_size: int) -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    lines = [line for line in _CORPUS.strip().splitlines() for _ in range(4)]
    tok.train_from_iterator(lines, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=SPECIAL_TOKENS[0],
        eos_token=SPECIAL_TOKENS[1],
        pad_token=SPECIAL_TOKENS[2],
        model_max_length=4096,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


# R1's native fp8 format: 128x128 blocks, one float32 dequantization factor ("scale_inv") per block.
FP8_BLOCK = 128
FP8_MAX = 448.0  # the largest finite float8_e4m3fn
FP8_QUANTIZATION_CONFIG: dict[str, Any] = {
    "activation_scheme": "dynamic",
    "fmt": "e4m3",
    "quant_method": "fp8",
    "weight_block_size": [FP8_BLOCK, FP8_BLOCK],
}
# The linear layers R1 stores in fp8; embeddings, norms, the router and lm_head stay bf16.
_FP8_LINEAR = re.compile(
    r"^model\.layers\.\d+\.(self_attn\.(q_a_proj|q_b_proj|kv_a_proj_with_mqa|kv_b_proj|o_proj)"
    r"|mlp\.(shared_experts\.|experts\.\d+\.)?(gate_proj|up_proj|down_proj))\.weight$"
)
# DeepSeek-R1's recommended sampling, as in its generation_config.json.
GENERATION_SAMPLING = {"do_sample": True, "temperature": 0.6, "top_p": 0.95}


def deepseek_v3_config(spec: TinyModelSpec, bos: int, eos: int, pad: int, vocab_size: int) -> dict[str, Any]:
    """config.json with the keys of the published DeepSeek-V3/R1 one, shrunk.

    Sizes that engines constrain: vLLM's CPU MLA decode kernel only handles a latent of kv_lora_rank +
    qk_rope_head_dim = 512 + 64 (the real model's); with 128x128 fp8 blocks, the matrices engines fuse
    (q_a with kv_a, gate with up, expert with expert) must split on block boundaries, so q_lora_rank and
    the (expert) intermediate sizes are multiples of 128, as in R1; n_group must divide n_routed_experts.
    The same sizes are used without fp8, so both variants have one shape.
    """
    block = FP8_BLOCK
    intermediate = block * math.ceil(spec.hidden_size * 2 / block)
    moe_intermediate = block * math.ceil(spec.hidden_size / block)
    config: dict[str, Any] = {
        "architectures": ["DeepseekV3ForCausalLM"],
        "attention_bias": False,
        "attention_dropout": 0.0,
        "aux_loss_alpha": 0.001,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "ep_size": 1,
        "first_k_dense_replace": 1,
        "hidden_act": "silu",
        "hidden_size": spec.hidden_size,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "kv_lora_rank": 512,
        "max_position_embeddings": spec.max_position_embeddings,
        "model_type": "deepseek_v3",
        "moe_intermediate_size": moe_intermediate,
        "moe_layer_freq": 1,
        "n_group": 2,
        "n_routed_experts": 4,
        "n_shared_experts": 1,
        "norm_topk_prob": True,
        "num_attention_heads": spec.heads,
        "num_experts_per_tok": 2,
        "num_hidden_layers": spec.layers,
        "num_key_value_heads": spec.heads,
        # No multi-token-prediction layer: engines skip it for plain serving anyway.
        "num_nextn_predict_layers": 0,
        "pretraining_tp": 1,
        "q_lora_rank": block,
        "qk_nope_head_dim": 16,
        "qk_rope_head_dim": 64,
        "rms_norm_eps": 1e-06,
        # YaRN like the real model (which stretches 4096 to 163840), here 512 -> max_position_embeddings.
        "rope_scaling": {
            "beta_fast": 32,
            "beta_slow": 1,
            "factor": max(1, spec.max_position_embeddings // 512),
            "mscale": 1.0,
            "mscale_all_dim": 1.0,
            "original_max_position_embeddings": min(512, spec.max_position_embeddings),
            "type": "yarn",
        },
        "rope_theta": 10000,
        "routed_scaling_factor": 2.5,
        "scoring_func": "sigmoid",
        "seq_aux": True,
        "tie_word_embeddings": False,
        "topk_group": 1,
        "topk_method": "noaux_tc",
        "torch_dtype": "bfloat16" if spec.fp8 else "float32",
        "use_cache": True,
        "v_head_dim": 16,
        "vocab_size": vocab_size,
    }
    if spec.fp8:
        config["quantization_config"] = dict(FP8_QUANTIZATION_CONFIG)
    return config


def tiny_reference_model(config: dict[str, Any], seed: int = 0) -> PreTrainedModel:
    """The unquantized float32 transformers model whose weights make_tiny_model writes for `config`.

    Deterministic for a seed, so tests can rebuild it and compare it with what a loader made of the files.
    """
    import torch
    from transformers import AutoModelForCausalLM, DeepseekV3Config

    plain = {k: v for k, v in config.items() if k != "quantization_config"}
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(DeepseekV3Config.from_dict(plain), dtype=torch.float32)
    # Real checkpoints carry a non-zero router score correction; zeros would let a loader that drops it pass.
    with torch.no_grad():
        for name, buf in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                buf.copy_(torch.rand(buf.shape, dtype=buf.dtype) * 0.1)
    return model.eval()


def published_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The model's tensors under the published DeepSeek-V3 names: one gate/up/down matrix per expert.

    transformers 5 keeps the routed experts fused (`experts.gate_up_proj` [E, 2I, H], `experts.down_proj`
    [E, H, I]) and fuses per-expert checkpoint tensors on load; the published checkpoints are per expert.
    """
    out: dict[str, torch.Tensor] = {}
    for name, tensor in model.state_dict().items():
        if name.endswith(".mlp.experts.gate_up_proj"):
            prefix = name.removesuffix("gate_up_proj")
            for e, fused in enumerate(tensor):
                gate, up = fused.chunk(2, dim=0)  # gate first, as the forward pass splits it
                out[f"{prefix}{e}.gate_proj.weight"] = gate
                out[f"{prefix}{e}.up_proj.weight"] = up
        elif name.endswith(".mlp.experts.down_proj"):
            prefix = name.removesuffix("down_proj")
            for e, down in enumerate(tensor):
                out[f"{prefix}{e}.down_proj.weight"] = down
        else:
            out[name] = tensor
    # Own storage per tensor: safetensors refuses tensors that share memory.
    return {name: t.detach().clone().contiguous() for name, t in out.items()}


def is_fp8_linear(name: str) -> bool:
    """Whether R1's fp8 checkpoint stores this tensor in float8_e4m3fn (with a `_scale_inv` beside it)."""
    return bool(_FP8_LINEAR.match(name))


def quantize_fp8_blocks(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float8_e4m3fn weight, float32 scale_inv [ceil(out/128), ceil(in/128)]) as in R1's checkpoint.

    Each 128x128 block is scaled so its largest magnitude maps to the fp8 maximum; scale_inv is the factor
    that multiplies the fp8 block back. Edge blocks may be partial.
    """
    import torch
    import torch.nn.functional as F

    rows, cols = weight.shape
    br, bc = math.ceil(rows / FP8_BLOCK), math.ceil(cols / FP8_BLOCK)
    padded = F.pad(weight.float(), (0, bc * FP8_BLOCK - cols, 0, br * FP8_BLOCK - rows))
    blocks = padded.view(br, FP8_BLOCK, bc, FP8_BLOCK)
    amax = blocks.abs().amax(dim=(1, 3))
    scale_inv = torch.where(amax > 0, amax / FP8_MAX, torch.ones_like(amax))
    q = (blocks / scale_inv[:, None, :, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    q = q.view(br * FP8_BLOCK, bc * FP8_BLOCK)[:rows, :cols].contiguous()
    return q, scale_inv.contiguous()


def dequantize_fp8_blocks(weight: torch.Tensor, scale_inv: torch.Tensor) -> torch.Tensor:
    """float32 weight from an fp8 weight and its per-block scale_inv (the inverse of quantize_fp8_blocks)."""
    rows, cols = weight.shape
    scales = scale_inv.repeat_interleave(FP8_BLOCK, 0).repeat_interleave(FP8_BLOCK, 1)[:rows, :cols]
    return weight.float() * scales


def fp8_checkpoint(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """R1's native-fp8 tensors from published-layout ones: fp8 linears plus scale_inv, the rest bf16.

    The router's score-correction bias stays float32, as in the published checkpoint.
    """
    import torch

    out: dict[str, torch.Tensor] = {}
    for name, tensor in tensors.items():
        if is_fp8_linear(name):
            out[name], out[f"{name}_scale_inv"] = quantize_fp8_blocks(tensor.to(torch.bfloat16))
        elif name.endswith("e_score_correction_bias"):
            out[name] = tensor.float()
        else:
            out[name] = tensor.to(torch.bfloat16)
    return out


def _write_deepseek_v3(staging: Path, spec: TinyModelSpec, tokenizer: PreTrainedTokenizerFast) -> None:
    from safetensors.torch import save_file

    config = deepseek_v3_config(
        spec, tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id, len(tokenizer)
    )
    _write_json(staging / "config.json", config)
    generation = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        **GENERATION_SAMPLING,
    }
    _write_json(staging / "generation_config.json", generation)
    tensors = published_state_dict(tiny_reference_model(config, spec.seed))
    if spec.fp8:
        tensors = fp8_checkpoint(tensors)
    # One shard is enough at this size; real checkpoints add model.safetensors.index.json for many.
    save_file(tensors, str(staging / "model.safetensors"), metadata={"format": "pt"})


def _write_llama(staging: Path, spec: TinyModelSpec, tokenizer: PreTrainedTokenizerFast) -> None:
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
        intermediate_size=spec.hidden_size * 2,
        num_key_value_heads=max(1, spec.heads // 2),
    )
    torch.manual_seed(spec.seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(staging, safe_serialization=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def check_spec(spec: TinyModelSpec) -> None:
    """Shapes the architectures accept, refused before any slow import (ValueError names the fix)."""
    if spec.fp8 and spec.arch != "deepseek_v3":
        raise ValueError("fp8 writes DeepSeek-V3/R1's native checkpoint format: use the deepseek_v3 arch")
    if spec.hidden_size % spec.heads:
        raise ValueError(
            f"hidden size {spec.hidden_size} is not a multiple of the {spec.heads} attention heads: "
            f"use e.g. {max(spec.heads, spec.hidden_size // spec.heads * spec.heads)}"
        )


def check_out(out: Path) -> None:
    """`out` must be absent or an empty directory, under a directory: OSError naming the fix otherwise."""
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a directory: choose a new directory for the model")
    if out.exists() and any(out.iterdir()):
        raise FileExistsError(f"{out} is not empty: choose a new directory or remove it first")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise NotADirectoryError(
                    f"{parent} is not a directory: choose an output path under a directory"
                )
            break


def _remove_created(path: Path, created: list[Path]) -> None:
    import shutil

    shutil.rmtree(path, ignore_errors=True)
    for parent in created:  # innermost first
        try:
            parent.rmdir()
        except OSError:
            return


def make_tiny_model(out: Path, spec: TinyModelSpec | None = None) -> Path:
    """Write a loadable model directory to `out` (created; must be empty or absent).

    The files are written to a sibling scratch directory renamed into place at the end, so a failure (a
    full disk, Ctrl-C) leaves neither a half model nor the parent directories it created.
    """
    import tempfile

    spec = spec or TinyModelSpec()
    out = Path(out).absolute()
    check_spec(spec)
    check_out(out)
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = _train_tokenizer(spec.vocab_size)
    created = [p for p in out.parents if not p.exists()]  # innermost first
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        staging.chmod(0o755)
        if spec.arch == "deepseek_v3":
            _write_deepseek_v3(staging, spec, tokenizer)
        else:
            _write_llama(staging, spec, tokenizer)
        tokenizer.save_pretrained(staging)
        note = {
            "note": "random weights, for tests and demos only",
            "arch": spec.arch,
            "fp8": spec.fp8,
            "layout": LAYOUT_VERSION,
        }
        _write_json(staging / "deepseek-node-tiny.json", note)
        check_out(out)  # still absent or empty
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        _remove_created(staging, created)
        raise
    return out


def tiny_model_cached(cache: Path) -> Path:
    """The tiny model is deterministic (fixed seed), so one cached copy serves every bundle build.

    The layout version is in the path, so a copy written in an older layout is never picked up.
    """
    import shutil

    path = Path(cache) / "tiny-model" / f"layout-{LAYOUT_VERSION}" / "deepseek-tiny"
    if not (path / "config.json").is_file():
        staging = path.with_name(path.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        make_tiny_model(staging)
        shutil.rmtree(path, ignore_errors=True)
        staging.rename(path)
    return path
