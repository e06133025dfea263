"""Loading a model into the builtin engine and choosing its backend (in the engine process or in-process).

Imported by the engine process (`process.py`) and by `assemble.py`; it imports neither, so the two
sides of the process boundary share it without a cycle.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from deepseek_node.daemon.config import DaemonConfig, EngineBackend
from deepseek_node.daemon.engines.builtin.engine import Backend
from deepseek_node.daemon.engines.builtin.loading import LoadPlan, load_model

__all__ = ["choose_backend", "load_local_backend"]

log = logging.getLogger("deepseek_node.daemon.engines.builtin")


def _eos_ids(model: Any, tokenizer: Any) -> tuple[int, ...]:
    eos = getattr(model.generation_config, "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        return ()
    return tuple(int(e) for e in (eos if isinstance(eos, list | tuple) else [eos]) if int(e) >= 0)


def _probe_cb(model: Any, prompt: list[int], eos: tuple[int, ...]) -> str | None:
    """Try transformers' continuous batching on this model; the reason it cannot be used, or None."""
    from transformers import GenerationConfig
    from transformers.generation.configuration_utils import ContinuousBatchingConfig

    cfg = ContinuousBatchingConfig(
        page_size=16, num_blocks=8, max_batch_tokens=64, max_requests_per_batch=2, max_memory_percent=0.05
    )
    gen = GenerationConfig(do_sample=False, max_new_tokens=2, eos_token_id=list(eos) or -1)
    cb_log = logging.getLogger("ContinuousBatchingLogger")
    level = cb_log.level
    cb_log.setLevel(logging.CRITICAL)  # the expected failure of an unsupported model would log a traceback
    try:
        out = model.generate_batch(
            [prompt], generation_config=gen, continuous_batching_config=cfg, warmup=False
        )
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    finally:
        cb_log.setLevel(level)
    if not out:
        return "no output"
    result = next(iter(out.values()))
    if result.error:
        return result.error
    if len(result.generated_tokens) < 1:
        return "no token generated"
    return None


def _step_supported(model: Any) -> str | None:
    from deepseek_node.daemon.engines.builtin.backend_step import check_step_supported

    try:
        check_step_supported(model)
    except RuntimeError as exc:
        return str(exc)
    return None


def choose_backend(
    config: DaemonConfig, device: str, model: Any, tokenizer: Any, eos: tuple[int, ...]
) -> EngineBackend:
    """`auto`: transformers' continuous batching on GPUs where the model supports it; the step engine on CPU.

    Measured on CPU (tiny Llama, 64 concurrent requests, engine only): the step engine 22k tok/s,
    transformers' paged manager 6-8k tok/s (its per-step bookkeeping dominates without CUDA graphs and
    paged-attention kernels). On GPUs the paged cache, CUDA graphs and no cache copies on join/leave
    are what matter, so there the manager is preferred; MLA models (DeepSeek-V2/V3) fail its probe and
    use the step engine everywhere.
    """
    choice = config.engine.backend
    if choice is not EngineBackend.AUTO:
        return choice
    if device != "cuda" and _step_supported(model) is None:
        return EngineBackend.STEP
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    probe_ids = list(tokenizer.encode("Hello", add_special_tokens=True)) or [pad]
    reason = _probe_cb(model, probe_ids, eos)
    if reason is None:
        return EngineBackend.CONTINUOUS_BATCHING
    log.warning(
        "transformers continuous batching does not support %s (%s): using the step engine",
        type(model).__name__,
        reason.splitlines()[0][:300],
    )
    return EngineBackend.STEP


def _make_backend(
    config: DaemonConfig, device: str, model: Any, tokenizer: Any, eos: tuple[int, ...]
) -> Backend:
    from deepseek_node.daemon.engines.builtin.backend_cb import ContinuousBatchingBackend
    from deepseek_node.daemon.engines.builtin.backend_step import StepBackend, check_step_supported

    e, m = config.engine, config.model
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else (eos[0] if eos else 0)
    choice = choose_backend(config, device, model, tokenizer, eos)
    if choice is EngineBackend.CONTINUOUS_BATCHING:
        return ContinuousBatchingBackend(
            model,
            max_running=e.max_running,
            max_context=m.max_context,
            max_batch_tokens=e.max_batch_tokens,
            page_size=e.kv_page_size,
            num_blocks=e.kv_cache_blocks,
            pad_token_id=pad,
        )
    check_step_supported(model)
    return StepBackend(
        model,
        max_running=e.max_running,
        max_context=m.max_context,
        max_batch_tokens=e.max_batch_tokens,
        pad_token_id=pad,
    )


def load_local_backend(config: DaemonConfig, plan: LoadPlan) -> tuple[Backend, Any, dict[str, Any]]:
    """Load the model here and pick its backend (in the engine process, or in-process when configured)."""
    t0 = time.monotonic()
    model, tokenizer = load_model(config.model, plan, config.engine.cpu_threads)
    eos = _eos_ids(model, tokenizer)
    backend = _make_backend(config, plan.device, model, tokenizer, eos)
    log.info(
        "model %s loaded in %.1fs (%s, backend %s)",
        config.model.served_name,
        time.monotonic() - t0,
        plan.describe(),
        backend.name,
    )
    return backend, tokenizer, {"eos_ids": eos, "architecture": type(model).__name__}
