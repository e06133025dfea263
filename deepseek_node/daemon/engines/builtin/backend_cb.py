"""Backend over transformers' own continuous batching (`ContinuousBatchingManager`, paged KV cache).

What transformers gives: the scheduler (requests join and leave the batch token by token), the paged KV
cache with prefix sharing, chunked prefill, cancellation, streaming outputs delivered on our event loop
(`register_result_handler`), CUDA graphs on GPUs.

What had to be added here, and why:
* Output collection in a thread of ours reading the manager's queue, so the backend needs no event loop
  (it runs in the engine process).
* Per-request sampling. The manager's sampling switch (`do_sample`) is global and it has no per-request
  seed; its per-request temperature/top-p processors only exist when the *global* defaults are not 1.0.
  So the manager runs greedy (argmax) and three processors of ours do the work per row: temperature,
  top-p, then a sampler that picks the token with counter-based noise (`sampling.choose`) and leaves a
  one-hot row, which argmax then returns. Seeded requests are reproducible whatever batch they share, and
  both backends pick tokens the same way.
* Explicit cache sizing: without `num_blocks`/`max_batch_tokens` the manager sizes its cache from all free
  memory (gigabytes and seconds on CPU). Sizes follow the plan: max_running sequences of max_context.
* Admission (bounded queue, 429) stays in `BatchingEngine`: the manager's own queue blocks the caller for
  up to 10 s when full, which an HTTP server must not do.
Do not wrap the manager in `torch.inference_mode()`: its worker thread inherits the mode and breaks.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
from typing import Any

import torch

from deepseek_node.daemon.engines.builtin.engine import Backend, BackendSequence, Sink, TokenUpdate
from deepseek_node.daemon.engines.builtin.sampling import GREEDY, apply_top_p, choose, step_seed

__all__ = ["ContinuousBatchingBackend"]

log = logging.getLogger("deepseek_node.daemon.engines.builtin.backend_cb")

_T, _P, _S = "dsn_temperature", "dsn_top_p", "dsn_seed"


def _processors() -> list[Any]:
    """Build our CB logits processors (imported lazily: transformers is heavy and optional for the API)."""
    from transformers.generation.continuous_batching.cb_logits_processors import (
        ContinuousBatchingLogitsProcessor,
    )

    class Temperature(ContinuousBatchingLogitsProcessor):
        supported_kwargs: dict[str, type] = {_T: float}  # noqa: RUF012 - the base class's protocol
        ignored_kwargs: tuple[str, ...] = ()

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.copy_(torch.ones_like(int32_tensor, dtype=torch.float32).view(torch.int32))

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            temps = [r.state.logit_processor_kwargs.get(_T, 1.0) for r in requests_with_new_token]
            # Temperature 0 is greedy: the sampler takes the argmax, so scale by 1 rather than divide by 0.
            vals = torch.tensor([t if t > 0 else 1.0 for t in temps], dtype=torch.float32)
            return vals.view(torch.int32)

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            return scores / tensor_arg[: scores.size(0)].view(torch.float32).unsqueeze(-1)

    class TopP(ContinuousBatchingLogitsProcessor):
        supported_kwargs: dict[str, type] = {_P: float}  # noqa: RUF012
        ignored_kwargs: tuple[str, ...] = ()

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.copy_(torch.ones_like(int32_tensor, dtype=torch.float32).view(torch.int32))

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            vals = [r.state.logit_processor_kwargs.get(_P, 1.0) for r in requests_with_new_token]
            return torch.tensor(vals, dtype=torch.float32).view(torch.int32)

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            return apply_top_p(scores, tensor_arg[: scores.size(0)].view(torch.float32))

    class Sampler(ContinuousBatchingLogitsProcessor):
        supported_kwargs: dict[str, type] = {_S: int, _T: float}  # noqa: RUF012
        ignored_kwargs: tuple[str, ...] = ()

        def __init__(self) -> None:
            # Tokens drawn so far per request: the index in its noise stream. Counted here (not from the
            # request state) because with async batching the state lags one step behind.
            self.drawn: dict[str, int] = {}
            self.lock = threading.Lock()
            self.cap = 4096

        def fill_defaults(self, int32_tensor: torch.Tensor) -> None:
            int32_tensor.fill_(GREEDY)

        def prepare_tensor_args(self, requests_with_new_token: list[Any]) -> torch.Tensor:
            vals = []
            with self.lock:
                for r in requests_with_new_token:
                    kw = r.state.logit_processor_kwargs
                    rid = r.state.request_id
                    # pop + insert keeps the dict in recency order, so stale entries (a cancel racing a
                    # last step) are the first ones evicted once the cap is reached.
                    k = self.drawn.pop(rid, 0)
                    self.drawn[rid] = k + 1
                    if kw.get(_T, 1.0) <= 0 or _S not in kw:
                        vals.append(GREEDY)
                    else:
                        vals.append(step_seed(kw[_S], k))
                while len(self.drawn) > self.cap:
                    del self.drawn[next(iter(self.drawn))]
            return torch.tensor(vals, dtype=torch.int32)

        def forget(self, rid: str) -> None:
            with self.lock:
                self.drawn.pop(rid, None)

        def __call__(self, scores: torch.Tensor, tensor_arg: torch.Tensor) -> torch.Tensor:
            chosen = choose(scores, tensor_arg[: scores.size(0)].to(torch.int64))
            one_hot = torch.full_like(scores, float("-inf"))
            return one_hot.scatter(-1, chosen.unsqueeze(-1), 0.0)

    return [Temperature(), TopP(), Sampler()]


class ContinuousBatchingBackend(Backend):
    name = "continuous_batching"

    def __init__(
        self,
        model: Any,
        *,
        max_running: int,
        max_context: int,
        max_batch_tokens: int,
        page_size: int = 32,
        num_blocks: int | None = None,
        pad_token_id: int | None = None,
    ) -> None:
        from transformers import GenerationConfig
        from transformers.generation import LogitsProcessorList
        from transformers.generation.configuration_utils import ContinuousBatchingConfig
        from transformers.generation.continuous_batching.cb_logits_processors import (
            ContinuousBatchingLogitsProcessorList,
        )

        self.model = model
        blocks = num_blocks or max_running * (math.ceil(max_context / page_size) + 1)
        gen_config = GenerationConfig(
            do_sample=False, max_new_tokens=max_context, eos_token_id=-1, pad_token_id=pad_token_id
        )
        cb_config = ContinuousBatchingConfig(
            page_size=page_size,
            num_blocks=blocks,
            max_batch_tokens=max(max_batch_tokens, max_running),
            max_requests_per_batch=max_running,
            allow_block_sharing=True,
            max_queue_size=0,
        )
        self.manager = model.init_continuous_batching(
            generation_config=gen_config, continuous_batching_config=cb_config
        )
        procs = _processors()
        self._sampler = procs[-1]
        self._sampler.cap = max(4096, 4 * max_running)
        lp = ContinuousBatchingLogitsProcessorList(LogitsProcessorList(procs))
        lp.tensors_required = len(procs)  # only counted for converted processors upstream; ours are native
        self.manager.logit_processor = lp
        self._sink: Sink | None = None
        # Tokens already reported per live request (outputs carry the whole generation so far).
        self._delivered: dict[str, int] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._collector: threading.Thread | None = None

    def start(self, sink: Sink) -> None:
        self._sink = sink
        self.manager.start()
        self._collector = threading.Thread(target=self._collect, name="cb-collector", daemon=True)
        self._collector.start()

    def _collect(self) -> None:
        """Turn the manager's streamed outputs into token deltas, batching what is ready together.

        Outputs are read from the manager's queue rather than through `register_result_handler`, which
        binds to an asyncio loop: this backend also runs in the engine process, where there is none.
        """
        out_q = self.manager.output_router.output_queue
        while not self._stop.is_set():
            try:
                outputs = [out_q.get(timeout=0.1)]
            except queue.Empty:
                continue
            while True:
                try:
                    outputs.append(out_q.get_nowait())
                except queue.Empty:
                    break
            updates = []
            with self._lock:
                for out in outputs:
                    rid = out.request_id
                    n = self._delivered.get(rid)
                    if n is None:
                        continue  # cancelled, or a late output after the end
                    tokens = list(out.generated_tokens[n:])
                    finished = out.is_finished()
                    if finished:
                        self._forget_locked(rid)
                    else:
                        self._delivered[rid] = n + len(tokens)
                    if tokens or finished:
                        updates.append(TokenUpdate(rid, tokens, finished=finished, error=out.error or None))
            if updates and self._sink:
                self._sink(updates)

    def add(self, seq: BackendSequence) -> None:
        rid = seq.seq_id
        with self._lock:
            self._delivered[rid] = 0
        kwargs: dict[str, Any] = {_T: float(seq.temperature), _P: float(seq.top_p)}
        if seq.temperature > 0:
            kwargs[_S] = int(seq.seed & 0x7FFFFFFFFFFFFFFF)
        rid_out = self.manager.add_request(
            input_ids=list(seq.prompt_ids),
            request_id=rid,
            max_new_tokens=seq.max_new_tokens,
            streaming=True,
            eos_token_id=list(seq.eos_ids) or -1,
            **kwargs,
        )
        if rid_out is None:  # the manager refused (stopping or crashed)
            with self._lock:
                self._forget_locked(rid)
            if self._sink:
                self._sink([TokenUpdate(rid, [], finished=True, error="the inference engine is not running")])

    def _forget_locked(self, rid: str) -> None:
        self._delivered.pop(rid, None)
        self._sampler.forget(rid)

    def cancel(self, seq_id: str) -> None:
        with self._lock:
            known = self._delivered.pop(seq_id, None) is not None
            self._sampler.forget(seq_id)
        if known:
            self.manager.cancel_request(seq_id)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        try:
            self.manager.stop(block=True, timeout=timeout, hard_stop=True)
        except Exception:  # stopping a crashed manager may itself raise; we are exiting anyway
            log.debug("manager stop failed", exc_info=True)
        if self._collector is not None:
            self._collector.join(timeout)

    def kv_cache_usage(self) -> float | None:
        bp = self.manager.batch_processor
        if bp is None:
            return None
        return max(0.0, min(1.0, 1.0 - float(bp.cache.compute_free_capacity(relative=True))))

    def fatal_error(self) -> str | None:
        err = self.manager.background_thread_status.fatal_error
        if err is not None:
            return f"{type(err).__name__}: {err}"
        if not self.manager.is_running():
            return "the continuous-batching thread is not running"
        return None
