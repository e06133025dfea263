"""The gateway in front of a relayed engine (vLLM's OpenAI server), against a fast stand-in for it.

What the gateway owns is tested here: keys and scopes, admission ceilings, request ids that never reach
the engine, audit lines from relayed answers, readiness following the engine's health, and /metrics with
the engine's `vllm:` series unrenamed. The real vLLM behind the same gateway is in test_vllm_engine.py.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from deepseek_node.daemon.config import ConfigError
from deepseek_node.daemon.engines.vllm import engine_series
from deepseek_node.daemon.gateway.relay import BadBody, SseAudit, parse_relay_body
from deepseek_node.daemon.testing import ThreadedDaemon, config_for
from tests.daemon.fake_engine import METRICS, FakeEngine

KEY = "dsn-gateway-test-key"
OTHER = "dsn-gateway-other-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
INTERNAL = "internal-engine-key-0123456789"


@pytest.fixture(scope="module")
def engine() -> Iterator[FakeEngine]:
    e = FakeEngine(INTERNAL).start()
    yield e
    e.stop()


@pytest.fixture(scope="module")
def gateway(
    engine: FakeEngine, tmp_path_factory: pytest.TempPathFactory, tiny_llama_dir: Path
) -> Iterator[ThreadedDaemon]:
    key_file = tmp_path_factory.mktemp("engine") / "engine.key"
    key_file.write_text(f"VLLM_API_KEY={INTERNAL}\n")  # the engine unit's environment file
    other = {
        "id": "tenant-b",
        "sha256": hashlib.sha256(OTHER.encode()).hexdigest(),
        "scopes": ["inference"],
        "models": [],
        "max_concurrent": 2,
    }
    cfg = config_for(
        tiny_llama_dir,  # checked before start like any model directory; vLLM would load it
        KEY,
        served_name="deepseek-r1",
        extra_keys=[other],
        engine={"max_running": 4, "max_queue": 4},
        audit={"log_content": True},
        vllm={"url": engine.url, "api_key_file": str(key_file), "health_interval_s": 0.1},
    )
    d = ThreadedDaemon(cfg).start()
    d.wait_ready(30)
    yield d
    d.stop()


@pytest.fixture
def client(gateway: ThreadedDaemon) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.base_url + "/v1", api_key=KEY, max_retries=0)


def _chat(prompt: str, **kw: object) -> dict:
    return {"model": "deepseek-r1", "messages": [{"role": "user", "content": prompt}], **kw}


def test_openai_client_normal_and_streaming(client: openai.OpenAI, gateway: ThreadedDaemon) -> None:
    r = client.chat.completions.create(**_chat("one two three"))
    assert r.choices[0].message.content == "one two three"
    assert r.usage.completion_tokens == 3
    chunks = list(
        client.chat.completions.create(
            **_chat("four five", stream=True), stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "four five"
    assert chunks[-1].usage.completion_tokens == 2
    c = client.completions.create(model="deepseek-r1", prompt="six seven")
    assert c.choices[0].text == "six seven"
    lines = [json.loads(x) for x in gateway.audit.lines if '"/v1/chat/completions"' in x]
    streamed = [x for x in lines if x["stream"] and x["status"] == 200][-1]
    assert streamed["completion_tokens"] == 2 and streamed["finish_reason"] == "length"
    assert streamed["completion"] == "four five" and streamed["key_id"] == "ops"


def test_keys_and_scopes_are_the_gateways(gateway: ThreadedDaemon, engine: FakeEngine) -> None:
    before = len(engine.request_ids)
    r = httpx.post(gateway.base_url + "/v1/chat/completions", json=_chat("x"))
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    r = httpx.post(
        gateway.base_url + "/v1/chat/completions",
        json=_chat("x"),
        headers={"Authorization": f"Bearer {INTERNAL}"},
    )
    assert r.status_code == 401  # the engine's key is no client key
    r = httpx.post(
        gateway.base_url + "/v1/chat/completions", json={**_chat("x"), "model": "other"}, headers=AUTH
    )
    assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert len(engine.request_ids) == before  # none of it reached the engine


def test_client_request_ids_never_reach_the_engine(gateway: ThreadedDaemon, engine: FakeEngine) -> None:
    prompts = [f"tenant {i} secret {i * 7}" for i in range(8)]  # the node ceiling is 8

    async def one(c: httpx.AsyncClient, p: str, i: int) -> str:
        body = _chat(p, stream=i % 2 == 0, delay=0.05)
        r = await c.post("/v1/chat/completions", json=body, headers={**AUTH, "X-Request-ID": "same"})
        assert r.status_code == 200 and r.headers["x-request-id"] == "same"
        if not body["stream"]:
            return r.json()["choices"][0]["message"]["content"]
        text = ""
        for line in r.text.splitlines():
            if line.startswith("data: {"):
                ev = json.loads(line[6:])
                text += "".join(ch["delta"].get("content") or "" for ch in ev["choices"])
        return text

    async def run() -> list[str]:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as c:
            return await asyncio.gather(*(one(c, p, i) for i, p in enumerate(prompts)))

    before = len(engine.request_ids)
    assert asyncio.run(run()) == prompts
    ids = engine.request_ids[before:]
    assert len(ids) == len(prompts) and len(set(ids)) == len(ids) and "same" not in ids
    assert all("same" not in h.values() for h in engine.seen_headers)


def test_engine_errors_are_relayed_unchanged(gateway: ThreadedDaemon) -> None:
    r = httpx.post(gateway.base_url + "/v1/chat/completions", json=_chat("x", temperature=5), headers=AUTH)
    assert r.status_code == 400
    assert r.json()["error"]["message"] == "temperature must be in [0, 2]"


@pytest.mark.parametrize(
    ("raw", "param"),
    [
        (b"", None),
        (b"[1]", None),
        (b"{", None),
        (b'{"messages": []}', "model"),
        (b'{"model": "m", "stream": "yes"}', "stream"),
    ],
)
def test_bad_bodies_are_refused_before_the_engine(raw: bytes, param: str | None) -> None:
    with pytest.raises(BadBody) as exc:
        parse_relay_body(raw)
    assert exc.value.param == param


def test_per_key_ceiling_is_a_429_naming_the_limit(gateway: ThreadedDaemon) -> None:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as c:
            headers = {"Authorization": f"Bearer {OTHER}"}
            return await asyncio.gather(
                *(
                    c.post("/v1/chat/completions", json=_chat("a b c", delay=0.5), headers=headers)
                    for _ in range(4)
                )
            )

    codes = sorted(r.status_code for r in asyncio.run(run()))
    assert codes == [200, 200, 429, 429]
    refused = next(r for r in asyncio.run(run()) if r.status_code == 429)
    err = refused.json()["error"]
    assert err["code"] == "key_concurrency_limit" and "limit of 2" in err["message"]
    assert refused.headers["retry-after"]


def test_node_ceiling_is_a_429_with_retry_after(gateway: ThreadedDaemon) -> None:
    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=gateway.base_url, timeout=30) as c:
            return await asyncio.gather(
                *(c.post("/v1/chat/completions", json=_chat("a", delay=0.5), headers=AUTH) for _ in range(10))
            )

    res = asyncio.run(run())
    assert sorted(r.status_code for r in res) == [200] * 8 + [429] * 2  # max_running + max_queue = 8
    assert next(r for r in res if r.status_code == 429).json()["error"]["code"] == "server_overloaded"
    assert gateway.state.admission.in_flight == 0


def test_metrics_carry_the_engines_series_unrenamed(gateway: ThreadedDaemon) -> None:
    text = httpx.get(gateway.base_url + "/metrics", headers=AUTH).text
    assert 'vllm:kv_cache_usage_perc{engine="0",model_name="fake"} 0.25' in text
    assert "deepseek_node:http_requests_total" in text or "deepseek_node:" in text
    assert "process_cpu_seconds_total 1.5" not in text  # the engine's process series would collide
    assert engine_series(METRICS).count(b"# TYPE") == 2


def test_readiness_follows_the_engines_health(gateway: ThreadedDaemon, engine: FakeEngine) -> None:
    engine.healthy = False
    try:
        for _ in range(100):
            r = httpx.get(gateway.base_url + "/health/ready", headers=AUTH)
            if r.status_code == 503:
                break
            asyncio.run(asyncio.sleep(0.05))
        assert r.status_code == 503 and "health check" in r.json()["error"]["message"]
        r = httpx.post(gateway.base_url + "/v1/chat/completions", json=_chat("x"), headers=AUTH)
        assert r.status_code == 503 and r.headers["retry-after"]
    finally:
        engine.healthy = True
    for _ in range(100):
        if httpx.get(gateway.base_url + "/health/ready", headers=AUTH).status_code == 200:
            break
        asyncio.run(asyncio.sleep(0.05))
    assert httpx.get(gateway.base_url + "/health/ready", headers=AUTH).json()["backend"] == "vllm"


def test_sse_audit_parses_only_what_it_needs() -> None:
    a = SseAudit(keep_text=False)
    a.feed(b'data: {"choices":[{"delta":{"content":"x"},"finish_reason":null}]}\n\ndata: {"choi')
    a.feed(
        b'ces":[{"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\n'
    )
    a.feed(b"data: [DONE]\n\n")
    assert (
        a.finish_reason == "stop"
        and a.usage == {"prompt_tokens": 1, "completion_tokens": 2}
        and a.chunks == 2
    )


@pytest.mark.parametrize(
    ("vllm", "message"),
    [
        ({"python": "/x/python", "args": ["--model", "/m", "--api-key", "k"]}, "--api-key must not be"),
        ({"url": "http://10.0.0.5:8000", "api_key_file": "/k"}, "loopback"),
        ({"url": "http://127.0.0.1:8000"}, "api_key_file"),
        ({"python": "/x/python", "args": []}, "--model"),
        ({}, "either python"),
    ],
)
def test_engine_config_refusals(vllm: dict, message: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as exc:
        config_for(tmp_path, KEY, vllm=vllm)
    assert message in str(exc.value)
