"""Assembling a daemon from its config: the load plan, the engine with the right backend, the app state.

Kept apart from `server.py` so tests and the benchmark build exactly what production builds, then run it
however they like (uvicorn in a thread, or an in-process engine call).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from deepseek_node.daemon.config import ConfigError, DaemonConfig, EngineKind
from deepseek_node.daemon.engines.builtin.loading import LoadPlan, check_model_dir, plan_load, probe_gpus
from deepseek_node.daemon.gateway.audit import AuditLog
from deepseek_node.daemon.gateway.auth import KeyStore
from deepseek_node.daemon.gateway.metrics import Metrics

__all__ = ["build_state", "default_served_name", "prepare"]

log = logging.getLogger("deepseek_node.daemon.runtime")


def prepare(config: DaemonConfig) -> LoadPlan:
    """Start-time checks that need no model load; raises ConfigError with a message for the operator."""
    data = check_model_dir(config.model)
    qc = data.get("quantization_config")
    checkpoint_quant = qc.get("quant_method") if isinstance(qc, dict) else None
    if config.engine.kind is EngineKind.VLLM:
        return _vllm_plan(config, checkpoint_quant)
    return plan_load(config.model, probe_gpus(), checkpoint_quant=checkpoint_quant)


def _vllm_plan(config: DaemonConfig, checkpoint_quant: str | None) -> LoadPlan:
    """vLLM places and loads the model itself; what the gateway can check is that it can start it."""
    v = config.vllm
    assert v is not None
    if v.python is not None and not v.python.is_file():
        raise ConfigError(
            f"vllm.python {v.python} does not exist: install the engine's virtualenv from the bundle "
            "(the inference_daemon role does) or set engine.kind: builtin"
        )
    if v.api_key_file is not None and not v.api_key_file.is_file():
        raise ConfigError(
            f"vllm.api_key_file {v.api_key_file} does not exist: the engine unit's key is missing"
        )
    m = config.model
    return LoadPlan(
        device=m.device.value,
        dtype=m.dtype.value,
        quantization=m.quantization,
        gpus=[],
        device_map=None,
        quant_library=checkpoint_quant,
        notes=[
            f"served by vLLM ({'started by the daemon' if v.managed else 'its own unit at ' + str(v.url)}), "
            f"tensor x pipeline parallel {m.tensor_parallel} x {m.pipeline_parallel}"
        ],
    )


def default_served_name(model_dir: Path) -> str:
    """The API's model id for a directory when none is given: the model's name, also for a host's
    versioned store (<models_dir>/<name>/current or <name>/<version>), never "current" or a version id."""
    if model_dir.name == "current" and model_dir.is_symlink():
        return model_dir.parent.resolve().name
    resolved = model_dir.resolve()
    store_link = resolved.parent / "current"
    if store_link.is_symlink() and store_link.resolve() == resolved:
        return resolved.parent.name
    return resolved.name


def sampling_defaults(model_dir: Path) -> dict[str, float]:
    """temperature / top_p the checkpoint recommends (generation_config.json), when it samples by default."""
    try:
        data = json.loads((model_dir / "generation_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("do_sample") is False:
        return {}
    out: dict[str, float] = {}
    for key, low, high in (("temperature", 0.0, 2.0), ("top_p", 0.0, 1.0)):
        value = data.get(key)
        if isinstance(value, int | float) and not isinstance(value, bool) and low <= value <= high:
            out[key] = float(value)
    return out


def build_state(
    config: DaemonConfig,
    plan: LoadPlan,
    *,
    on_fatal: Callable[[str], None] | None = None,
    audit_stream: TextIO | None = None,
    gpu_metrics: bool = True,
) -> Any:
    from deepseek_node.daemon.gateway.api import DaemonState

    metrics = Metrics(config.model.served_name, gpu=gpu_metrics, tls_cert=config.server.tls_cert)
    engine: Any
    if config.engine.kind is EngineKind.VLLM:
        from deepseek_node.daemon.engines.vllm import VllmEngine

        engine = VllmEngine(config, on_fatal=on_fatal)
        if config.group is not None:
            metrics.serving_group(
                config.group.name,
                [w.host for w in config.group.workers],
                lambda: [host for host, _ in engine.missing_workers],
            )
    else:
        from deepseek_node.daemon.engines.builtin.assemble import build_engine

        engine = build_engine(config, plan, metrics, on_fatal)
    return DaemonState(
        config=config,
        engine=engine,
        keys=KeyStore(config.auth),
        audit=AuditLog(config.audit, stream=audit_stream),
        metrics=metrics,
        load_plan=plan.describe(),
        sampling_defaults=sampling_defaults(config.model.path),
    )
