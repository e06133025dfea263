"""Shared fixtures: one tiny model per test session; the lab fixtures live in tests/lab_fixtures.py."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

pytest_plugins = ["tests.lab_fixtures"]

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight DeepSeek-V3-architecture model directory, built once per session."""
    from deepseek_node.tiny_model import make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "deepseek-tiny")


@pytest.fixture(scope="session")
def tiny_llama_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deepseek_node.tiny_model import TinyModelSpec, make_tiny_model

    return make_tiny_model(tmp_path_factory.mktemp("models") / "llama-tiny", TinyModelSpec(arch="llama"))
