"""deepseek-node: provision air-gapped DeepSeek inference nodes."""

__version__ = "0.1.0"
