"""From the planner's decision (model section of the config) to `from_pretrained` arguments.

`plan_load` is pure (the GPUs and installed libraries are passed in) so every rule is unit-tested without
hardware; it raises `ConfigError` for combinations that cannot work, before the server starts listening,
so a bad plan fails the systemd unit at once with a message instead of a model that never gets ready.

Rules (why):
* dtype auto: bfloat16 where every used GPU has it (compute capability >= 8.0), else float16; float32 on
  CPU (CPU half-precision kernels are slow or missing).
* fp8 needs compute capability >= 8.9 (Ada/Hopper) on every used GPU; transformers' FineGrainedFP8Config.
* int8 / int4 go through bitsandbytes (8-bit LLM.int8 and 4-bit NF4; both also run on CPU), the maintained
  library transformers integrates; torchao is used for int8 when bitsandbytes is absent. Neither is a
  base dependency, so a missing library is a start-time error naming the package to install.
* Placement: one device -> everything on it. tensor_parallel x pipeline_parallel GPUs -> accelerate's
  `device_map="auto"` limited to that many GPUs (layers split across them). transformers' own tensor
  parallelism (`tp_plan="auto"`) needs one process per GPU under torchrun; this daemon is one process, so
  a tensor_parallel > 1 plan is placed with device_map and the log says so.
"""

from __future__ import annotations

import importlib.util
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deepseek_node.daemon.config import ConfigError, Device, DType, ModelConfig, Quantization

__all__ = ["GpuInfo", "LoadPlan", "check_model_dir", "load_model", "plan_load", "probe_gpus"]

log = logging.getLogger("deepseek_node.daemon.engines.builtin.loading")


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    capability: tuple[int, int]
    total_memory: int

    @property
    def bf16(self) -> bool:
        return self.capability >= (8, 0)

    @property
    def fp8(self) -> bool:
        return self.capability >= (8, 9)


@dataclass
class LoadPlan:
    device: str  # "cpu" | "cuda"
    dtype: str  # torch dtype name
    quantization: Quantization
    gpus: list[int]
    device_map: Any
    quant_library: str | None = None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "dtype": self.dtype,
            "quantization": self.quantization.value,
            "quant_library": self.quant_library,
            "gpus": self.gpus,
            "placement": "single device"
            if len(self.gpus) <= 1
            else f"device_map across {len(self.gpus)} GPUs",
            "notes": self.notes,
        }


def probe_gpus() -> list[GpuInfo]:
    import torch

    if not torch.cuda.is_available():
        return []
    out = []
    for i in range(torch.cuda.device_count()):
        props = torch.cuda.get_device_properties(i)
        out.append(GpuInfo(i, props.name, (props.major, props.minor), props.total_memory))
    return out


def _has_module(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


def read_model_config(path: Path) -> dict[str, Any]:
    try:
        data = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"model.path {path}: no config.json (is this a Hugging Face model directory?)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ConfigError(f"model.path {path}: cannot read config.json: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"model.path {path}: config.json is not a JSON object")
    return data


def check_model_dir(cfg: ModelConfig) -> dict[str, Any]:
    """Cheap checks before listening: the directory is a model, its context fits the plan."""
    path = cfg.path
    if not path.is_dir():
        raise ConfigError(f"model.path {path} does not exist or is not a directory")
    data = read_model_config(path)
    weights = list(path.glob("*.safetensors")) + list(path.glob("*.bin"))
    if not weights:
        raise ConfigError(f"model.path {path}: no *.safetensors weights found")
    if not any((path / f).exists() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")):
        raise ConfigError(f"model.path {path}: no tokenizer files (tokenizer.json / tokenizer_config.json)")
    text = data.get("text_config") if isinstance(data.get("text_config"), dict) else data
    limit = text.get("max_position_embeddings") if isinstance(text, dict) else None
    if isinstance(limit, int) and cfg.max_context > limit:
        raise ConfigError(
            f"model.max_context ({cfg.max_context}) exceeds the model's max_position_embeddings ({limit}): "
            "lower max_context in the plan"
        )
    return data


def _checkpoint_format(checkpoint_quant: str | None) -> Quantization | None:
    """The plan precision a checkpoint's own quantization is (fp8 for DeepSeek-V3/R1), if it is one."""
    return Quantization.FP8 if (checkpoint_quant or "").lower() == "fp8" else None


def plan_load(
    cfg: ModelConfig,
    gpus: list[GpuInfo],
    has_module: Callable[[str], bool] = _has_module,
    checkpoint_quant: str | None = None,
) -> LoadPlan:
    """Resolve device, dtype, quantization and placement; raise ConfigError for what cannot work."""
    notes: list[str] = []
    wanted_gpus = cfg.tensor_parallel * cfg.pipeline_parallel

    if cfg.device is Device.CUDA and not gpus:
        raise ConfigError(
            "model.device is cuda but no CUDA GPU is visible: check the driver, or set device: cpu"
        )
    device = "cuda" if (cfg.device is Device.CUDA or (cfg.device is Device.AUTO and gpus)) else "cpu"

    if device == "cpu" and wanted_gpus > 1:
        raise ConfigError(
            f"tensor_parallel x pipeline_parallel = {wanted_gpus} needs that many GPUs, but the model runs on "
            "CPU: set both to 1 or use device: cuda"
        )
    if device == "cuda" and wanted_gpus > len(gpus):
        raise ConfigError(
            f"tensor_parallel x pipeline_parallel = {wanted_gpus} GPUs, but only {len(gpus)} are visible"
        )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError(
            "the daemon runs as one process; do not launch it with torchrun (WORLD_SIZE > 1): multi-GPU plans "
            "are placed with device_map inside one process"
        )
    used = gpus[:wanted_gpus] if device == "cuda" else []

    # dtype
    if cfg.dtype is DType.AUTO:
        dtype = "float32" if device == "cpu" else "bfloat16" if all(g.bf16 for g in used) else "float16"
    else:
        dtype = cfg.dtype.value
    if device == "cpu" and dtype == "float16":
        raise ConfigError("dtype float16 is not supported on CPU: use float32 (or bfloat16)")
    if device == "cuda" and dtype == "bfloat16" and not all(g.bf16 for g in used):
        names = ", ".join(f"{g.name} (sm_{g.capability[0]}{g.capability[1]})" for g in used if not g.bf16)
        raise ConfigError(f"dtype bfloat16 needs compute capability >= 8.0; {names} lacks it: use float16")

    # quantization: a checkpoint in the plan's own format (DeepSeek-V3/R1 ship fp8) loads as it is.
    q = cfg.quantization
    native = _checkpoint_format(checkpoint_quant)
    if native is not None and q not in (Quantization.NONE, native):
        raise ConfigError(
            f"the plan asks for {q.value} but the checkpoint is already quantized ({checkpoint_quant}): "
            f"give a checkpoint in the plan's format, or plan for {native.value if native else checkpoint_quant}"
        )
    if checkpoint_quant and native is None and q is not Quantization.NONE:
        raise ConfigError(
            f"the checkpoint is already quantized ({checkpoint_quant}); set quantization: none to load it as it is"
        )
    wanted = native or q
    lib: str | None = None
    if wanted is Quantization.FP8:
        if device != "cuda":
            raise ConfigError(
                "fp8 weights need an Ada or Hopper GPU (compute capability >= 8.9) in the builtin engine; "
                "on CPU serve this checkpoint with the vLLM engine or use a bfloat16 checkpoint"
                if native
                else "quantization fp8 needs an Ada or Hopper GPU (compute capability >= 8.9); on CPU use "
                "int8, int4 or none"
            )
        lacking = [g for g in used if not g.fp8]
        if lacking:
            names = ", ".join(f"{g.name} (sm_{g.capability[0]}{g.capability[1]})" for g in lacking)
            raise ConfigError(
                f"fp8 needs compute capability >= 8.9; {names} lacks it: use int8 or "
                "bfloat16/float16 without quantization"
            )
        if dtype == "float32":
            raise ConfigError(
                "fp8 weights: quantization fp8 computes in bfloat16: set dtype auto or bfloat16"
            )
        if not has_module("kernels"):
            # transformers runs block-fp8 through a kernel it fetches from the Hugging Face Hub on first use.
            raise ConfigError(
                "fp8 in the builtin engine needs transformers' fp8 kernel, which it fetches from the Hugging "
                "Face Hub (the `kernels` package), and an air-gapped node cannot: serve this model with the "
                "vLLM engine (deepseek_engine: vllm), which carries its own fp8 kernels"
            )
        lib = "transformers-fp8"
    elif q in (Quantization.INT8, Quantization.INT4):
        if has_module("bitsandbytes"):
            lib = "bitsandbytes"
        elif q is Quantization.INT8 and has_module("torchao"):
            lib = "torchao"
        else:
            pkg = "bitsandbytes" if q is Quantization.INT4 else "bitsandbytes (or torchao)"
            raise ConfigError(
                f"quantization {q.value} needs {pkg}, which is not installed in the daemon's "
                "environment: add it to the offline bundle or set quantization: none"
            )
    if native is not None:
        # The checkpoint's quantization_config applies itself on load; nothing is quantized here.
        notes.append(f"checkpoint's own precision ({checkpoint_quant}), loaded as it is")
        q = Quantization.NONE
    elif checkpoint_quant:
        notes.append(f"checkpoint carries its own quantization ({checkpoint_quant})")

    # placement
    if device == "cpu":
        device_map: Any = "cpu"
    elif len(used) == 1:
        device_map = {"": used[0].index}
    else:
        device_map = "auto"
        if cfg.tensor_parallel > 1:
            notes.append(
                f"tensor_parallel={cfg.tensor_parallel} placed as a layer split across {len(used)} GPUs with "
                "accelerate device_map (in-process; transformers TP needs one process per GPU)"
            )
    return LoadPlan(
        device=device,
        dtype=dtype,
        quantization=q,
        gpus=[g.index for g in used],
        device_map=device_map,
        quant_library=lib,
        notes=notes,
    )


def _quantization_config(plan: LoadPlan, model_config: dict[str, Any]) -> Any:
    import torch

    if plan.quantization is Quantization.NONE:
        return None
    if plan.quantization is Quantization.FP8:
        from transformers import FineGrainedFP8Config

        return FineGrainedFP8Config()
    if plan.quant_library == "bitsandbytes":
        from transformers import BitsAndBytesConfig

        # bitsandbytes' int8 matmul takes 2-D/3-D inputs; MLA (DeepSeek-V2/V3) applies kv_b_proj to a 4-D
        # latent, which fails at the first forward, so that one small projection stays unquantized.
        skip = ["lm_head"] + (["kv_b_proj"] if model_config.get("kv_lora_rank") else [])
        if plan.quantization is Quantization.INT8:
            return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=getattr(torch, plan.dtype),
            llm_int8_skip_modules=skip,
        )
    from torchao.quantization import Int8WeightOnlyConfig  # type: ignore[import-not-found]
    from transformers import TorchAoConfig

    return TorchAoConfig(quant_type=Int8WeightOnlyConfig())


def cpu_threads(requested: int | None) -> int:
    if requested is not None:
        return requested
    return max(1, (os.cpu_count() or 2) - 1)


def load_model(cfg: ModelConfig, plan: LoadPlan, threads: int | None = None) -> tuple[Any, Any]:
    """Load tokenizer and model from the local directory only (air-gapped: never the Hub)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a tqdm bar per load is noise in the journal
    if plan.device == "cpu":
        torch.set_num_threads(cpu_threads(threads))

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    tokenizer = AutoTokenizer.from_pretrained(str(cfg.path), local_files_only=True)
    kwargs: dict[str, Any] = {
        "local_files_only": True,
        "dtype": getattr(torch, plan.dtype),
        "device_map": plan.device_map,
    }
    if plan.device == "cuda" and len(plan.gpus) > 1:
        kwargs["max_memory"] = {
            i: int(torch.cuda.get_device_properties(i).total_memory * 0.9) for i in plan.gpus
        }
    qc = _quantization_config(plan, read_model_config(cfg.path))
    if qc is not None:
        kwargs["quantization_config"] = qc
    model = AutoModelForCausalLM.from_pretrained(str(cfg.path), **kwargs)
    model.eval()
    return model, tokenizer
