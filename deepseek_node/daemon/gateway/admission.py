"""Admission in the gateway: per-key and whole-node limits on generation requests in flight.

Whatever engine is behind the gateway, one API key must not be able to fill the queue for every other
tenant: each key has a ceiling of requests in flight (admitted or queued), and past it gets a 429 that
names the limit. The whole-node ceiling applies where the engine has no bounded queue of its own that
the gateway can see (vLLM queues without limit), so backpressure reaches clients as 429 + Retry-After
rather than as unbounded latency.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

__all__ = ["Admission", "Lease", "Refused"]


class Refused(Exception):
    """Not admitted; `scope` says which ceiling ("key" or "node") and `limit` its value."""

    def __init__(self, scope: str, limit: int, retry_after_s: int) -> None:
        what = "this API key's" if scope == "key" else "this server's"
        super().__init__(
            f"{what} limit of {limit} concurrent generation requests is reached; retry after the "
            "indicated time"
        )
        self.scope = scope
        self.limit = limit
        self.retry_after_s = retry_after_s


@dataclass(eq=False)
class Lease:
    """One admitted request; `release()` is idempotent so every exit path may call it."""

    admission: Admission
    key_id: str
    released: bool = False

    def release(self) -> None:
        if not self.released:
            self.released = True
            self.admission._release(self.key_id)


class Admission:
    """Counts in-flight generation requests per key and in total (event-loop only: no locking)."""

    def __init__(
        self,
        per_key_default: int,
        per_key: dict[str, int] | None = None,
        node_limit: int | None = None,
        retry_after_s: int = 1,
    ) -> None:
        self.per_key_default = per_key_default
        self.per_key = dict(per_key or {})
        self.node_limit = node_limit
        self.retry_after_s = retry_after_s
        self._by_key: Counter[str] = Counter()
        self.in_flight = 0

    def limit_for(self, key_id: str) -> int:
        return self.per_key.get(key_id, self.per_key_default)

    def acquire(self, key_id: str) -> Lease:
        limit = self.limit_for(key_id)
        if self._by_key[key_id] >= limit:
            raise Refused("key", limit, self.retry_after_s)
        if self.node_limit is not None and self.in_flight >= self.node_limit:
            raise Refused("node", self.node_limit, self.retry_after_s)
        self._by_key[key_id] += 1
        self.in_flight += 1
        return Lease(self, key_id)

    def _release(self, key_id: str) -> None:
        self._by_key[key_id] -= 1
        if self._by_key[key_id] <= 0:
            del self._by_key[key_id]
        self.in_flight -= 1
