"""A continuous-batching decode loop over the model's ordinary (non-paged) KV cache.

Why this exists: transformers' continuous-batching manager stores K/V in a paged cache shaped for
per-head keys and values; DeepSeek-V2/V3's multi-head latent attention (MLA) caches the compressed latent
(`kv_lora_rank` + rope dims) instead, and the paged allocator rejects it (`index_copy_(): Source/destination
tensor must have same slice shapes`, transformers 5.24). This loop is the correct fallback for such models:

* every step, new sequences are prefilled together (left-padded, up to `max_batch_tokens` prompt tokens),
  their caches are merged into the running batch's `DynamicCache` (left-padding to a common length), and
  one decode step runs for the whole batch, so requests join and leave token by token;
* finished or cancelled rows are dropped from the cache with `index_select`, and columns that became pure
  padding are trimmed, so memory follows the live batch;
* explicit `position_ids` keep rotary positions right under left padding; the 2-D attention mask hides pads.

It is the approach of TGI's original `CausalLM` batching; it costs a cache copy when sequences join or
leave, which the paged manager avoids, so the manager is preferred wherever it works.
"""

from __future__ import annotations

import logging
import queue
import threading
from dataclasses import dataclass, field
from typing import Any

import torch

from deepseek_node.daemon.engines.builtin.engine import Backend, BackendSequence, Sink, TokenUpdate
from deepseek_node.daemon.engines.builtin.sampling import GREEDY, sample, step_seed

__all__ = ["StepBackend"]

_PREFILL_WAIT_STEPS = 3

log = logging.getLogger("deepseek_node.daemon.engines.builtin.backend_step")


@dataclass
class _Row:
    seq: BackendSequence
    length: int = 0  # tokens in the KV cache for this row
    generated: list[int] = field(default_factory=list)
    done: bool = False


class StepBackend(Backend):
    name = "step"

    def __init__(
        self,
        model: Any,
        *,
        max_running: int,
        max_context: int,
        max_batch_tokens: int = 2048,
        pad_token_id: int = 0,
    ) -> None:
        self.model = model
        self.device = next(model.parameters()).device
        self.max_running = max_running
        self.max_context = max_context
        self.max_batch_tokens = max_batch_tokens
        self.pad_token_id = pad_token_id
        self._inbox: queue.SimpleQueue[BackendSequence] = queue.SimpleQueue()
        self._cancels: queue.SimpleQueue[str] = queue.SimpleQueue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._sink: Sink | None = None
        self._error: str | None = None
        # Batch state, owned by the loop thread.
        self._rows: list[_Row] = []
        self._pending: list[BackendSequence] = []
        self._prefilling: list[BackendSequence] = []
        self._pending_steps = 0  # decode steps the oldest pending sequence has waited
        self._cache: Any = None
        self._mask: torch.Tensor | None = None
        self._cached_tokens = 0  # for the KV usage gauge (read from other threads; an int is atomic)

    # -- Backend API (any thread)

    def start(self, sink: Sink) -> None:
        self._sink = sink
        self._thread = threading.Thread(target=self._run, name="step-engine", daemon=True)
        self._thread.start()

    def add(self, seq: BackendSequence) -> None:
        self._inbox.put(seq)
        self._wake.set()

    def cancel(self, seq_id: str) -> None:
        self._cancels.put(seq_id)
        self._wake.set()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def kv_cache_usage(self) -> float:
        # Capacity is what admission allows: max_running sequences of max_context tokens each.
        return min(1.0, self._cached_tokens / float(self.max_running * self.max_context))

    def fatal_error(self) -> str | None:
        if self._error:
            return self._error
        if self._thread is not None and not self._thread.is_alive() and not self._stop.is_set():
            return "the step-engine thread exited"
        return None

    # -- loop

    def _run(self) -> None:
        try:
            # inference_mode is safe here (unlike around transformers' CB thread): everything stays in this thread.
            with torch.inference_mode():
                while not self._stop.is_set():
                    self._take_inbox()
                    if not self._rows and not self._pending:
                        self._wake.wait(0.05)
                        self._wake.clear()
                        continue
                    try:
                        self._step()
                    except torch.OutOfMemoryError as exc:
                        self._out_of_memory(exc)
        except Exception as exc:  # a crash here must be visible (readiness fails, process restarts)
            log.exception("step engine crashed")
            self._error = f"{type(exc).__name__}: {exc}"
            if self._sink:
                ids = [r.seq.seq_id for r in self._rows] + [s.seq_id for s in self._pending]
                self._sink(
                    [TokenUpdate(i, [], finished=True, error="the inference engine failed") for i in ids]
                )

    def _out_of_memory(self, exc: BaseException) -> None:
        """Out of device memory: the sequences in the step fail with a clear error; the engine goes on.

        The batch cache may be half-updated, so every running row and the group being prefilled end
        with an error (the gateway answers them 503 engine_error); waiting sequences stay queued. A
        process restart would reload the model for minutes; this costs the batch in flight.
        """
        victims = [r.seq.seq_id for r in self._rows] + [s.seq_id for s in self._prefilling]
        log.error("out of memory with %d sequences in the batch: failing them (%s)", len(victims), exc)
        self._rows, self._cache, self._mask, self._prefilling = [], None, None, []
        self._cached_tokens = 0
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        if self._sink and victims:
            err = "out of memory in this batch: retry, or send a shorter prompt or a lower max_tokens"
            self._sink([TokenUpdate(i, [], finished=True, error=err) for i in victims])

    def _take_inbox(self) -> None:
        while True:
            try:
                self._pending.append(self._inbox.get_nowait())
            except queue.Empty:
                break
        cancelled: set[str] = set()
        while True:
            try:
                cancelled.add(self._cancels.get_nowait())
            except queue.Empty:
                break
        if cancelled:
            self._pending = [s for s in self._pending if s.seq_id not in cancelled]
            for r in self._rows:
                if r.seq.seq_id in cancelled:
                    r.done = True
            self._compact()

    def _prefill_due(self) -> bool:
        """Whether to prefill now, or let arrivals gather for a few more decode steps.

        Each prefill is a separate forward pass plus a copy of the whole batch cache (the merge); with
        arrivals spread over time, prefilling every step doubled the passes per step and halved the
        batch filled with decoding rows. Waiting at most `_PREFILL_WAIT_STEPS` decode steps (a few ms)
        lets one pass admit a group; an idle engine or a group that fills the free slots goes at once.
        """
        free = self.max_running - len(self._rows)
        if not self._pending or free <= 0:
            return False
        live = sum(1 for r in self._rows if not r.done)
        if live == 0 or len(self._pending) >= min(free, max(1, self.max_running // 4)):
            return True
        self._pending_steps += 1
        return self._pending_steps >= _PREFILL_WAIT_STEPS

    def _step(self) -> None:
        updates: list[TokenUpdate] = []
        if self._prefill_due():
            self._pending_steps = 0
            self._prefill(updates)
        if self._rows:
            self._decode(updates)
        if updates and self._sink:
            self._sink(updates)
        self._compact()

    def _admit_group(self) -> list[BackendSequence]:
        group: list[BackendSequence] = []
        budget = self.max_batch_tokens
        while self._pending and len(self._rows) + len(group) < self.max_running:
            n = len(self._pending[0].prompt_ids)
            if group and n > budget:
                break  # a long prompt waits for the next step rather than starving decoding
            group.append(self._pending.pop(0))
            budget -= n
        return group

    def _sample(self, logits: torch.Tensor, rows: list[_Row]) -> list[int]:
        if all(r.seq.temperature <= 0 for r in rows):
            return logits.argmax(dim=-1).tolist()  # all greedy: skip the sampling machinery
        temps = torch.tensor([r.seq.temperature for r in rows], dtype=torch.float32, device=logits.device)
        top_p = (
            torch.tensor([r.seq.top_p for r in rows], dtype=torch.float32, device=logits.device)
            if any(r.seq.top_p < 1.0 for r in rows)
            else None
        )
        seeds = torch.tensor(
            [GREEDY if r.seq.temperature <= 0 else step_seed(r.seq.seed, len(r.generated)) for r in rows],
            dtype=torch.int64,
            device=logits.device,
        )
        return sample(logits, temps, top_p, seeds).tolist()

    def _accept(self, row: _Row, token: int, updates: list[TokenUpdate]) -> None:
        row.generated.append(token)
        s = row.seq
        finished = (
            token in s.eos_ids
            or len(row.generated) >= s.max_new_tokens
            or row.length + 1 >= self.max_context  # the next token would not fit the planned context
        )
        row.done = finished
        updates.append(TokenUpdate(s.seq_id, [token], finished=finished))

    def _prefill(self, updates: list[TokenUpdate]) -> None:
        from transformers import DynamicCache

        group = self._admit_group()
        if not group:
            return
        self._prefilling = group  # what an out-of-memory error in this prefill must fail as well
        width = max(len(s.prompt_ids) for s in group)
        ids = torch.full((len(group), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for i, s in enumerate(group):
            n = len(s.prompt_ids)
            ids[i, width - n :] = torch.tensor(s.prompt_ids, dtype=torch.long)
            mask[i, width - n :] = 1
        ids, mask = ids.to(self.device), mask.to(self.device)
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        out = self.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        new_rows = [_Row(seq=s, length=len(s.prompt_ids)) for s in group]
        tokens = self._sample(out.logits[:, -1, :], new_rows)
        self._merge(cache, mask, new_rows)
        self._prefilling = []
        for row, tok in zip(new_rows, tokens, strict=True):
            self._accept(row, tok, updates)

    def _merge(self, cache: Any, mask: torch.Tensor, rows: list[_Row]) -> None:
        """Append a freshly prefilled group to the running batch, left-padding both to one length."""
        if self._cache is None or not self._rows:
            self._cache, self._mask, self._rows = cache, mask, rows
            return
        assert self._mask is not None
        width = max(self._mask.shape[1], mask.shape[1])

        def pad(t: torch.Tensor, dim: int) -> torch.Tensor:
            missing = width - t.shape[dim]
            if missing == 0:
                return t
            shape = list(t.shape)
            shape[dim] = missing
            return torch.cat([t.new_zeros(shape), t], dim=dim)

        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([pad(old.keys, -2), pad(new.keys, -2)], dim=0)
            old.values = torch.cat([pad(old.values, -2), pad(new.values, -2)], dim=0)
        self._mask = torch.cat([pad(self._mask, 1), pad(mask, 1)], dim=0)
        self._rows = self._rows + rows

    def _decode(self, updates: list[TokenUpdate]) -> None:
        live = [r for r in self._rows if not r.done]
        if len(live) != len(self._rows):
            self._compact()
            live = self._rows
        if not live:
            return
        assert self._mask is not None
        last = torch.tensor([[r.generated[-1]] for r in live], dtype=torch.long, device=self.device)
        positions = torch.tensor([[r.length] for r in live], dtype=torch.long, device=self.device)
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(live), 1))], dim=1)
        out = self.model(
            input_ids=last,
            attention_mask=self._mask,
            position_ids=positions,
            cache=self._cache,
            use_cache=True,
            logits_to_keep=1,
        )
        for r in live:
            r.length += 1
        tokens = self._sample(out.logits[:, -1, :], live)
        for row, tok in zip(live, tokens, strict=True):
            self._accept(row, tok, updates)

    def _compact(self) -> None:
        """Drop finished rows from the cache and trim columns that are padding in every remaining row."""
        keep = [i for i, r in enumerate(self._rows) if not r.done]
        if len(keep) == len(self._rows):
            self._cached_tokens = sum(r.length for r in self._rows)
            return
        if not keep:
            self._rows, self._cache, self._mask = [], None, None
            self._cached_tokens = 0
            return
        assert self._mask is not None
        idx = torch.tensor(keep, dtype=torch.long, device=self.device)
        mask = self._mask.index_select(0, idx)
        used = mask.any(dim=0).nonzero()
        start = int(used[0]) if used.numel() else 0
        # With layers split across GPUs each layer's cache lives on that layer's device: index it there.
        by_device = {idx.device: idx}
        for layer in self._cache.layers:
            i = by_device.setdefault(layer.keys.device, idx.to(layer.keys.device))
            layer.keys = layer.keys.index_select(0, i)[..., start:, :]
            layer.values = layer.values.index_select(0, i)[..., start:, :]
        self._mask = mask[:, start:]
        self._rows = [self._rows[i] for i in keep]
        self._cached_tokens = sum(r.length for r in self._rows)


def check_step_supported(model: Any) -> None:
    """Refuse models whose cache layers this loop cannot pad and merge (sliding windows, linear attention)."""
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    cache = DynamicCache(config=model.config)
    odd = {type(layer).__name__ for layer in cache.layers if type(layer) is not DynamicLayer}
    if odd:
        raise RuntimeError(
            f"the step engine supports full-attention caches only; this model uses {', '.join(sorted(odd))}: "
            "set engine.backend: continuous_batching"
        )
