"""Connection limits uvicorn lacks: a deadline for a complete request head, an idle deadline while a
request body arrives, and a ceiling on connections per client address.

Without them a few hosts can hold every descriptor: 3,000 connections that each send half a request and
then one header line every 35 s all stay open, because uvicorn arms its keep-alive timer only after a
response. Here a connection must deliver a complete request head within `head_timeout` of opening (and
of its previous response), a body must not stall for longer than `idle_timeout`, and one address may
hold at most `per_client` connections; excess connections are closed before any parsing. Legitimate
clients are unaffected: their heads arrive in milliseconds.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["guarded_protocol", "protocol_options"]


def guarded_protocol(head_timeout: float, idle_timeout: float, per_client: int) -> type[H11Protocol]:
    """An H11Protocol class with the three limits; one per server (it holds the per-address counts)."""
    open_by_client: Counter[str] = Counter()

    class GuardedH11Protocol(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None
        _counted: str | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            host = self.client[0] if self.client else None
            if host is not None:
                if open_by_client[host] >= per_client:
                    transport.abort()  # before any byte is parsed: costs the server nothing more
                    return
                open_by_client[host] += 1
                self._counted = host
            self._arm(head_timeout)

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            if self._counted is not None:
                open_by_client[self._counted] -= 1
                if open_by_client[self._counted] <= 0:
                    del open_by_client[self._counted]
                self._counted = None
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            state = self.conn.their_state
            if state is h11.SEND_BODY:
                self._arm(idle_timeout)  # a body is arriving: it may not stall
            elif state is not h11.IDLE:
                self._disarm()  # head (and body) complete: the request is the application's now

        def on_response_complete(self) -> None:
            super().on_response_complete()
            if not self.transport.is_closing():
                self._arm(head_timeout)  # the next request's head is due as well

        def _arm(self, seconds: float) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(seconds, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.abort()

    return GuardedH11Protocol


def protocol_options(server: Any) -> dict[str, Any]:
    """uvicorn.Config keyword arguments for a ServerConfig's connection limits."""
    return {
        "http": guarded_protocol(
            server.request_head_timeout_s, server.idle_timeout_s, server.max_connections_per_client
        )
    }
