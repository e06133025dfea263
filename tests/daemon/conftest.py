"""Daemon fixtures: a self-signed TLS cert, and real daemons (uvicorn in a thread) on the tiny models.

Daemons are session-scoped: loading a model and warming up costs seconds, the requests cost milliseconds.
Tests that change daemon state irreversibly (shutdown, overload) start their own.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from deepseek_node.daemon.testing import ThreadedDaemon, config_for, self_signed_cert

KEY = "dsn-test-key-ops"


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1/localhost and its key (PEM files)."""
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="session")
def daemon(tiny_model_dir: Path, tls_files: tuple[Path, Path]) -> Iterator[ThreadedDaemon]:
    """HTTPS daemon on the DeepSeek-V3 tiny model (MLA + MoE: the step backend)."""
    other = {
        "id": "reader",
        "sha256": __import__("hashlib").sha256(b"dsn-test-key-metrics").hexdigest(),
        "scopes": ["metrics"],
        "models": [],
    }
    wrong_model = {
        "id": "other-model",
        "sha256": __import__("hashlib").sha256(b"dsn-test-key-nomodel").hexdigest(),
        "scopes": ["inference"],
        "models": ["deepseek-tiny"],
    }
    cfg = config_for(
        tiny_model_dir, KEY, tls=tls_files, extra_keys=[other, wrong_model], engine={"max_queue": 256}
    )
    d = ThreadedDaemon(cfg).start()
    d.wait_ready()
    yield d
    d.stop()


@pytest.fixture(scope="session")
def llama_daemon(tiny_llama_dir: Path) -> Iterator[ThreadedDaemon]:
    """Plain-HTTP daemon on the Llama tiny model (transformers' continuous batching backend)."""
    cfg = config_for(tiny_llama_dir, KEY, served_name="llama-tiny", engine={"backend": "continuous_batching"})
    d = ThreadedDaemon(cfg).start()
    d.wait_ready()
    yield d
    d.stop()


def tls_context(tls_files: tuple[Path, Path]) -> ssl.SSLContext:
    """A client context that trusts only the tests' self-signed certificate."""
    return ssl.create_default_context(cafile=str(tls_files[0]))


def openai_client(daemon: ThreadedDaemon, tls_files: tuple[Path, Path], key: str = KEY) -> openai.OpenAI:
    """The official openai client on an HTTPS daemon, trusting only the tests' certificate."""
    return openai.OpenAI(
        base_url=daemon.base_url + "/v1",
        api_key=key,
        http_client=httpx.Client(verify=tls_context(tls_files)),
        max_retries=0,
    )


@pytest.fixture
def client(daemon: ThreadedDaemon, tls_files: tuple[Path, Path]) -> openai.OpenAI:
    """The official openai client on the HTTPS daemon."""
    return openai_client(daemon, tls_files)


@pytest.fixture
def http(daemon: ThreadedDaemon, tls_files: tuple[Path, Path]) -> Iterator[httpx.Client]:
    """Plain httpx on the HTTPS daemon, for what the openai client would hide."""
    with httpx.Client(base_url=daemon.base_url, verify=tls_context(tls_files), timeout=30) as c:
        yield c
