"""What the official openai client and OpenAI-compatible tooling send, and what they expect back.

Rule under test: a request field that would change the output and that the daemon does not implement is a
400 naming it (`param`) with code `unsupported_parameter`/`unsupported_value`; harmless fields (user,
metadata, ...) and unknown extras are accepted; `null` is accepted for every optional field.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from tests.daemon.conftest import KEY

MODEL = "deepseek-tiny"
AUTH = {"Authorization": f"Bearer {KEY}"}
MSG = [{"role": "user", "content": "Hello, how are you today?"}]
# Greedy: a sampled random-weight model may emit EOS early and turn "length" into "stop" at random.
CHAT = {"model": MODEL, "messages": MSG, "max_tokens": 3, "temperature": 0}
CMPL = {"model": MODEL, "prompt": "The inference daemon", "max_tokens": 3, "temperature": 0}
# Optional chat fields that OpenAI accepts as null (some clients send explicit nulls rather than omit).
NULLABLE_CHAT = [
    "temperature",
    "top_p",
    "n",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logprobs",
    "top_logprobs",
    "logit_bias",
    "user",
    "max_completion_tokens",
    "response_format",
    "tools",
    "tool_choice",
    "stream",
    "stream_options",
    "modalities",
    "audio",
]
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def _events(r: httpx.Response) -> list[Any]:
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    out: list[Any] = []
    for line in r.text.splitlines():
        if line.startswith("data: "):
            data = line.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# ------------------------------------------------------------------------------- refused, by name


@pytest.mark.parametrize(
    ("path", "extra", "param", "code"),
    [
        ("chat", {"n": 2}, "n", "unsupported_value"),
        ("chat", {"presence_penalty": 0.5}, "presence_penalty", "unsupported_parameter"),
        ("chat", {"frequency_penalty": -1}, "frequency_penalty", "unsupported_parameter"),
        ("chat", {"logprobs": True}, "logprobs", "unsupported_parameter"),
        ("chat", {"logprobs": True, "top_logprobs": 2}, "logprobs", "unsupported_parameter"),
        ("chat", {"top_logprobs": 2}, "top_logprobs", "unsupported_parameter"),
        ("chat", {"logit_bias": {"50": -100}}, "logit_bias", "unsupported_parameter"),
        ("chat", {"response_format": {"type": "json_object"}}, "response_format", "unsupported_value"),
        (
            "chat",
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {}}}},
            "response_format",
            "unsupported_value",
        ),
        ("chat", {"tools": [TOOL]}, "tools", "unsupported_parameter"),
        ("chat", {"tool_choice": "required"}, "tool_choice", "unsupported_value"),
        (
            "chat",
            {"tool_choice": {"type": "function", "function": {"name": "f"}}},
            "tool_choice",
            "unsupported_value",
        ),
        ("chat", {"functions": [TOOL["function"]]}, "functions", "unsupported_parameter"),
        ("chat", {"function_call": {"name": "f"}}, "function_call", "unsupported_value"),
        ("chat", {"modalities": ["text", "audio"]}, "modalities", "unsupported_value"),
        ("chat", {"audio": {"voice": "alloy", "format": "wav"}}, "audio", "unsupported_parameter"),
        ("chat", {"reasoning_effort": "high"}, "reasoning_effort", "unsupported_parameter"),
        ("chat", {"top_k": 40}, "top_k", "unsupported_parameter"),
        ("chat", {"min_p": 0.1}, "min_p", "unsupported_parameter"),
        ("chat", {"repetition_penalty": 1.2}, "repetition_penalty", "unsupported_parameter"),
        (
            "chat",
            {"messages": [*MSG, {"role": "tool", "tool_call_id": "c1", "content": "42"}]},
            "messages.1.role",
            "unsupported_value",
        ),
        (
            "chat",
            {
                "messages": [
                    *MSG,
                    {
                        "role": "assistant",
                        "content": None,
                        "tool_calls": [
                            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
                        ],
                    },
                ]
            },
            "messages.1.tool_calls",
            "unsupported_parameter",
        ),
        (
            "chat",
            {"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]},
            "messages.0.content",
            "unsupported_value",
        ),
        ("chat", {"max_completion_tokens": 9}, "max_completion_tokens", None),  # disagrees with max_tokens
        ("chat", {"stream_options": {"include_usage": True}}, "stream_options", None),  # without stream
        ("cmpl", {"n": 3}, "n", "unsupported_value"),
        ("cmpl", {"best_of": 2}, "best_of", "unsupported_value"),
        ("cmpl", {"logprobs": 0}, "logprobs", "unsupported_parameter"),  # 0 still asks for the sampled ones
        ("cmpl", {"logprobs": 3}, "logprobs", "unsupported_parameter"),
        ("cmpl", {"logit_bias": {"50": 5}}, "logit_bias", "unsupported_parameter"),
        ("cmpl", {"echo": True}, "echo", "unsupported_parameter"),
        ("cmpl", {"suffix": "end"}, "suffix", "unsupported_parameter"),
        ("cmpl", {"presence_penalty": 1}, "presence_penalty", "unsupported_parameter"),
        ("cmpl", {"prompt": ["one", "two"]}, "prompt", "unsupported_value"),
    ],
)
def test_unimplemented_output_changing_fields_are_400_by_name(
    http: httpx.Client, path: str, extra: dict[str, Any], param: str, code: str | None
) -> None:
    url, base = ("/v1/chat/completions", CHAT) if path == "chat" else ("/v1/completions", CMPL)
    r = http.post(url, headers=AUTH, json={**base, **extra})
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["type"] == "invalid_request_error"
    assert err["param"] == param and err["message"].startswith(param + ":")
    if code is not None:
        assert err["code"] == code


def test_openai_client_gets_bad_request_for_unimplemented(client: openai.OpenAI) -> None:
    for kwargs in (
        {"n": 2},
        {"logprobs": True, "top_logprobs": 3},
        {"tools": [TOOL]},
        {"response_format": {"type": "json_object"}},
        {"logit_bias": {"50": -100}},
        {"presence_penalty": 0.3},
    ):
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=2, **kwargs)  # type: ignore[call-overload]
        assert info.value.param == next(iter(kwargs))


# ------------------------------------------------------------------------------------ accepted


@pytest.mark.parametrize(
    "extra",
    [
        {"user": "user-123"},
        {"metadata": {"k": "v"}, "store": False, "service_tier": "auto", "prompt_cache_key": "p"},
        {"parallel_tool_calls": False, "tools": [], "tool_choice": "none"},
        {"tool_choice": "auto"},
        {"logit_bias": {}, "logprobs": False, "top_logprobs": 0},
        {"presence_penalty": 0, "frequency_penalty": 0.0},
        {"response_format": {"type": "text"}, "modalities": ["text"]},
        {"top_k": -1, "min_p": 0, "repetition_penalty": 1},
        {"n": 1, "seed": 5, "stop": "\n\n"},
        {"some_future_field": {"x": 1}, "another": [1, 2]},
        {"max_tokens": 3, "max_completion_tokens": 3},
        dict.fromkeys(NULLABLE_CHAT),
        {
            "messages": [
                {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
                {"role": "developer", "content": "Answer in English."},
                {
                    "role": "user",
                    "name": "alice",
                    "content": [{"type": "text", "text": "Hi"}, {"type": "text", "text": "!"}],
                },
                {"role": "assistant", "content": None},
                {
                    "role": "user",
                    "content": [{"type": "text", "text": "Go", "cache_control": {"type": "ephemeral"}}],
                },
            ]
        },
    ],
)
def test_harmless_and_unknown_fields_are_accepted(http: httpx.Client, extra: dict[str, Any]) -> None:
    r = http.post("/v1/chat/completions", headers=AUTH, json={**CHAT, **extra})
    assert r.status_code == 200, r.text
    assert r.json()["object"] == "chat.completion"


def test_completions_nulls_and_neutral_values_accepted(http: httpx.Client) -> None:
    nulls = dict.fromkeys(
        ("n", "best_of", "logprobs", "echo", "suffix", "stream", "logit_bias", "user", "seed")
    )
    r = http.post("/v1/completions", headers=AUTH, json={**CMPL, **nulls})
    assert r.status_code == 200, r.text
    r = http.post("/v1/completions", headers=AUTH, json={**CMPL, "n": 1, "best_of": 1, "echo": False})
    assert r.status_code == 200, r.text


def test_openai_client_request_fields_are_honoured(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[
            {"role": "developer", "content": "You are terse."},
            {"role": "user", "content": [{"type": "text", "text": "Hello"}], "name": "alice"},
        ],
        max_completion_tokens=4,
        temperature=0,
        user="user-1",
        seed=3,
        stop=["\n\n\n"],
    )
    assert r.usage is not None and 1 <= r.usage.completion_tokens <= 4
    assert r.choices[0].finish_reason in ("stop", "length")
    # Same seed, same sampled output at temperature 1.
    a, b = (
        client.chat.completions.create(model=MODEL, messages=MSG, max_tokens=8, temperature=1.0, seed=11)
        for _ in range(2)
    )
    assert a.choices[0].message.content == b.choices[0].message.content


def test_stop_as_string_and_list_is_honoured(http: httpx.Client) -> None:
    body = {**CMPL, "max_tokens": 24, "temperature": 0}
    full = http.post("/v1/completions", headers=AUTH, json=body).json()["choices"][0]["text"]
    stop = next((full[i : i + 2] for i in range(2, len(full) - 1) if full[i : i + 2].strip()), None)
    if stop is None:
        pytest.skip(f"the tiny model's output has no usable stop string: {full!r}")
    cut = full[: full.index(stop)]
    for form in (stop, [stop], ["never-appears", stop]):
        r = http.post("/v1/completions", headers=AUTH, json={**body, "stop": form}).json()
        assert r["choices"][0]["finish_reason"] == "stop", form
        assert r["choices"][0]["text"] == cut, form


# ------------------------------------------------------------------------------------ responses


def test_non_streaming_response_shapes(http: httpx.Client) -> None:
    chat = http.post("/v1/chat/completions", headers=AUTH, json=CHAT).json()
    assert set(chat) == {"id", "object", "created", "model", "system_fingerprint", "choices", "usage"}
    assert chat["id"].startswith("chatcmpl-") and chat["object"] == "chat.completion"
    assert isinstance(chat["created"], int) and chat["model"] == MODEL
    assert chat["system_fingerprint"].startswith("fp_")
    (choice,) = chat["choices"]
    assert choice["index"] == 0 and choice["logprobs"] is None and choice["finish_reason"] == "length"
    assert choice["message"] == {
        "role": "assistant",
        "content": choice["message"]["content"],
        "refusal": None,
    }
    usage = chat["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    cmpl = http.post("/v1/completions", headers=AUTH, json=CMPL).json()
    assert cmpl["object"] == "text_completion" and cmpl["id"].startswith("cmpl-")
    assert cmpl["system_fingerprint"] == chat["system_fingerprint"]
    assert set(cmpl["choices"][0]) == {"index", "text", "finish_reason", "logprobs"}


def test_chat_stream_chunk_shapes(http: httpx.Client) -> None:
    body = {**CHAT, "stream": True, "stream_options": {"include_usage": True}}
    ev = _events(http.post("/v1/chat/completions", headers=AUTH, json=body))
    assert ev[-1] == "[DONE]"
    chunks, usage_chunk = ev[:-2], ev[-2]
    assert len({c["id"] for c in ev[:-1]}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in ev[:-1])
    assert all(c["system_fingerprint"].startswith("fp_") for c in ev[:-1])
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    # With include_usage: `usage: null` on every chunk but the last, which has no choices.
    assert all("usage" in c and c["usage"] is None for c in chunks)
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["completion_tokens"] == 3
    reasons = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"][0]["finish_reason"]]
    assert reasons == ["length"] and chunks[-1]["choices"][0]["finish_reason"] == "length"
    # Without include_usage (or with stream_options null): no usage key at all, no usage chunk.
    for extra in ({}, {"stream_options": None}, {"stream_options": {"include_usage": False}}):
        plain = _events(
            http.post("/v1/chat/completions", headers=AUTH, json={**CHAT, "stream": True, **extra})
        )
        assert plain[-1] == "[DONE]" and all("usage" not in c and c["choices"] for c in plain[:-1])


def test_completion_stream_chunk_shapes(http: httpx.Client) -> None:
    body = {**CMPL, "stream": True, "stream_options": {"include_usage": True}}
    ev = _events(http.post("/v1/completions", headers=AUTH, json=body))
    assert ev[-1] == "[DONE]"
    assert all(c["object"] == "text_completion" for c in ev[:-1])
    assert all(c["usage"] is None and "text" in c["choices"][0] for c in ev[:-2])
    assert ev[-2]["choices"] == [] and ev[-2]["usage"]["completion_tokens"] == 3


def test_openai_client_stream_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MSG,
        max_completion_tokens=4,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert chunks[-1].usage.completion_tokens == 4


# --------------------------------------------------------------------------------------- models


def test_models_list_and_retrieve(client: openai.OpenAI, http: httpx.Client) -> None:
    listed = client.models.list()
    assert [m.id for m in listed.data] == [MODEL]
    one = client.models.retrieve(MODEL)
    assert (
        one.id == MODEL and one.object == "model" and one.owned_by and one.created == listed.data[0].created
    )
    raw = http.get(f"/v1/models/{MODEL}", headers=AUTH)
    assert raw.status_code == 200 and set(raw.json()) == {"id", "object", "created", "owned_by"}
    with pytest.raises(openai.NotFoundError) as info:
        client.models.retrieve("gpt-4o")
    assert info.value.code == "model_not_found"
    for name in ("gpt-4o", "org/model:latest", f"{MODEL}/x"):
        r = http.get(f"/v1/models/{name}", headers=AUTH)
        assert r.status_code == 404 and r.json()["error"]["code"] == "model_not_found"
    assert http.get(f"/v1/models/{MODEL}").status_code == 401
    denied = http.get(f"/v1/models/{MODEL}", headers={"Authorization": "Bearer dsn-test-key-metrics"})
    assert denied.status_code == 403 and denied.json()["error"]["type"] == "permission_error"
