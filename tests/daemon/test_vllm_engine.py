"""The gateway in front of the real vLLM (CPU build), started by the daemon as it is by `provision serve`.

Slow (vLLM takes one to three minutes to start on two cores), so one engine serves the whole module.
Needs the vLLM virtualenv that scripts/setup.sh creates (`.venv-vllm`), or DEEPSEEK_NODE_VLLM_PYTHON.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from deepseek_node.daemon.testing import ThreadedDaemon, config_for
from tests.conftest import REPO
from tests.daemon.conftest import openai_client, tls_context

pytestmark = pytest.mark.slow

KEY = "dsn-vllm-test-key-0001"
AUTH = {"Authorization": f"Bearer {KEY}"}
VLLM_PYTHON = Path(os.environ.get("DEEPSEEK_NODE_VLLM_PYTHON", REPO / ".venv-vllm/bin/python"))


@pytest.fixture(scope="module")
def vllm_daemon(
    tmp_path_factory: pytest.TempPathFactory, tls_files: tuple[Path, Path]
) -> Iterator[ThreadedDaemon]:
    if not VLLM_PYTHON.exists():
        pytest.fail(f"no vLLM interpreter at {VLLM_PYTHON}: run scripts/setup.sh (it creates .venv-vllm)")
    from deepseek_node.tiny_model import TinyModelSpec, make_tiny_model

    # vLLM's CPU attention kernels need a head size of at least 32: hidden 256 over 4 heads.
    model = make_tiny_model(
        tmp_path_factory.mktemp("vllm-model") / "llama", TinyModelSpec(arch="llama", hidden_size=256)
    )
    cfg = config_for(
        model,
        KEY,
        served_name="llama-tiny",
        tls=tls_files,
        vllm={
            "python": str(VLLM_PYTHON),
            "args": [
                "--model",
                str(model),
                "--served-model-name",
                "llama-tiny",
                "--max-model-len",
                "2048",
                "--dtype",
                "float32",
                "--max-num-seqs",
                "16",
            ],
            "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
        },
    )
    d = ThreadedDaemon(cfg).start()
    try:
        d.wait_ready(600)
    except RuntimeError:
        d.stop()
        raise
    yield d
    d.stop()


@pytest.fixture
def client(vllm_daemon: ThreadedDaemon, tls_files: tuple[Path, Path]) -> openai.OpenAI:
    return openai_client(vllm_daemon, tls_files, KEY)


MSG = [{"role": "user", "content": "Hello there"}]


def test_openai_client_through_the_gateway(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="llama-tiny", messages=MSG, max_tokens=8, temperature=0)
    assert r.usage.completion_tokens <= 8 and r.choices[0].finish_reason in ("length", "stop")
    chunks = list(
        client.chat.completions.create(
            model="llama-tiny",
            messages=MSG,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == r.usage.completion_tokens
    c = client.completions.create(model="llama-tiny", prompt="Once", max_tokens=4, temperature=0)
    assert c.usage.completion_tokens <= 4


def test_no_key_no_answer(vllm_daemon: ThreadedDaemon, tls_files: tuple[Path, Path]) -> None:
    r = httpx.post(
        vllm_daemon.base_url + "/v1/chat/completions",
        json={"model": "llama-tiny", "messages": MSG},
        verify=tls_context(tls_files),
    )
    assert r.status_code == 401


def test_metrics_carry_vllm_series(vllm_daemon: ThreadedDaemon, tls_files: tuple[Path, Path]) -> None:
    text = httpx.get(vllm_daemon.base_url + "/metrics", headers=AUTH, verify=tls_context(tls_files)).text
    names = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line.startswith("vllm:")}
    assert {"vllm:num_requests_running", "vllm:prompt_tokens_total"} <= names, sorted(names)[:20]


def test_equal_request_ids_never_share_tokens(
    vllm_daemon: ThreadedDaemon, tls_files: tuple[Path, Path]
) -> None:
    prompts = [f"Topic {i}: {'word ' * i}" for i in range(6)]

    async def one(c: httpx.AsyncClient, p: str) -> str:
        r = await c.post(
            "/v1/completions",
            json={"model": "llama-tiny", "prompt": p, "max_tokens": 12, "temperature": 0},
            headers={**AUTH, "X-Request-ID": "same"},
        )
        assert r.status_code == 200, r.text
        return r.json()["choices"][0]["text"]

    async def run() -> tuple[list[str], list[str]]:
        async with httpx.AsyncClient(
            base_url=vllm_daemon.base_url, verify=tls_context(tls_files), timeout=120
        ) as c:
            alone = [await one(c, p) for p in prompts]
            together = await asyncio.gather(*(one(c, p) for p in prompts))
            return alone, list(together)

    alone, together = asyncio.run(run())
    assert together == alone
    lines = [json.loads(x) for x in vllm_daemon.audit.lines if '"/v1/completions"' in x]
    assert all(x["status"] == 200 for x in lines[-len(prompts) :])
