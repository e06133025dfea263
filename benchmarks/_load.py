"""Load generation shared by the benchmarks: a lean HTTP/1.1 client for OpenAI streaming, and percentiles.

The load generator shares the machine's cores with the servers it measures. httpx costs several times
more CPU per SSE chunk than the daemon spends producing it, so with httpx the measured ceiling would be
the client's; this client sends the same requests an OpenAI client sends and reads the chunked SSE body
without decoding chunks it does not need (the first content chunk for TTFT, the usage chunk at the end).
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "PROMPTS",
    "LeanClient",
    "Level",
    "Reply",
    "free_port",
    "jobs_for",
    "make_cert",
    "pct",
    "run_level",
]

PROMPTS = [
    "Hello, how are you today?",
    "What is the capital of France?",
    "Explain how a transformer works.",
    "Please write a short poem about the sea.",
    "Operators provision GPU nodes with Ansible and verify offline bundles.",
    "The key value cache grows with context length.",
    "Numbers: 0 1 2 3 4 5 6 7 8 9",
    "Quantization to int8 or int4 trades a little accuracy for memory.",
]

# A content delta that is not empty (the role chunk carries "content":""). Servers that write JSON with a
# space after the colon are matched too.
_CONTENT = re.compile(rb'"content": ?"[^"]')
_USAGE = re.compile(rb'"usage": ?\{')


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_cert(d: Path) -> tuple[Path, Path]:
    from deepseek_node.daemon.testing import self_signed_cert

    return self_signed_cert(d, "bench")


@dataclass
class Reply:
    seconds: float  # request written -> last byte of the body
    ttft: float | None  # streaming only: request written -> first non-empty content delta
    completion_tokens: int


@dataclass
class Level:
    concurrency: int
    requests: int
    tokens: int
    seconds: float
    ttft: list[float]
    per_request: list[int] = field(default_factory=list)  # completion tokens of each request
    errors: list[str] = field(default_factory=list)  # requests that failed (when tolerated)

    @property
    def tps(self) -> float:
        return self.tokens / self.seconds


class LeanClient:
    """A minimal HTTP/1.1 keep-alive client over asyncio streams (one connection, one request at a time)."""

    def __init__(self, host: str, port: int, ssl_ctx: ssl.SSLContext | None, headers: dict[str, str]) -> None:
        self.host, self.port, self.ssl_ctx = host, port, ssl_ctx
        self.extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    @classmethod
    def for_url(cls, base: str, ssl_ctx: ssl.SSLContext | None, headers: dict[str, str]) -> LeanClient:
        u = urlsplit(base)
        port = u.port or (443 if u.scheme == "https" else 80)
        return cls(u.hostname or "127.0.0.1", port, ssl_ctx if u.scheme == "https" else None, headers)

    async def _connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port, ssl=self.ssl_ctx)

    async def post(self, path: str, body: dict[str, Any]) -> Reply:
        """One OpenAI request; a streamed one must ask for `stream_options.include_usage`."""
        if self.writer is None:
            await self._connect()
        assert self.reader is not None and self.writer is not None
        payload = json.dumps(body).encode()
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n{self.extra}"
            f"Content-Type: application/json\r\nContent-Length: {len(payload)}\r\n\r\n"
        ).encode()
        t0 = time.perf_counter()
        self.writer.write(head + payload)
        status_line = await self.reader.readuntil(b"\r\n")
        raw_headers = (await self.reader.readuntil(b"\r\n\r\n")).lower()
        chunked = b"transfer-encoding: chunked" in raw_headers
        if not chunked:
            m = re.search(rb"content-length: *(\d+)", raw_headers)
            content = await self.reader.readexactly(int(m.group(1)) if m else 0)
            if b"connection: close" in raw_headers:
                self.close()
            if b" 200 " not in status_line:
                raise RuntimeError(f"HTTP error: {status_line!r} {content[:300]!r}")
            usage = json.loads(content).get("usage") or {}
            return Reply(time.perf_counter() - t0, None, int(usage.get("completion_tokens") or 0))
        first: float | None = None
        tail: list[bytes] = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            data = await self.reader.readexactly(size + 2)
            if size == 0:
                break
            if first is None and _CONTENT.search(data):
                first = time.perf_counter() - t0
            # The usage event is last or just before [DONE]; a relay may split or merge events across
            # chunks, so the last few chunks are kept and joined at the end.
            tail = [*tail[-7:], data[:-2]]
        seconds = time.perf_counter() - t0
        if b" 200 " not in status_line:
            raise RuntimeError(f"HTTP error: {status_line!r} {b''.join(tail)[:300]!r}")
        for line in reversed(b"".join(tail).split(b"\n")):
            if line.startswith(b"data: {") and _USAGE.search(line):
                return Reply(seconds, first, int(json.loads(line[6:])["usage"]["completion_tokens"]))
        raise RuntimeError("no usage chunk at the end of the stream")

    async def chat_stream(self, body: dict[str, Any]) -> tuple[float | None, int]:
        """(TTFT seconds, completion tokens) of one streamed chat completion."""
        r = await self.post("/v1/chat/completions", body)
        return r.ttft, r.completion_tokens

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


async def run_level(
    base: str,
    model: str,
    verify: Any,
    concurrency: int,
    jobs: list[tuple[str, int]],
    headers: dict[str, str],
    extra: dict[str, Any] | None = None,
    max_errors: int = 0,
) -> Level:
    """`concurrency` streams over kept-alive connections, each taking the next job until none is left.

    Every request is a streamed greedy chat completion with usage; `extra` adds body fields (for example
    vLLM's `ignore_eos`). Up to `max_errors` failed requests are counted in `Level.errors` (the stream
    reconnects and goes on); one more raises.
    """
    queue: asyncio.Queue[tuple[str, int]] = asyncio.Queue()
    for j in jobs:
        queue.put_nowait(j)
    ttfts: list[float] = []
    per_request: list[int] = []
    errors: list[str] = []
    ctx = verify if isinstance(verify, ssl.SSLContext) else None

    async def worker() -> None:
        client = LeanClient.for_url(base, ctx, headers)
        try:
            while True:
                try:
                    prompt, n = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": prompt}],
                    "max_tokens": n,
                    "temperature": 0,
                    "stream": True,
                    "stream_options": {"include_usage": True},
                    **(extra or {}),
                }
                try:
                    r = await client.post("/v1/chat/completions", body)
                except (
                    RuntimeError,
                    OSError,
                    ValueError,
                    KeyError,
                    EOFError,
                    asyncio.LimitOverrunError,
                ) as exc:
                    errors.append(f"{type(exc).__name__}: {exc}"[:300])
                    client.close()
                    if len(errors) > max_errors:
                        raise
                    continue
                per_request.append(r.completion_tokens)
                if r.ttft is not None:
                    ttfts.append(r.ttft)
        finally:
            client.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    seconds = time.perf_counter() - t0
    return Level(concurrency, len(jobs), sum(per_request), seconds, ttfts, per_request, errors)


def jobs_for(n_requests: int, max_tokens: int) -> list[tuple[str, int]]:
    return [(PROMPTS[i % len(PROMPTS)], max_tokens) for i in range(n_requests)]
