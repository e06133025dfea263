"""The DeepSeek model catalog and the analysis of any `config.json`.

Catalog entries are the numbers of the models' own `config.json` files on the Hub, run through the same
parser as a local model directory (`deepseek_model_dir`), so the two paths cannot drift apart. From those
numbers come the parameter count (split into what quantization shrinks and what stays 16-bit) and the KV
cache per token, the two quantities that decide where a model fits.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepseek_node.planner.enums import AttentionKind, Precision
from deepseek_node.planner.problems import PlannerInputError, Problem

MODEL_KEY = "deepseek_model"
MODEL_DIR_KEY = "deepseek_model_dir"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # Hub id or local directory
    model_type: str
    attention: AttentionKind
    layers: int
    hidden_size: int
    intermediate_size: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab_size: int
    max_context: int
    native_precision: Precision
    tie_embeddings: bool = False
    attention_bias: bool = False
    # Mixture of experts (0 routed experts: dense)
    routed_experts: int = 0
    shared_experts: int = 0
    experts_per_token: int = 0
    moe_intermediate_size: int = 0
    first_dense_layers: int = 0
    # Multi-head latent attention
    q_lora_rank: int | None = None
    kv_lora_rank: int = 0
    qk_nope_head_dim: int = 0
    qk_rope_head_dim: int = 0
    v_head_dim: int = 0
    notes: tuple[str, ...] = ()
    # config.json's quantization_config.quant_method (None: not quantized): the published or local
    # checkpoint's own format, which decides whether vLLM needs a --quantization flag.
    quant_method: str | None = None

    @property
    def is_moe(self) -> bool:
        return self.routed_experts > 0

    @property
    def moe_layers(self) -> int:
        return self.layers - self.first_dense_layers if self.is_moe else 0

    @property
    def kv_elements_per_token_per_layer(self) -> int:
        """What one layer caches per token. MLA keeps one compressed latent plus the shared rope key for all
        heads (transformers >= 5 caches exactly that); MHA/GQA keep a K and a V per KV head."""
        if self.attention is AttentionKind.MLA:
            return self.kv_lora_rank + self.qk_rope_head_dim
        return 2 * self.kv_heads * self.head_dim

    @property
    def mla_expanded_per_token_per_head(self) -> int:
        """Elements MLA decompresses per attended token and head: the up-projection's output (no-rope key
        and value) and the assembled key (no-rope part + the shared rope part)."""
        return 2 * self.qk_nope_head_dim + self.qk_rope_head_dim + self.v_head_dim

    @property
    def params(self) -> ParamCount:
        return count_params(self)

    def to_dict(self) -> dict[str, Any]:
        p = self.params
        return {
            "name": self.name,
            "source": self.source,
            "model_type": self.model_type,
            "attention": self.attention.value,
            "layers": self.layers,
            "hidden_size": self.hidden_size,
            "heads": self.heads,
            "kv_heads": self.kv_heads,
            "vocab_size": self.vocab_size,
            "max_context": self.max_context,
            "native_precision": self.native_precision.value,
            "quant_method": self.quant_method,
            "routed_experts": self.routed_experts,
            "params_b": round(p.total / 1e9, 3),
            "active_params_b": round(p.active / 1e9, 3),
            "kv_cache_bytes_per_token_bf16": self.layers * self.kv_elements_per_token_per_layer * 2,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class ParamCount:
    embedding: int
    lm_head: int
    attention: int  # linear projections of all layers
    mlp: int  # dense MLPs and all experts (routed and shared)
    other: int  # norms, biases, routers: small and never quantized
    active: int  # parameters one token touches (MoE: only its experts)

    @property
    def linear(self) -> int:
        """What weight-only quantization (fp8, int8, int4) stores narrower."""
        return self.attention + self.mlp

    @property
    def total(self) -> int:
        return self.embedding + self.lm_head + self.attention + self.mlp + self.other


def count_params(m: ModelSpec) -> ParamCount:
    h = m.hidden_size
    if m.attention is AttentionKind.MLA:
        qk = m.qk_nope_head_dim + m.qk_rope_head_dim
        q = h * m.heads * qk if m.q_lora_rank is None else h * m.q_lora_rank + m.q_lora_rank * m.heads * qk
        attn = (
            q
            + h * (m.kv_lora_rank + m.qk_rope_head_dim)
            + m.kv_lora_rank * m.heads * (m.qk_nope_head_dim + m.v_head_dim)
            + m.heads * m.v_head_dim * h
        )
        attn_norms = (m.q_lora_rank or 0) + m.kv_lora_rank
    else:
        attn = 2 * h * m.heads * m.head_dim + 2 * h * m.kv_heads * m.head_dim
        attn_norms = (m.heads + 2 * m.kv_heads) * m.head_dim if m.attention_bias else 0
    dense_layers = m.first_dense_layers if m.is_moe else m.layers
    dense_mlp = 3 * h * m.intermediate_size
    expert = 3 * h * m.moe_intermediate_size
    moe_mlp = (m.routed_experts + m.shared_experts) * expert
    router = m.routed_experts * h + m.routed_experts  # gate weight + V3's score-correction bias
    mlp = dense_layers * dense_mlp + m.moe_layers * moe_mlp
    other = m.layers * (2 * h + attn_norms) + h + m.moe_layers * router
    embedding = m.vocab_size * h
    lm_head = 0 if m.tie_embeddings else m.vocab_size * h
    active_mlp = dense_layers * dense_mlp + m.moe_layers * (m.experts_per_token + m.shared_experts) * expert
    active = lm_head + m.layers * attn + active_mlp + other + (embedding if m.tie_embeddings else 0)
    return ParamCount(embedding, lm_head, m.layers * attn, mlp, other, active)


def _quant_method(config: Mapping[str, Any]) -> str | None:
    quant = config.get("quantization_config") or {}
    method = str(quant.get("quant_method", "") if isinstance(quant, Mapping) else "").strip().lower()
    return method or None


def _native_precision(config: Mapping[str, Any]) -> Precision:
    quant = config.get("quantization_config") or {}
    method = str(quant.get("quant_method", "")).lower()
    if method == "fp8":
        return Precision.FP8
    if method in ("awq", "gptq") or quant.get("bits") == 4 or quant.get("load_in_4bit"):
        return Precision.INT4
    if quant.get("load_in_8bit") or quant.get("bits") == 8:
        return Precision.INT8
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
    return {"float32": Precision.FP32, "float16": Precision.FP16}.get(dtype, Precision.BF16)


_REQUIRED = ("hidden_size", "num_hidden_layers", "num_attention_heads", "vocab_size")
_MLA_TYPES = ("deepseek_v2", "deepseek_v3", "kimi_k2")


def spec_from_config(config: Mapping[str, Any], name: str, source: str) -> ModelSpec:
    """Analyse a Hugging Face `config.json` (already parsed). Raises PlannerInputError naming missing keys."""
    missing = [k for k in _REQUIRED if not isinstance(config.get(k), int) or config[k] <= 0]
    if missing:
        raise PlannerInputError(
            [
                Problem(
                    MODEL_DIR_KEY,
                    f"{source}/config.json lacks positive integers for {', '.join(missing)}",
                    "point it at a Hugging Face causal-LM directory (config.json beside the weights)",
                )
            ]
        )
    model_type = str(config.get("model_type", "unknown"))
    heads = int(config["num_attention_heads"])
    hidden = int(config["hidden_size"])
    kv_heads = int(config.get("num_key_value_heads") or heads)
    is_mla = model_type in _MLA_TYPES and config.get("kv_lora_rank")
    # DeepSeek's MoE configs describe the dense FFN with intermediate_size and experts separately.
    routed = int(config.get("n_routed_experts") or config.get("num_local_experts") or 0)
    notes: list[str] = []
    if config.get("num_nextn_predict_layers"):
        notes.append("the multi-token-prediction layer is not loaded for serving")
    common: dict[str, Any] = dict(
        name=name,
        source=source,
        model_type=model_type,
        layers=int(config["num_hidden_layers"]),
        hidden_size=hidden,
        intermediate_size=int(config.get("intermediate_size") or 4 * hidden),
        heads=heads,
        kv_heads=kv_heads,
        vocab_size=int(config["vocab_size"]),
        max_context=int(config.get("max_position_embeddings") or 4096),
        native_precision=_native_precision(config),
        quant_method=_quant_method(config),
        tie_embeddings=bool(config.get("tie_word_embeddings", False)),
        # Qwen2 always has q/k/v biases; Llama-style configs say so explicitly.
        attention_bias=bool(config.get("attention_bias", model_type == "qwen2")),
        routed_experts=routed,
        shared_experts=int(config.get("n_shared_experts") or 0),
        experts_per_token=int(config.get("num_experts_per_tok") or 0),
        moe_intermediate_size=int(config.get("moe_intermediate_size") or 0),
        first_dense_layers=int(config.get("first_k_dense_replace") or 0) if routed else 0,
        notes=tuple(notes),
    )
    if is_mla:
        return ModelSpec(
            **common,
            attention=AttentionKind.MLA,
            head_dim=int(config.get("qk_nope_head_dim", 0)) + int(config.get("qk_rope_head_dim", 0)),
            q_lora_rank=config.get("q_lora_rank"),
            kv_lora_rank=int(config["kv_lora_rank"]),
            qk_nope_head_dim=int(config.get("qk_nope_head_dim", 0)),
            qk_rope_head_dim=int(config.get("qk_rope_head_dim", 0)),
            v_head_dim=int(config.get("v_head_dim", 0)),
        )
    head_dim = int(config.get("head_dim") or hidden // heads)
    kind = AttentionKind.MHA if kv_heads == heads else AttentionKind.GQA
    return ModelSpec(**common, attention=kind, head_dim=head_dim)


def load_model_dir(path: str | Path, name: str | None = None) -> ModelSpec:
    """Analyse a local model directory on the controller (its config.json; the weights are not read)."""
    directory = Path(path).expanduser()
    config_file = directory / "config.json"
    if not config_file.is_file():
        raise PlannerInputError(
            [
                Problem(
                    MODEL_DIR_KEY,
                    f"{directory} has no config.json",
                    "give a model directory that exists on the controller (e.g. made by "
                    "`provision model make-tiny`), or use deepseek_model with a catalog name",
                )
            ]
        )
    try:
        config = json.loads(config_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PlannerInputError(
            [Problem(MODEL_DIR_KEY, f"{config_file} cannot be read: {exc}", "restore a valid config.json")]
        ) from exc
    if not isinstance(config, dict):
        raise PlannerInputError([Problem(MODEL_DIR_KEY, f"{config_file} is not a JSON object", "restore it")])
    return spec_from_config(config, name or directory.name, str(directory))


# --- The catalog: numbers copied from each model's config.json on the Hugging Face Hub. ---

_V3 = {
    "model_type": "deepseek_v3",
    "vocab_size": 129280,
    "hidden_size": 7168,
    "intermediate_size": 18432,
    "moe_intermediate_size": 2048,
    "num_hidden_layers": 61,
    "num_nextn_predict_layers": 1,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "n_shared_experts": 1,
    "n_routed_experts": 256,
    "num_experts_per_tok": 8,
    "first_k_dense_replace": 3,
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "max_position_embeddings": 163840,
    "torch_dtype": "bfloat16",
    "quantization_config": {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]},
}
_V2 = {
    "model_type": "deepseek_v2",
    "vocab_size": 102400,
    "hidden_size": 5120,
    "intermediate_size": 12288,
    "moe_intermediate_size": 1536,
    "num_hidden_layers": 60,
    "num_attention_heads": 128,
    "num_key_value_heads": 128,
    "n_shared_experts": 2,
    "n_routed_experts": 160,
    "num_experts_per_tok": 6,
    "first_k_dense_replace": 1,
    "q_lora_rank": 1536,
    "kv_lora_rank": 512,
    "qk_nope_head_dim": 128,
    "qk_rope_head_dim": 64,
    "v_head_dim": 128,
    "max_position_embeddings": 163840,
    "torch_dtype": "bfloat16",
}
_V2_LITE = {
    **_V2,
    "hidden_size": 2048,
    "intermediate_size": 10944,
    "moe_intermediate_size": 1408,
    "num_hidden_layers": 27,
    "num_attention_heads": 16,
    "num_key_value_heads": 16,
    "n_routed_experts": 64,
    "q_lora_rank": None,
}


def _dense(
    model_type: str, vocab: int, hidden: int, inter: int, layers: int, heads: int, kv: int, ctx: int
) -> dict:
    return {
        "model_type": model_type,
        "vocab_size": vocab,
        "hidden_size": hidden,
        "intermediate_size": inter,
        "num_hidden_layers": layers,
        "num_attention_heads": heads,
        "num_key_value_heads": kv,
        "max_position_embeddings": ctx,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
    }


_CATALOG_CONFIGS: dict[str, tuple[str, dict[str, Any]]] = {
    "deepseek-v3": ("deepseek-ai/DeepSeek-V3", _V3),
    "deepseek-r1": ("deepseek-ai/DeepSeek-R1", _V3),
    "deepseek-v2": ("deepseek-ai/DeepSeek-V2", _V2),
    "deepseek-coder-v2": ("deepseek-ai/DeepSeek-Coder-V2-Instruct", _V2),
    "deepseek-coder-v2-lite": ("deepseek-ai/DeepSeek-Coder-V2-Lite-Instruct", _V2_LITE),
    "deepseek-llm-7b": (
        "deepseek-ai/deepseek-llm-7b-chat",
        _dense("llama", 102400, 4096, 11008, 30, 32, 32, 4096),
    ),
    "deepseek-llm-67b": (
        "deepseek-ai/deepseek-llm-67b-chat",
        _dense("llama", 102400, 8192, 22016, 95, 64, 8, 4096),
    ),
    "deepseek-r1-distill-qwen-1.5b": (
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B",
        _dense("qwen2", 151936, 1536, 8960, 28, 12, 2, 131072),
    ),
    "deepseek-r1-distill-qwen-7b": (
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-7B",
        _dense("qwen2", 152064, 3584, 18944, 28, 28, 4, 131072),
    ),
    "deepseek-r1-distill-qwen-14b": (
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-14B",
        _dense("qwen2", 152064, 5120, 13824, 48, 40, 8, 131072),
    ),
    "deepseek-r1-distill-qwen-32b": (
        "deepseek-ai/DeepSeek-R1-Distill-Qwen-32B",
        _dense("qwen2", 152064, 5120, 27648, 64, 40, 8, 131072),
    ),
    "deepseek-r1-distill-llama-8b": (
        "deepseek-ai/DeepSeek-R1-Distill-Llama-8B",
        _dense("llama", 128256, 4096, 14336, 32, 32, 8, 131072),
    ),
    "deepseek-r1-distill-llama-70b": (
        "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
        _dense("llama", 128256, 8192, 28672, 80, 64, 8, 131072),
    ),
}

CATALOG: dict[str, ModelSpec] = {
    name: spec_from_config(config, name, hub_id) for name, (hub_id, config) in _CATALOG_CONFIGS.items()
}


def model_names() -> list[str]:
    return list(CATALOG)


def resolve_model(name: object = None, model_dir: object = None) -> ModelSpec:
    """A catalog model by name, or the analysis of a local directory; the directory wins when both are set
    because it names the exact weights that will be served."""
    if model_dir not in (None, ""):
        if not isinstance(model_dir, str | Path):
            raise PlannerInputError(
                [Problem(MODEL_DIR_KEY, f"{model_dir!r} is not a path", "give a directory")]
            )
        return load_model_dir(model_dir)
    if name in (None, ""):
        raise PlannerInputError(
            [
                Problem(
                    MODEL_KEY,
                    "neither deepseek_model nor deepseek_model_dir is set",
                    f"set deepseek_model to one of {', '.join(CATALOG)}, or deepseek_model_dir to a local "
                    "directory with config.json",
                )
            ]
        )
    if not isinstance(name, str) or name not in CATALOG:
        close = difflib.get_close_matches(str(name), CATALOG, n=2, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise PlannerInputError(
            [
                Problem(
                    MODEL_KEY,
                    f"{name!r} is not in the model catalog",
                    f"{hint}use one of {', '.join(CATALOG)}, or deepseek_model_dir for a local model",
                )
            ]
        )
    return CATALOG[name]
