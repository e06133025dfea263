"""The daemon as a process: SIGTERM under load, exit codes systemd acts on, and `provision serve`."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from deepseek_node.daemon.testing import config_for
from tests.daemon.conftest import KEY

AUTH = {"Authorization": f"Bearer {KEY}"}
REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _write_config(path: Path, model_dir: Path, port: int, **engine: object) -> Path:
    cfg = config_for(model_dir, KEY, engine=dict(engine))
    data = cfg.model_dump(mode="json")
    data["server"]["port"] = port
    path.write_text(yaml.safe_dump(data))
    return path


def _spawn(args: list[str], tmp_path: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=REPO,
        env=env,
        stdout=open(tmp_path / "stdout", "wb"),
        stderr=open(tmp_path / "stderr", "wb"),
    )


def _wait_ready(
    base: str, proc: subprocess.Popen[bytes], headers: dict[str, str], timeout: float = 90
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "daemon exited early"
        try:
            if httpx.get(base + "/health/ready", headers=headers, timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("daemon never became ready")


def _admitted(exposition: str) -> float:
    """Requests the engine has taken: decoding + waiting + finished (any reason)."""
    total = 0.0
    for fam in text_string_to_metric_families(exposition):
        if fam.name in ("deepseek_node:num_requests_running", "deepseek_node:num_requests_waiting"):
            total += sum(s.value for s in fam.samples)
        elif fam.name == "deepseek_node:request_success":
            total += sum(s.value for s in fam.samples if s.name.endswith("_total"))
    return total


@pytest.mark.slow
def test_sigterm_under_load_loses_nothing_accepted(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
    cfg = _write_config(
        tmp_path / "daemon.yaml", tiny_model_dir, port, max_running=4, max_queue=64, shutdown_grace_s=60
    )
    proc = _spawn(["-m", "deepseek_node.daemon", "--config", str(cfg)], tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc, AUTH)
        n, max_tokens = 24, 60

        async def load() -> tuple[list[dict], list[int]]:
            async with httpx.AsyncClient(base_url=base, timeout=60) as c:

                async def one(i: int) -> dict:
                    body = {
                        "model": "deepseek-tiny",
                        "messages": [{"role": "user", "content": f"q{i}"}],
                        "max_tokens": max_tokens,
                        "stream": i % 2 == 0,
                        "stream_options": {"include_usage": True} if i % 2 == 0 else None,
                    }
                    if not body["stream"]:
                        body.pop("stream_options")
                        r = await c.post("/v1/chat/completions", headers=AUTH, json=body)
                        assert r.status_code == 200, r.text
                        return {**r.json()["usage"], "finish": r.json()["choices"][0]["finish_reason"]}
                    async with c.stream("POST", "/v1/chat/completions", headers=AUTH, json=body) as r:
                        assert r.status_code == 200
                        usage, finish, last = None, None, ""
                        async for line in r.aiter_lines():
                            if line.startswith("data: {"):
                                chunk = json.loads(line[6:])
                                usage = chunk.get("usage") or usage
                                if chunk["choices"] and chunk["choices"][0]["finish_reason"]:
                                    finish = chunk["choices"][0]["finish_reason"]
                            last = line or last
                        assert last == "data: [DONE]" and usage is not None
                        return {**usage, "finish": finish}

                tasks = [asyncio.create_task(one(i)) for i in range(n)]
                # Signal only once the engine holds all n (running, waiting or done): the daemon's own count,
                # not a guess at how long admission takes on a loaded machine.
                deadline = time.monotonic() + 30
                while _admitted((await c.get("/metrics", headers=AUTH)).text) < n:
                    assert time.monotonic() < deadline, "requests were not all admitted"
                    await asyncio.sleep(0.02)
                proc.send_signal(signal.SIGTERM)
                await asyncio.sleep(0.3)
                # After the signal nothing new is admitted: refused connection or 503.
                refused = []
                for _ in range(3):
                    try:
                        r = await c.post(
                            "/v1/chat/completions",
                            headers=AUTH,
                            timeout=5,
                            json={"model": "deepseek-tiny", "messages": [{"role": "user", "content": "x"}]},
                        )
                        refused.append(r.status_code)
                    except httpx.TransportError:
                        refused.append(0)
                return await asyncio.gather(*tasks), refused

        usages, refused = asyncio.run(load())
        # Every accepted request ran to its natural end: max_tokens, or EOS (random weights can emit it).
        for u in usages:
            assert u["finish"] in ("length", "stop"), usages
            # EOS may also come as the very last allowed token ("stop" with max_tokens tokens).
            assert (
                u["completion_tokens"] == max_tokens
                if u["finish"] == "length"
                else 1 <= u["completion_tokens"] <= max_tokens
            )
        assert all(code in (0, 503) for code in refused), refused
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    err = (tmp_path / "stderr").read_text()
    assert "no longer admitting" in err
    audit = [json.loads(x) for x in (tmp_path / "stdout").read_text().splitlines() if x.startswith("{")]
    assert sum(1 for a in audit if a["path"] == "/v1/chat/completions" and a["status"] == 200) == n


def test_bad_config_exits_2_before_listening(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {path: /nonexistent, served_name: x}\nauth: {api_keys: []}\nsurprise: 1\n")
    r = subprocess.run(
        [sys.executable, "-m", "deepseek_node.daemon", "--config", str(bad)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 2
    assert "surprise: unknown key" in r.stderr and "auth.api_keys" in r.stderr


@pytest.mark.slow
def test_unloadable_model_exits_1_for_a_restart(tiny_model_dir: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(tiny_model_dir, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    port = _free_port()
    cfg = _write_config(tmp_path / "d.yaml", broken, port)
    proc = _spawn(["-m", "deepseek_node.daemon", "--config", str(cfg)], tmp_path)
    try:
        assert proc.wait(timeout=90) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "model load failed" in (tmp_path / "stderr").read_text()


@pytest.mark.slow
def test_provision_serve_generates_a_key_and_serves(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
    proc = _spawn(
        [
            "-m",
            "deepseek_node.cli.main",
            "serve",
            "--model-dir",
            str(tiny_model_dir),
            "--port",
            str(port),
            "--served-name",
            "tiny",
            "--engine",
            "builtin",  # the vLLM path of `serve` is in test_vllm_engine.py and the lab tests
        ],
        tmp_path,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        key = None
        deadline = time.monotonic() + 60
        while key is None and time.monotonic() < deadline:
            for line in (tmp_path / "stderr").read_text().splitlines():
                if line.startswith("API key (shown once, keep it): "):
                    key = line.rsplit(" ", 1)[1]
            time.sleep(0.1)
        assert key
        headers = {"Authorization": f"Bearer {key}"}
        _wait_ready(base, proc, headers)
        r = httpx.post(
            base + "/v1/completions",
            headers=headers,
            json={"model": "tiny", "prompt": "hello", "max_tokens": 3},
        )
        assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] <= 3
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    assert key not in (tmp_path / "stdout").read_text()


@pytest.mark.slow
def test_engine_process_crash_exits_1_for_a_restart(tiny_model_dir: Path, tmp_path: Path) -> None:
    """If the engine process dies (OOM killer, driver fault), the daemon fails readiness and exits 1."""
    port = _free_port()
    cfg = _write_config(tmp_path / "d.yaml", tiny_model_dir, port)
    proc = _spawn(["-m", "deepseek_node.daemon", "--config", str(cfg)], tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc, AUTH)
        # Children are listed per thread, and the engine is spawned from the loader thread.
        children = [
            c for t in Path(f"/proc/{proc.pid}/task").iterdir() for c in (t / "children").read_text().split()
        ]
        assert children, "the engine runs in a child process"
        for child in children:
            os.kill(int(child), signal.SIGKILL)
        assert proc.wait(timeout=30) == 1
    finally:
        if proc.poll() is None:
            proc.kill()
    assert "engine backend died" in (tmp_path / "stderr").read_text()


def test_sigterm_while_loading_exits_0_promptly(tiny_model_dir: Path, tmp_path: Path) -> None:
    port = _free_port()
    cfg = _write_config(tmp_path / "d.yaml", tiny_model_dir, port)
    proc = _spawn(["-m", "deepseek_node.daemon", "--config", str(cfg)], tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # listening, model not loaded yet
            with contextlib.suppress(httpx.TransportError):
                if httpx.get(base + "/health/live", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        assert httpx.get(base + "/health/ready", headers=AUTH).status_code == 503
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
