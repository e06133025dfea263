"""The daemon over real HTTP(S): the official openai client (sync, async, streaming), then the edges.

The DeepSeek daemon serves HTTPS with a self-signed certificate the clients are told to trust; the Llama
daemon serves plain HTTP (the `tls_cert: null` local-trial mode).
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import httpx
import openai
import pytest

from deepseek_node.daemon.gateway.audit import redact as redact_text
from deepseek_node.daemon.testing import ThreadedDaemon, config_for
from tests.daemon.conftest import KEY, tls_context

AUTH = {"Authorization": f"Bearer {KEY}"}
MSG = [{"role": "user", "content": "Hello, how are you today?"}]


def test_openai_sync_chat(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="deepseek-tiny", messages=MSG, max_tokens=7, temperature=0)
    assert r.object == "chat.completion"
    assert r.model == "deepseek-tiny"
    assert r.choices[0].message.role == "assistant"
    assert r.choices[0].finish_reason in ("length", "stop")
    assert r.usage.completion_tokens <= 7
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens
    again = client.chat.completions.create(model="deepseek-tiny", messages=MSG, max_tokens=7, temperature=0)
    assert again.choices[0].message.content == r.choices[0].message.content


def test_openai_streaming_matches_non_streaming(client: openai.OpenAI) -> None:
    full = client.chat.completions.create(model="deepseek-tiny", messages=MSG, max_tokens=12, temperature=0)
    stream = client.chat.completions.create(
        model="deepseek-tiny",
        messages=MSG,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [full.choices[0].finish_reason]
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == full.usage.completion_tokens


def test_openai_async_concurrent(daemon: ThreadedDaemon, tls_files: tuple[Path, Path]) -> None:
    async def go() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=daemon.base_url + "/v1",
            api_key=KEY,
            max_retries=0,
            http_client=httpx.AsyncClient(verify=tls_context(tls_files)),
        ) as c:

            async def one(i: int) -> str:
                r = await c.chat.completions.create(
                    model="deepseek-tiny",
                    messages=[{"role": "user", "content": f"Question {i}"}],
                    max_tokens=6,
                    temperature=0.7,
                    seed=i,
                )
                return r.choices[0].message.content or ""

            async def streamed() -> str:
                s = await c.chat.completions.create(
                    model="deepseek-tiny", messages=MSG, max_tokens=6, stream=True
                )
                return "".join([ch.choices[0].delta.content or "" async for ch in s if ch.choices])

            return await asyncio.gather(*(one(i) for i in range(12)), streamed())

    out = asyncio.run(go())
    assert len(out) == 13


def test_openai_completions_and_models(client: openai.OpenAI) -> None:
    models = client.models.list()
    assert [m.id for m in models.data] == ["deepseek-tiny"]
    r = client.completions.create(
        model="deepseek-tiny", prompt="The inference daemon", max_tokens=5, temperature=0
    )
    assert r.object == "text_completion" and r.usage.completion_tokens <= 5
    s = client.completions.create(
        model="deepseek-tiny", prompt="The inference daemon", max_tokens=5, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in s if c.choices) == r.choices[0].text
    ids = client.completions.create(model="deepseek-tiny", prompt=[5, 6, 7], max_tokens=3)
    assert ids.usage.prompt_tokens == 3


def test_llama_daemon_continuous_batching_over_plain_http(llama_daemon: ThreadedDaemon) -> None:
    c = openai.OpenAI(base_url=llama_daemon.base_url + "/v1", api_key=KEY, max_retries=0)
    r = c.chat.completions.create(model="llama-tiny", messages=MSG, max_tokens=5, temperature=0)
    s = c.chat.completions.create(model="llama-tiny", messages=MSG, max_tokens=5, temperature=0, stream=True)
    assert (
        "".join(ch.choices[0].delta.content or "" for ch in s if ch.choices) == r.choices[0].message.content
    )
    assert llama_daemon.engine.stats().backend == "continuous_batching"


def test_request_id_header_and_audit_line(daemon: ThreadedDaemon, http: httpx.Client) -> None:
    r = http.post(
        "/v1/chat/completions",
        headers={**AUTH, "X-Request-ID": "trace-abc.1"},
        json={"model": "deepseek-tiny", "messages": MSG, "max_tokens": 3},
    )
    assert r.status_code == 200
    assert r.headers["x-request-id"] == "trace-abc.1"
    # The completion id is the server's own; the client's id is echoed in the header only.
    assert r.json()["id"].startswith("chatcmpl-") and "trace-abc.1" not in r.json()["id"]
    lines = [json.loads(x) for x in daemon.audit.lines if '"trace-abc.1"' in x]
    assert len(lines) == 1
    rec = lines[0]
    assert rec["key_id"] == "ops" and rec["status"] == 200 and rec["client"] == "127.0.0.1"
    assert rec["model"] == "deepseek-tiny" and rec["prompt_tokens"] > 0 and rec["completion_tokens"] == 3
    assert "prompt" not in rec and "completion" not in rec  # content is off by default
    # A malicious id is replaced, not echoed.
    r = http.get("/v1/models", headers={**AUTH, "X-Request-ID": 'x" injected'})
    assert r.headers["x-request-id"] != 'x" injected'


@pytest.mark.parametrize("rid", ["same-id", "", 'x" injected\\', "a" * 500, "seq-1"])
def test_concurrent_requests_with_equal_ids_never_share_tokens(
    daemon: ThreadedDaemon, tls_files: tuple[Path, Path], rid: str
) -> None:
    """Tenant isolation: whatever X-Request-ID clients send (equal, empty, hostile, or shaped like the
    engine's own keys), each concurrent request gets exactly its own answer and the engine's count of
    running sequences returns to zero."""
    prompts = [f"Tell me about topic number {i} {'x' * i}" for i in range(8)]

    def body(p: str, stream: bool) -> dict:
        return {
            "model": "deepseek-tiny",
            "messages": [{"role": "user", "content": p}],
            "max_tokens": 16,
            "temperature": 0,
            "stream": stream,
        }

    async def one(c: httpx.AsyncClient, p: str, stream: bool) -> tuple[str, str]:
        headers = {**AUTH, "X-Request-ID": rid}
        if not stream:
            r = await c.post("/v1/chat/completions", headers=headers, json=body(p, False))
            assert r.status_code == 200, r.text
            return r.json()["choices"][0]["message"]["content"], r.json()["id"]
        text, cid = "", ""
        async with c.stream("POST", "/v1/chat/completions", headers=headers, json=body(p, True)) as r:
            assert r.status_code == 200
            async for line in r.aiter_lines():
                if line.startswith("data: {"):
                    ev = json.loads(line[6:])
                    cid = ev["id"]
                    text += ev["choices"][0]["delta"].get("content") or "" if ev["choices"] else ""
        return text, cid

    async def run() -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
        async with httpx.AsyncClient(
            base_url=daemon.base_url, verify=tls_context(tls_files), timeout=60
        ) as c:
            alone = [await one(c, p, False) for p in prompts]
            together = await asyncio.gather(*(one(c, p, i % 2 == 1) for i, p in enumerate(prompts)))
            return alone, list(together)

    alone, together = asyncio.run(run())
    assert [t for t, _ in together] == [t for t, _ in alone]
    assert len({cid for _, cid in together}) == len(prompts)  # ids are never shared either
    assert daemon.state.engine.stats().running == 0


# ------------------------------------------------------------------------------------------ errors


def _err(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "deepseek-tiny", "messages": []}, "messages"),
        ({"model": "deepseek-tiny"}, "messages"),
        ({"model": "deepseek-tiny", "messages": MSG, "max_tokens": "5"}, "max_tokens"),
        ({"model": "deepseek-tiny", "messages": MSG, "max_tokens": 0}, "max_tokens"),
        ({"model": "deepseek-tiny", "messages": MSG, "max_tokens": 10**12}, "max_tokens"),
        ({"model": "deepseek-tiny", "messages": MSG, "temperature": 7}, "temperature"),
        ({"model": "deepseek-tiny", "messages": MSG, "temperature": "hot"}, "temperature"),
        ({"model": "deepseek-tiny", "messages": MSG, "stream": "yes"}, "stream"),
        ({"model": "deepseek-tiny", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": "deepseek-tiny", "messages": MSG, "n": 3}, "n"),
        ({"model": "deepseek-tiny", "messages": MSG, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"model": 42, "messages": MSG}, "model"),
    ],
)
def test_bad_requests_are_400(http: httpx.Client, body: dict, param: str) -> None:
    err = _err(http.post("/v1/chat/completions", headers=AUTH, json=body), 400)
    assert err["type"] == "invalid_request_error"
    assert (err["param"] or "").startswith(param)


def test_malformed_json_and_empty_body(http: httpx.Client) -> None:
    assert (
        _err(http.post("/v1/chat/completions", headers=AUTH, content=b"{not json"), 400)["code"]
        == "invalid_json"
    )
    assert _err(http.post("/v1/chat/completions", headers=AUTH, content=b""), 400)["code"] == "invalid_json"
    _err(http.post("/v1/chat/completions", headers=AUTH, content=b"[1, 2]"), 400)
    _err(http.post("/v1/completions", headers=AUTH, content=b"\xff\xfe\x00"), 400)


def test_unknown_model_is_404(http: httpx.Client) -> None:
    err = _err(http.post("/v1/chat/completions", headers=AUTH, json={"model": "gpt-4", "messages": MSG}), 404)
    assert err["code"] == "model_not_found"


def test_context_limit(http: httpx.Client) -> None:
    long = "Paris is. " * 3000  # far more than max_context (2048) tokens
    err = _err(
        http.post(
            "/v1/chat/completions",
            headers=AUTH,
            json={"model": "deepseek-tiny", "messages": [{"role": "user", "content": long}]},
        ),
        400,
    )
    assert err["code"] == "context_length_exceeded"
    err = _err(
        http.post(
            "/v1/completions",
            headers=AUTH,
            json={"model": "deepseek-tiny", "prompt": "hi", "max_tokens": 2047},
        ),
        400,
    )
    assert err["code"] == "context_length_exceeded" and err["param"] == "max_tokens"
    ok = http.post(
        "/v1/completions", headers=AUTH, json={"model": "deepseek-tiny", "prompt": [5], "max_tokens": 4}
    )
    assert ok.status_code == 200
    _err(
        http.post(
            "/v1/completions",
            headers=AUTH,
            json={"model": "deepseek-tiny", "prompt": [5, 10**9], "max_tokens": 4},
        ),
        400,
    )


def test_oversized_body_is_413(http: httpx.Client) -> None:
    big = (
        b'{"model": "deepseek-tiny", "messages": [{"role": "user", "content": "' + b"a" * (5 << 20) + b'"}]}'
    )
    assert (
        _err(http.post("/v1/chat/completions", headers=AUTH, content=big), 413)["code"] == "request_too_large"
    )


def test_unknown_route_and_method(http: httpx.Client) -> None:
    assert _err(http.get("/v1/nothing", headers=AUTH), 404)["type"] == "not_found_error"
    _err(http.get("/v1/chat/completions", headers=AUTH), 405)


# -------------------------------------------------------------------------------------------- auth


@pytest.mark.parametrize(
    "header", [None, "Bearer wrong", "Basic " + KEY, "Bearer", KEY, "Bearer " + "x" * 5000]
)
def test_auth_required_everywhere_but_liveness(http: httpx.Client, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    assert http.get("/health/live", headers=headers).status_code == 200
    for method, path in [
        ("GET", "/health/ready"),
        ("GET", "/v1/models"),
        ("GET", "/metrics"),
        ("GET", "/admin/status"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
    ]:
        r = http.request(method, path, headers=headers, json={"model": "deepseek-tiny", "messages": MSG})
        assert _err(r, 401)["code"] == "invalid_api_key"
        assert r.headers["www-authenticate"] == "Bearer"


def test_scopes_and_model_allow_list(http: httpx.Client) -> None:
    reader = {"Authorization": "Bearer dsn-test-key-metrics"}
    assert http.get("/metrics", headers=reader).status_code == 200
    assert http.get("/health/ready", headers=reader).status_code == 200
    err = _err(
        http.post("/v1/chat/completions", headers=reader, json={"model": "deepseek-tiny", "messages": MSG}),
        403,
    )
    assert err["type"] == "permission_error"
    _err(http.get("/admin/status", headers=reader), 403)
    limited = {"Authorization": "Bearer dsn-test-key-nomodel"}
    r = http.post(
        "/v1/chat/completions",
        headers=limited,
        json={"model": "deepseek-tiny", "messages": MSG, "max_tokens": 2},
    )
    assert r.status_code == 200
    _err(http.get("/metrics", headers=limited), 403)
    assert http.get("/admin/status", headers=AUTH).json()["state"] == "ready"


# ------------------------------------------------------------------------------------- readiness


def test_readiness_goes_from_503_to_200_and_content_audit(tiny_model_dir: Path) -> None:
    d = ThreadedDaemon(config_for(tiny_model_dir, KEY, audit={"log_content": True, "redact": True})).start()
    try:
        with httpx.Client(base_url=d.base_url, timeout=10) as h:
            assert h.get("/health/live").status_code == 200  # listening before the model is loaded
            first = h.get("/health/ready", headers=AUTH)
            assert first.status_code == 503 and first.headers["retry-after"]
            r = h.post("/v1/chat/completions", headers=AUTH, json={"model": "deepseek-tiny", "messages": MSG})
            assert _err(r, 503)["code"] == "not_ready"
            d.wait_ready()
            assert h.get("/health/ready", headers=AUTH).json()["status"] == "ready"
            # With log_content on, prompt and completion are in the audit line, personal data redacted.
            r = h.post(
                "/v1/chat/completions",
                headers={**AUTH, "X-Request-ID": "content-1"},
                json={
                    "model": "deepseek-tiny",
                    "max_tokens": 4,
                    "messages": [{"role": "user", "content": "mail bob@example.com or call +1 555 123 4567"}],
                },
            )
            assert r.status_code == 200
            rec = next(json.loads(x) for x in d.audit.lines if '"content-1"' in x)
            assert rec["prompt"] == "user: mail [EMAIL] or call [PHONE]"
            assert rec["completion"] == redact_text(r.json()["choices"][0]["message"]["content"])
    finally:
        d.stop()


def test_metrics_exposition(daemon: ThreadedDaemon, http: httpx.Client) -> None:
    http.post(
        "/v1/chat/completions",
        headers=AUTH,
        json={"model": "deepseek-tiny", "messages": MSG, "max_tokens": 3},
    )
    text = http.get("/metrics", headers=AUTH).text
    for name in [
        "deepseek_node:time_to_first_token_seconds_bucket",
        "deepseek_node:inter_token_latency_seconds_bucket",
        "deepseek_node:e2e_request_latency_seconds_bucket",
        "deepseek_node:prompt_tokens_total",
        "deepseek_node:generation_tokens_total",
        "deepseek_node:num_requests_running",
        "deepseek_node:num_requests_waiting",
        "deepseek_node:kv_cache_usage_perc",
        'deepseek_node:http_requests_total{method="POST",route="/v1/chat/completions",status="200"}',
        'deepseek_node:request_success_total{finished_reason="length"',
    ]:
        assert name in text, name
    from deepseek_node.daemon.gateway.metrics import NvmlCollector

    # GPU series come from NVML when it answers, and are absent (not faked as zeros) when it does not.
    assert ("deepseek_node:gpu_memory_used_bytes" in text) == NvmlCollector().available
