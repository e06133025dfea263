"""The inference daemon: an OpenAI-compatible HTTPS server in front of a transformers model.

Layout (vLLM/TGI style): `protocol` (request/response shapes), `config` (the YAML the Ansible role
renders), `auth`, `audit`, `metrics`, `engine` (abstract engine + admission/streaming over a token-level
backend: `engine_cb` for transformers' continuous batching, `engine_step` for the rest), `loading` (plan
-> from_pretrained arguments), `api` (thin router), `runtime` (assembly) and `server` (uvicorn, TLS,
signals). Run it with `python -m deepseek_node.daemon --config PATH`.

Only the base dependencies and the `daemon` extra may be imported at run time (no httpx/openai/ansible).
"""
