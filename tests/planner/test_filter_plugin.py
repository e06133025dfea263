"""The Ansible filter `deepseek_plan`: plain Python first, then once through Ansible itself."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

# Importing Ansible patches sys.intern, after which torch._dynamo (which transformers imports to build a
# model) refuses to import. Import it first, so this module cannot break model-loading tests after it.
import torch._dynamo  # noqa: F401  # isort: skip
from ansible.errors import AnsibleFilterError  # isort: skip

REPO = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO / "plugins" / "filter"


def _load_plugin():
    spec = importlib.util.spec_from_file_location("deepseek_plan_filter", PLUGIN_DIR / "deepseek_plan.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


plugin = _load_plugin()


def test_registered_under_its_name() -> None:
    assert plugin.FilterModule().filters()["deepseek_plan"] is plugin.deepseek_plan


def test_lab_node_gets_the_daemon_config(tiny_model_dir: Path) -> None:
    config = plugin.deepseek_plan(
        {"deepseek_hardware_profile": "cpu-only", "deepseek_model_dir": str(tiny_model_dir)}, "lab-node-1"
    )
    assert config["model"] == {
        "dtype": "float32",
        "quantization": "none",
        "device": "cpu",
        "tensor_parallel": 1,
        "pipeline_parallel": 1,
        "max_context": 2048,
    }
    assert config["plan"]["precision"] == "fp32" and config["plan"]["reasons"]


def test_same_plan_as_the_cli_path() -> None:
    from deepseek_node.inventory import host_settings

    hostvars = {
        "deepseek_hardware_profile": "h100-sxm-80g-x8",
        "deepseek_hardware_overrides": {"gpu_count": 4},
        "deepseek_model": "deepseek-r1-distill-llama-70b",
        "deepseek_serving_goal": "latency",
        "deepseek_max_context": 16384,
    }
    assert (
        plugin.deepseek_plan(hostvars, "gpu-1") == host_settings("gpu-1", hostvars).plan().to_daemon_config()
    )


def test_omit_placeholders_count_as_unset() -> None:
    omit = "__omit_place_holder__5f1f0ca3a2bd"
    config = plugin.deepseek_plan(
        {
            "deepseek_hardware_profile": "h200-sxm-141g-x8",
            "deepseek_model": "deepseek-r1",
            "deepseek_model_dir": omit,
            "deepseek_max_context": omit,
            "deepseek_hardware_overrides": {},
        },
        "gpu-2",
    )
    assert config["model"]["quantization"] == "fp8"


def test_host_name_may_come_with_the_variables() -> None:
    with pytest.raises(AnsibleFilterError, match="host gpu-9: deepseek_model"):
        plugin.deepseek_plan({"inventory_hostname": "gpu-9", "deepseek_hardware_profile": "cpu-only"})


def test_invalid_inventory_names_host_key_and_fix() -> None:
    with pytest.raises(AnsibleFilterError) as exc:
        plugin.deepseek_plan(
            {
                "deepseek_hardware_profile": "h100-sxm-80g-x8",
                "deepseek_hardware_overrides": {"gpu_count": -1},
                "deepseek_model": "deepseek-v3",
                "deepseek_serving_goal": "fast",
            },
            "gpu-3",
        )
    text = str(exc.value)
    assert "host gpu-3: deepseek_hardware_overrides.gpu_count" in text
    assert (
        "host gpu-3: deepseek_serving_goal: 'fast' is not a serving goal; fix: use throughput or latency"
        in text
    )
    assert "nothing was changed" in text


def test_model_that_cannot_fit_fails_with_what_would() -> None:
    with pytest.raises(AnsibleFilterError) as exc:
        plugin.deepseek_plan(
            {"deepseek_hardware_profile": "h100-pcie-80g-x4", "deepseek_model": "deepseek-v3"}, "gpu-4"
        )
    assert (
        "host gpu-4: deepseek-v3 does not fit on h100-pcie-80g-x4; use 8 GPUs like h100-pcie-80g-x8"
        in str(exc.value)
    )


def test_not_a_dict() -> None:
    with pytest.raises(AnsibleFilterError, match="expects a dict"):
        plugin.deepseek_plan("cpu-only")


def _ansible_debug(tmp_path: Path, subset: dict, host: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "vars.json").write_text(json.dumps({"subset": subset, "node": host}))
    env = {
        **os.environ,
        "ANSIBLE_FILTER_PLUGINS": str(PLUGIN_DIR),
        "ANSIBLE_CONFIG": str(tmp_path / "none.cfg"),  # not the repo's: no inventory, default callback
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "false",
    }
    ansible = Path(sys.executable).with_name("ansible")
    return subprocess.run(
        [str(ansible), "localhost", "-i", "localhost,", "-c", "local", "-e", "@vars.json",
         "-m", "ansible.builtin.debug", "-a", "msg={{ subset | deepseek_plan(node) }}"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip


def test_through_ansible(tmp_path: Path, tiny_model_dir: Path) -> None:
    proc = _ansible_debug(
        tmp_path,
        {"deepseek_hardware_profile": "cpu-only", "deepseek_model_dir": str(tiny_model_dir)},
        "lab-node-1",
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.split("=>", 1)[1])
    assert result["msg"]["model"]["dtype"] == "float32"
    assert result["msg"]["model"]["device"] == "cpu"
    assert result["msg"]["engine"]["max_running"] >= 1


def test_through_ansible_bad_inventory_fails_the_task(tmp_path: Path) -> None:
    proc = _ansible_debug(
        tmp_path, {"deepseek_hardware_profile": "h100-80g-x8", "deepseek_model": "deepseek-v3"}, "gpu-7"
    )
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "host gpu-7: deepseek_hardware_profile: 'h100-80g-x8' is not a known hardware profile" in out
    assert "did you mean 'h100-sxm-80g-x8'" in out
