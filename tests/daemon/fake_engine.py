"""A stand-in for vLLM's OpenAI server, for fast tests of the gateway's relay: same routes and shapes.

It answers with the prompt echoed back (so a test can tell whose answer a client received), checks the
internal key exactly as vLLM's `--api-key` does, and records the headers it received.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from typing import Any

import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, StreamingResponse

METRICS = b"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="fake"} 0.0
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="fake"} 0.25
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 1.5
"""


class FakeEngine:
    def __init__(self, key: str) -> None:
        self.key = key
        self.healthy = True
        self.request_ids: list[str] = []
        self.seen_headers: list[dict[str, str]] = []
        self.app = self._app()
        self.server: uvicorn.Server | None = None
        self.port = 0

    def _app(self) -> FastAPI:
        app = FastAPI()

        @app.get("/health")
        async def health() -> Any:
            return PlainTextResponse("", status_code=200 if self.healthy else 503)

        @app.get("/metrics")
        async def metrics() -> Any:
            return PlainTextResponse(METRICS.decode())

        async def generate(request: Request, chat: bool) -> Any:
            if request.headers.get("authorization") != f"Bearer {self.key}":
                return JSONResponse({"error": "Unauthorized"}, status_code=401)
            self.seen_headers.append(dict(request.headers))
            self.request_ids.append(request.headers.get("x-request-id", ""))
            body = json.loads(await request.body())
            if body.get("temperature", 0) > 2:
                return JSONResponse(
                    {
                        "error": {
                            "message": "temperature must be in [0, 2]",
                            "type": "BadRequestError",
                            "param": "temperature",
                            "code": 400,
                        }
                    },
                    status_code=400,
                )
            prompt = body["messages"][-1]["content"] if chat else body["prompt"]
            words = prompt.split()[: body.get("max_tokens") or 16]
            delay = float(body.get("delay", 0) or 0)
            if not body.get("stream"):
                await asyncio.sleep(delay)
                text = " ".join(words)
                choice: dict[str, Any] = (
                    {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "length"}
                    if chat
                    else {"index": 0, "text": text, "finish_reason": "length"}
                )
                return {
                    "id": "chatcmpl-fake",
                    "object": "chat.completion" if chat else "text_completion",
                    "created": int(time.time()),
                    "model": body["model"],
                    "choices": [choice],
                    "usage": {
                        "prompt_tokens": 3,
                        "completion_tokens": len(words),
                        "total_tokens": 3 + len(words),
                    },
                }

            async def events() -> Any:
                base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1, "model": "m"}
                yield (
                    "data: "
                    + json.dumps({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}}]})
                    + "\n\n"
                )
                for i, w in enumerate(words):
                    await asyncio.sleep(delay / max(1, len(words)))
                    last = i == len(words) - 1
                    choice = {
                        "index": 0,
                        "delta": {"content": w + ("" if last else " ")},
                        "finish_reason": "length" if last else None,
                    }
                    yield "data: " + json.dumps({**base, "choices": [choice]}, separators=(",", ":")) + "\n\n"
                if (body.get("stream_options") or {}).get("include_usage"):
                    usage = {
                        "prompt_tokens": 3,
                        "completion_tokens": len(words),
                        "total_tokens": 3 + len(words),
                    }
                    yield (
                        "data: "
                        + json.dumps({**base, "choices": [], "usage": usage}, separators=(",", ":"))
                        + "\n\n"
                    )
                yield "data: [DONE]\n\n"

            return StreamingResponse(events(), media_type="text/event-stream")

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            return await generate(request, True)

        @app.post("/v1/completions")
        async def completions(request: Request) -> Any:
            return await generate(request, False)

        return app

    def start(self) -> FakeEngine:
        config = uvicorn.Config(self.app, host="127.0.0.1", port=0, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        thread = threading.Thread(target=self.server.run, daemon=True)
        thread.start()
        while not self.server.started:
            time.sleep(0.01)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self._thread = thread
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.server is not None:
            self.server.should_exit = True
            self._thread.join(10)
