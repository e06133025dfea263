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
    # trim_blocks as Ansible's template module renders (a block tag eats the newline after it).
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)), undefined=jinja2.StrictUndefined, trim_blocks=True
    )
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


# --- a serving group: the head's engine and gateway, a worker's headless engine ---


def _group_units(tmp_path) -> dict[str, str]:
    from deepseek_node.planner import HARDWARE_PROFILES, MODELS, Goal
    from deepseek_node.planner import engine_args as ea
    from deepseek_node.planner.group import GroupRequest, plan_group

    g = plan_group(GroupRequest(MODELS["deepseek-r1"], HARDWARE_PROFILES["h100-sxm-80g-x8"], 2, Goal.THROUGHPUT,
                                None, "r1_pair", ("gpu-a", "gpu-b")))  # fmt: skip
    head, worker = ea.group_vllm_args(
        g, model_path="/m", served_name="deepseek-r1", port=8000, master_addr="10.9.0.1",
        checkpoint_quant="fp8", addresses={"gpu-a": "10.9.0.1", "gpu-b": "10.9.0.2"},
    )  # fmt: skip
    env = _env()
    out = {}
    for cmd, peer in ((head, "10.9.0.2"), (worker, "10.9.0.1")):
        out[cmd.role] = env.get_template("deepseek-node-engine.service.j2").render(
            **{**_ENGINE_COMMON, "engine_module": cmd.module, "engine_argv": cmd.argv,
               "engine_env": {**cmd.env, "NCCL_SOCKET_IFNAME": "eth1"}},
            daemon_gpu=True,
            engine_script="/opt/deepseek-node/vllm-venv/bin/deepseek-vllm-serve" if cmd.role == "worker" else "",
            engine_group="r1_pair", engine_group_role=cmd.role, engine_group_peers=[peer],
        )  # fmt: skip
    return out


def test_group_units_run_each_rank_reach_only_the_members_and_restart_to_rejoin(tmp_path) -> None:
    units = _group_units(tmp_path)
    for role, peer in (("head", "10.9.0.2"), ("worker", "10.9.0.1")):
        lines = [line for line in units[role].splitlines() if "=" in line and not line.startswith("#")]
        keys = dict(line.split("=", 1) for line in lines)
        assert keys["IPAddressAllow"] == f"localhost {peer}"
        assert keys["Restart"] == "always" and f"{role} of serving group r1_pair" in keys["Description"]
        envs = [json.loads(line.split("=", 1)[1]) for line in lines if line.startswith('Environment="')]
        assert "NCCL_SOCKET_IFNAME=eth1" in envs
        assert f"VLLM_HOST_IP={'10.9.0.1' if role == 'head' else '10.9.0.2'}" in envs
        exec_start = shlex.split(keys["ExecStart"])
        assert "--api-key" not in exec_start
    head = shlex.split(
        dict(x.split("=", 1) for x in units["head"].splitlines() if x.startswith("ExecStart="))["ExecStart"]
    )
    worker = shlex.split(
        dict(x.split("=", 1) for x in units["worker"].splitlines() if x.startswith("ExecStart="))["ExecStart"]
    )
    assert head[1:3] == ["-m", "vllm.entrypoints.openai.api_server"] and "--headless" not in head
    assert (
        worker[1:3] == ["/opt/deepseek-node/vllm-venv/bin/deepseek-vllm-serve", "serve"]
        and "--headless" in worker
    )


def test_group_units_stay_sandboxed(tmp_path) -> None:
    import shutil
    import subprocess

    if shutil.which("systemd-analyze") is None:
        pytest.skip("systemd-analyze is not installed")
    for role, text in _group_units(tmp_path).items():
        path = tmp_path / "deepseek-node-engine.service"
        path.write_text(text)
        out = subprocess.run(
            ["systemd-analyze", "security", "--offline=true", "--no-pager", str(path)],
            capture_output=True, text=True,
        ).stdout  # fmt: skip
        score = float(out.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0])
        assert score <= 2.0, f"{role}: {score}\n{out}"


def test_the_heads_daemon_config_names_its_workers() -> None:
    daemon_vars = _daemon_vars("vllm")
    text = (
        _env()
        .get_template("daemon.yaml.j2")
        .render(
            **daemon_vars,
            daemon_group={
                "name": "r1_pair",
                "engine_unit": "deepseek-node-engine.service",
                "workers": [{"key": "gpu-b", "value": "10.9.0.2"}],
            },
        )
    )
    cfg = parse_config(yaml.safe_load(text), "rendered daemon.yaml")
    assert cfg.group is not None and cfg.group.name == "r1_pair"
    assert cfg.group.engine_unit == "deepseek-node-engine.service"
    assert [(w.host, w.address) for w in cfg.group.workers] == [("gpu-b", "10.9.0.2")]
    single = parse_config(yaml.safe_load(_env().get_template("daemon.yaml.j2").render(**daemon_vars)), "x")
    assert single.group is None


def test_the_worker_launcher_answers_for_the_cpu_build_and_guards_spawned_children(tmp_path) -> None:
    import subprocess

    launcher = (REPO / "roles/inference_daemon/files/vllm_serve.py").read_text()
    assert 'if __name__ == "__main__":' in launcher
    probe = tmp_path / "probe.py"
    probe.write_text(
        launcher.split('if __name__ == "__main__":')[0]
        + "import importlib.metadata as m\nprint(m.version('vllm'))\n"
    )
    out = subprocess.run([str(REPO / ".venv-vllm/bin/python"), str(probe)], capture_output=True, text=True)
    if out.returncode != 0 and "No module" in out.stderr:
        pytest.skip("no .venv-vllm")
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("+cpu") or out.stdout.strip()[0].isdigit()
