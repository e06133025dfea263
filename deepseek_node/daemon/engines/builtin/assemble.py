"""The builtin engine assembled from a config: the model in its own process (or a thread), batching in front."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from deepseek_node.daemon.config import DaemonConfig
from deepseek_node.daemon.engines.builtin.engine import Backend, BatchingEngine, Observer
from deepseek_node.daemon.engines.builtin.load import load_local_backend
from deepseek_node.daemon.engines.builtin.loading import LoadPlan

__all__ = ["build_engine"]


def build_engine(
    config: DaemonConfig,
    plan: LoadPlan,
    metrics: Observer | None = None,
    on_fatal: Callable[[str], None] | None = None,
) -> BatchingEngine:
    abort = threading.Event()  # set if the daemon stops before the model is loaded

    def loader() -> tuple[Backend, Any, dict[str, Any]]:
        if not config.engine.separate_process:
            return load_local_backend(config, plan)
        from transformers import AutoTokenizer

        from deepseek_node.daemon.engines.builtin.process import ProcessBackend

        # The API process needs only the tokenizer (chat template, detokenization); the weights live in
        # the engine process.
        tokenizer = AutoTokenizer.from_pretrained(str(config.model.path), local_files_only=True)
        backend = ProcessBackend(config.model_dump(mode="json"), plan, abort=abort)
        info = dict(backend.info)
        info["eos_ids"] = tuple(info.get("eos_ids", ()))
        return backend, tokenizer, info

    return BatchingEngine(
        served_name=config.model.served_name,
        max_context=config.model.max_context,
        max_running=config.engine.max_running,
        max_queue=config.engine.max_queue,
        retry_after_s=config.engine.retry_after_s,
        loader=loader,
        warmup=config.engine.warmup,
        seed=config.engine.seed,
        observer=metrics,
        on_fatal=on_fatal,
        abort_load=abort.set,
    )
