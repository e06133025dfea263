"""Starting and stopping a vLLM OpenAI server as the daemon's child (the managed mode).

On a node the engine normally runs as its own systemd unit; the managed mode serves `provision serve
--engine vllm`, the benchmarks and tests, where one command must bring up gateway and engine together.
The child gets its own process group (vLLM spawns engine-core and worker processes: stopping must reach
them all) and dies with the daemon (PR_SET_PDEATHSIG), so a crashed gateway leaves no orphan holding
the GPU. Its output is logged line by line and the last lines are kept to explain an early exit.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import logging
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path

__all__ = ["VllmProcess", "free_loopback_port"]

log = logging.getLogger("deepseek_node.engine.vllm")

ENTRYPOINT = "vllm.entrypoints.openai.api_server"
_PR_SET_PDEATHSIG = 1


def free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(Exception):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class VllmProcess:
    def __init__(self, python: Path, args: list[str], env: dict[str, str], port: int, api_key: str) -> None:
        # Appended last: argparse keeps the last value, so the engine always binds loopback on our port.
        self.argv = [str(python), "-m", ENTRYPOINT, *args, "--host", "127.0.0.1", "--port", str(port)]
        self.env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TRANSFORMERS_OFFLINE": "1",
            "VLLM_NO_USAGE_STATS": "1",
            "DO_NOT_TRACK": "1",
            **env,
            "VLLM_API_KEY": api_key,
        }
        self.tail: collections.deque[str] = collections.deque(maxlen=40)
        self._proc: subprocess.Popen[bytes] | None = None
        self._reader: threading.Thread | None = None

    def start(self) -> None:
        log.info("starting vLLM: %s", " ".join(self.argv))
        self._proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # only a prctl call: safe between fork and exec
        )
        self._reader = threading.Thread(target=self._read, name="vllm-output", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for raw in self._proc.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if line:
                self.tail.append(line)
                log.info("%s", line)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def exit_code(self) -> int | None:
        """None while running (or never started)."""
        return None if self._proc is None else self._proc.poll()

    def failure(self) -> str:
        lines = [ln for ln in self.tail if "Error" in ln or "error" in ln] or list(self.tail)
        return lines[-1][:500] if lines else "no output"

    def stop(self, timeout: float = 30.0) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("vLLM did not stop within %.0fs: killing it", timeout)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
        # Worker processes may outlive the server's own exit briefly: the group goes with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
