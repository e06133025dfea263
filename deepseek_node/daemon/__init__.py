"""The inference daemon: an OpenAI-compatible HTTPS server in front of a transformers model.

Layout (vLLM/TGI style):

* `protocol` - request/response shapes (OpenAI); `config` - the YAML the Ansible role renders;
* `auth` - hashed API keys with scopes and model allow-lists; `audit` - one JSON line per request;
  `metrics` - Prometheus (`deepseek_node:` names after vLLM's), NVML GPU telemetry;
* `engine` - the abstract `Engine` plus `BatchingEngine` (admission queue, streaming, stop sequences,
  usage) over a token-level backend: `engine_cb` (transformers' continuous batching, paged KV),
  `engine_step` (own batched decode loop, for MLA models and CPU), `engine_proc` (the backend in its own
  process); `sampling` - per-request temperature/top_p/seed;
* `loading` - plan -> `from_pretrained` arguments (precision, quantization, placement);
* `api` - the thin router; `runtime` - assembly; `server` - uvicorn, TLS, signals, exit codes;
  `testing` - the same daemon in a thread, for tests and benchmarks.

Run it with `python -m deepseek_node.daemon --config PATH`. Only the base dependencies and the `daemon`
extra may be imported at run time (no httpx/openai/ansible).
"""
