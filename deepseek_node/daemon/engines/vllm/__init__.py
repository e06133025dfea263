"""vLLM as the engine: an OpenAI-compatible vLLM server on loopback, relayed by the gateway."""

from deepseek_node.daemon.engines.vllm.engine import EngineUnavailable, VllmEngine, engine_series

__all__ = ["EngineUnavailable", "VllmEngine", "engine_series"]
