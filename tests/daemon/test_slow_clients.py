"""A slow-client flood from one address is cut off at its deadlines while a normal client is served."""

from __future__ import annotations

import socket
import time
from pathlib import Path

from deepseek_node.daemon.testing import ThreadedDaemon, config_for

HALF_REQUEST = b"GET /health/live HTTP/1.1\r\nHost: x\r\n"  # no blank line: the head never completes


def _connect(port: int, source: str) -> socket.socket:
    s = socket.socket()
    s.bind((source, 0))
    s.settimeout(5)
    s.connect(("127.0.0.1", port))
    return s


def _closed(s: socket.socket) -> bool:
    """Whether the server has closed the connection (whatever it answered first)."""
    try:
        s.settimeout(0.2)
        while s.recv(4096):
            pass
        return True
    except (ConnectionResetError, BrokenPipeError):
        return True
    except TimeoutError:
        return False


def _live(port: int, source: str) -> bytes:
    with _connect(port, source) as s:
        s.sendall(HALF_REQUEST + b"Connection: close\r\n\r\n")
        return s.recv(64)


def test_slow_client_flood_is_cut_off_and_others_are_served(tiny_llama_dir: Path) -> None:
    cfg = config_for(
        tiny_llama_dir,
        "k" * 20,
        server={"request_head_timeout_s": 1, "idle_timeout_s": 1, "max_connections_per_client": 20},
    )
    d = ThreadedDaemon(cfg).start()
    try:
        flood = []
        for _ in range(40):
            s = _connect(d.port, "127.0.0.3")
            s.sendall(HALF_REQUEST)
            flood.append(s)
        time.sleep(0.3)
        # Over the per-address ceiling: closed at once; the rest are held only until their deadline.
        assert sum(_closed(s) for s in flood) >= 20
        assert _live(d.port, "127.0.0.2").startswith(b"HTTP/1.1 200")
        time.sleep(1.5)
        assert all(_closed(s) for s in flood)
        assert _live(d.port, "127.0.0.3").startswith(b"HTTP/1.1 200")  # the address is not banned
        # A body that stalls is cut off as well.
        with _connect(d.port, "127.0.0.2") as s:
            s.sendall(
                b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                + b"k" * 20
                + b"\r\nContent-Length: 100\r\n\r\n{"
            )
            time.sleep(1.6)
            assert _closed(s)
        for s in flood:
            s.close()
    finally:
        d.stop()
