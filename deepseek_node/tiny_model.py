"""Build a tiny random-weight DeepSeek-architecture model with a locally trained tokenizer.

Real weights cannot be downloaded on an air-gapped network (nor in CI), yet the daemon must be exercised
through exactly the code path a real checkpoint takes: a directory with config.json, safetensors weights,
tokenizer.json and a chat template, loaded with `AutoModelForCausalLM.from_pretrained(dir)` offline.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

Arch = Literal["deepseek_v3", "llama"]

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


def _train_tokenizer(vocab_size: int):
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


def _config(spec: TinyModelSpec, tokenizer):
    common = dict(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        num_hidden_layers=spec.layers,
        num_attention_heads=spec.heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=False,
    )
    if spec.arch == "deepseek_v3":
        from transformers import DeepseekV3Config

        # MLA + MoE like the real V3/R1, shrunk: first layer dense, the rest routed experts.
        return DeepseekV3Config(
            **common,
            intermediate_size=spec.hidden_size * 2,
            moe_intermediate_size=spec.hidden_size,
            num_key_value_heads=spec.heads,
            n_routed_experts=4,
            n_shared_experts=1,
            num_experts_per_tok=2,
            n_group=1,
            topk_group=1,
            first_k_dense_replace=1,
            kv_lora_rank=32,
            q_lora_rank=48,
            qk_rope_head_dim=8,
            qk_nope_head_dim=16,
            v_head_dim=16,
        )
    from transformers import LlamaConfig

    return LlamaConfig(
        **common, intermediate_size=spec.hidden_size * 2, num_key_value_heads=max(1, spec.heads // 2)
    )


def check_spec(spec: TinyModelSpec) -> None:
    """Shapes the architectures accept, refused before any slow import (ValueError names the fix)."""
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
    import torch
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    torch.manual_seed(spec.seed)
    tokenizer = _train_tokenizer(spec.vocab_size)
    config = _config(spec, tokenizer)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    created = [p for p in out.parents if not p.exists()]  # innermost first
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        staging.chmod(0o755)
        model.save_pretrained(staging, safe_serialization=True)
        tokenizer.save_pretrained(staging)
        (staging / "deepseek-node-tiny.json").write_text(
            json.dumps({"note": "random weights, for tests and demos only", "arch": spec.arch}, indent=2)
            + "\n"
        )
        check_out(out)  # still absent or empty
        if out.exists():
            out.rmdir()
        staging.rename(out)
    except BaseException:
        _remove_created(staging, created)
        raise
    return out


def tiny_model_cached(cache: Path) -> Path:
    """The tiny model is deterministic (fixed seed), so one cached copy serves every bundle build."""
    import shutil

    path = Path(cache) / "tiny-model" / "deepseek-tiny"
    if not (path / "config.json").is_file():
        staging = path.with_name(path.name + ".partial")
        shutil.rmtree(staging, ignore_errors=True)
        make_tiny_model(staging)
        shutil.rmtree(path, ignore_errors=True)
        staging.rename(path)
    return path
