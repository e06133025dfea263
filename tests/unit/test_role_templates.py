"""The inference_daemon role's templates rendered for real and read back the way the daemon and systemd
read them: the daemon config passes the daemon's own validation for both engines, and the units carry
what the design depends on (no key in any command line, the engine tied to the gateway)."""

from __future__ import annotations

import hashlib
import json
import shlex
from typing import Any

import jinja2
import pytest
import yaml

from deepseek_node.daemon.config import EngineKind, parse_config
from tests.conftest import REPO

TEMPLATES = REPO / "roles/inference_daemon/templates"


def _env() -> jinja2.Environment:
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined)
    env.filters["to_json"] = json.dumps
    env.filters["hash"] = lambda v, algo: hashlib.new(algo, str(v).encode()).hexdigest()
    env.filters["quote"] = shlex.quote
    env.filters["bool"] = bool
    return env


def _daemon_vars(engine: str) -> dict[str, Any]:
    return {
        "daemon_model_path": "/var/lib/deepseek-node/models/deepseek-tiny",
        "daemon_served_name": "deepseek-tiny",
        "daemon_plan": {
            "model": {
                "dtype": "auto",
                "quantization": "none",
                "device": "cpu",
                "tensor_parallel": 1,
                "pipeline_parallel": 1,
                "max_context": 4096,
            },
            "engine": {"max_running": 8},
            "plan": {"goal": "throughput"},
        },
        "daemon_listen_host": "0.0.0.0",
        "daemon_port": 8443,
        "daemon_tls_cert": "/etc/deepseek-node/tls/server.crt",
        "daemon_tls_key": "/run/credentials/deepseek-node.service/tls.key",
        "daemon_tls_min_version": "1.3",
        "daemon_tls_client_ca": "",
        "daemon_max_queue": 64,
        "daemon_default_max_tokens": None,
        "daemon_shutdown_grace_s": 30,
        "daemon_api_keys": [{"id": "ops", "key": "a-long-operator-key-0001", "scopes": ["inference"]}],
        "daemon_audit_log_content": False,
        "daemon_audit_redact": True,
        "daemon_engine": engine,
        "daemon_engine_port": 8000,
        "daemon_engine_key": "/run/credentials/deepseek-node.service/engine.key",
    }


_UNIT_COMMON: dict[str, Any] = {
    "daemon_served_name": "deepseek-tiny",
    "daemon_user": "deepseek",
    "daemon_venv": "/opt/deepseek-node/venv",
    "daemon_config_path": "/etc/deepseek-node/daemon.yaml",
    "daemon_tls_key_source": "/etc/deepseek-node/tls/server.key",
    "daemon_home": "/var/lib/deepseek-node",
    "daemon_log_dir": "/var/log/deepseek-node",
    "daemon_shutdown_grace_s": 30,
    "daemon_engine_service": "deepseek-node-engine",
    "daemon_engine_key_file": "/etc/deepseek-node/engine.env",
}
_ENGINE_COMMON: dict[str, Any] = {
    "daemon_served_name": "deepseek-tiny",
    "daemon_service": "deepseek-node",
    "daemon_user": "deepseek",
    "daemon_home": "/var/lib/deepseek-node",
    "engine_env_file": "/etc/deepseek-node/engine.env",
    "engine_env": {"VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1"},
    "engine_venv": "/opt/deepseek-node/vllm-venv",
    "engine_module": "vllm.entrypoints.openai.api_server",
    "engine_argv": ["--model", "/m"],
}


@pytest.mark.parametrize("engine", ["builtin", "vllm"])
def test_daemon_config_passes_the_daemons_validation(engine: str) -> None:
    text = _env().get_template("daemon.yaml.j2").render(**_daemon_vars(engine))
    cfg = parse_config(yaml.safe_load(text), "rendered daemon.yaml")
    assert cfg.engine.kind is EngineKind(engine)
    assert cfg.engine.default_max_tokens is None and cfg.server.tls_min_version == "1.3"
    assert "a-long-operator-key-0001" not in text  # only the hash reaches the host
    if engine == "vllm":
        assert cfg.vllm is not None and cfg.vllm.url == "http://127.0.0.1:8000" and not cfg.vllm.managed


def test_engine_unit_keeps_the_key_out_of_the_command_line() -> None:
    argv = ["--model", "/var/lib/deepseek-node/models/deepseek tiny", "--served-model-name", "deepseek-tiny"]
    text = (
        _env()
        .get_template("deepseek-node-engine.service.j2")
        .render(
            daemon_served_name="deepseek-tiny",
            daemon_service="deepseek-node",
            daemon_user="deepseek",
            daemon_home="/var/lib/deepseek-node",
            engine_env_file="/etc/deepseek-node/engine.env",
            engine_env={"VLLM_CPU_KVCACHE_SPACE": "2", "HF_HUB_OFFLINE": "1"},
            engine_venv="/opt/deepseek-node/vllm-venv",
            engine_module="vllm.entrypoints.openai.api_server",
            engine_argv=argv,
        )
    )
    lines = dict(line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#"))
    exec_start = shlex.split(lines["ExecStart"])
    assert exec_start[-4:] == argv  # quoted: a path with a space stays one argument
    assert "--api-key" not in exec_start and "VLLM_API_KEY" not in lines["ExecStart"]
    assert lines["EnvironmentFile"] == "/etc/deepseek-node/engine.env"
    assert lines["StopPropagatedFrom"] == "deepseek-node.service"
    assert lines["CapabilityBoundingSet"] == "" and lines["ProtectSystem"] == "strict"


@pytest.mark.parametrize("gpu", [False, True])
def test_units_are_sandboxed_to_an_exposure_of_at_most_2(gpu: bool, tmp_path) -> None:
    """systemd's own score (systemd-analyze security, offline) for both units, CPU and GPU variants."""
    import shutil
    import subprocess

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    env = _env()
    units = {
        "deepseek-node.service": env.get_template("deepseek-node.service.j2").render(
            daemon_engine="vllm", daemon_gpu=gpu, **_UNIT_COMMON
        ),
        "deepseek-node-engine.service": env.get_template("deepseek-node-engine.service.j2").render(
            daemon_gpu=gpu, **_ENGINE_COMMON
        ),
    }
    for name, text in units.items():
        path = tmp_path / name
        path.write_text(text)
        out = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", "--no-pager", str(path)],
            capture_output=True,
            text=True,
        ).stdout
        score = float(out.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0])
        assert score <= 2.0, f"{name}: {score}\n{out}"
        assert ("DeviceAllow=char-nvidia-uvm rw" in text) == gpu and ("PrivateDevices=yes" in text) != gpu


def test_daemon_unit_wants_the_engine_and_gets_its_key_as_a_credential() -> None:
    common = _UNIT_COMMON
    env = _env()
    vllm = env.get_template("deepseek-node.service.j2").render(daemon_engine="vllm", **common)
    assert "Wants=deepseek-node-engine.service" in vllm
    assert "LoadCredential=engine.key:/etc/deepseek-node/engine.env" in vllm
    builtin = env.get_template("deepseek-node.service.j2").render(daemon_engine="builtin", **common)
    assert "deepseek-node-engine" not in builtin


def test_the_bundle_carries_what_vllm_hosts_install() -> None:
    """The bundle's apt repository is built from `<role>_bundle_apt_packages`: what engine.yml installs on
    vLLM hosts must be in it, or the install fails on an air-gapped host."""
    defaults = yaml.safe_load((REPO / "roles/inference_daemon/defaults/main.yml").read_text())
    carried = set(defaults["inference_daemon_bundle_apt_packages"])
    vllm = (
        defaults["inference_daemon_vllm_apt_packages"]
        + defaults["inference_daemon_vllm_compiler_apt_packages"]
    )
    assert set(vllm) <= carried, sorted(set(vllm) - carried)
