"""The Ansible filter `deepseek_plan`: plain Python first, then once through Ansible itself.

Importing Ansible patches `sys.intern`, `socket.getaddrinfo` and dataclasses process-wide, after which
`torch._dynamo` (imported by transformers to build a model) refuses to import. So the plain-Python calls run
in a fresh interpreter of the same venv, all cases in one go, as Ansible itself would load the plugin: the
test session that loads models never imports Ansible.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from deepseek_node.inventory import host_settings

REPO = Path(__file__).resolve().parents[2]
PLUGIN_DIR = REPO / "plugins" / "filter"

# Loads the plugin file the way Ansible does (by path), calls the filter for each case from stdin.
DRIVER = """
import importlib.util, json, sys
from ansible.errors import AnsibleFilterError
spec = importlib.util.spec_from_file_location("deepseek_plan_filter", sys.argv[1])
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
results = {"registered": module.FilterModule().filters()["deepseek_plan"] is module.deepseek_plan}
for name, (subset, host) in json.load(sys.stdin).items():
    try:
        results[name] = {"ok": True, "value": module.deepseek_plan(subset, host)}
    except Exception as exc:
        results[name] = {"ok": False, "filter_error": isinstance(exc, AnsibleFilterError), "error": str(exc)}
print(json.dumps(results))
"""

OMIT = "__omit_place_holder__5f1f0ca3a2bd"
SAME_AS_CLI = {
    "deepseek_hardware_profile": "h100-sxm-80g-x8",
    "deepseek_hardware_overrides": {"gpu_count": 4},
    "deepseek_model": "deepseek-r1-distill-llama-70b",
    "deepseek_serving_goal": "latency",
    "deepseek_max_context": 16384,
}


@pytest.fixture(scope="module")
def calls(tiny_model_dir: Path) -> dict[str, Any]:
    cases = {
        "lab": (
            {"deepseek_hardware_profile": "cpu-only", "deepseek_model_dir": str(tiny_model_dir)},
            "lab-node-1",
        ),
        "same_as_cli": (SAME_AS_CLI, "gpu-1"),
        "omit": (
            {
                "deepseek_hardware_profile": "h200-sxm-141g-x8",
                "deepseek_model": "deepseek-r1",
                "deepseek_model_dir": OMIT,
                "deepseek_max_context": OMIT,
                "deepseek_hardware_overrides": {},
            },
            "gpu-2",
        ),
        "host_in_vars": ({"inventory_hostname": "gpu-9", "deepseek_hardware_profile": "cpu-only"}, None),
        "invalid": (
            {
                "deepseek_hardware_profile": "h100-sxm-80g-x8",
                "deepseek_hardware_overrides": {"gpu_count": -1},
                "deepseek_model": "deepseek-v3",
                "deepseek_serving_goal": "fast",
            },
            "gpu-3",
        ),
        "no_fit": (
            {"deepseek_hardware_profile": "h100-pcie-80g-x4", "deepseek_model": "deepseek-v3"},
            "gpu-4",
        ),
        "not_a_dict": ("cpu-only", "gpu-5"),
    }
    proc = subprocess.run(
        [sys.executable, "-c", DRIVER, str(PLUGIN_DIR / "deepseek_plan.py")],
        input=json.dumps(cases), capture_output=True, text=True, timeout=120, check=True,
    )  # fmt: skip
    return json.loads(proc.stdout)


def test_registered_under_its_name(calls: dict[str, Any]) -> None:
    assert calls["registered"] is True


def test_lab_node_gets_the_daemon_config(calls: dict[str, Any]) -> None:
    assert calls["lab"]["ok"], calls["lab"]
    config = calls["lab"]["value"]
    assert config["model"] == {
        "dtype": "float32",
        "quantization": "none",
        "device": "cpu",
        "tensor_parallel": 1,
        "pipeline_parallel": 1,
        "max_context": 2048,
    }
    assert config["plan"]["precision"] == "fp32" and config["plan"]["reasons"]


def test_same_plan_as_the_cli_path(calls: dict[str, Any]) -> None:
    """One implementation, two surfaces: the filter returns what `provision plan` computes."""
    assert calls["same_as_cli"]["value"] == host_settings("gpu-1", SAME_AS_CLI).plan().to_daemon_config()


def test_omit_placeholders_count_as_unset(calls: dict[str, Any]) -> None:
    assert calls["omit"]["value"]["model"]["quantization"] == "fp8"


def test_host_name_may_come_with_the_variables(calls: dict[str, Any]) -> None:
    assert calls["host_in_vars"]["filter_error"]
    assert "host gpu-9: deepseek_model" in calls["host_in_vars"]["error"]


def test_invalid_inventory_names_host_key_and_fix(calls: dict[str, Any]) -> None:
    result = calls["invalid"]
    assert result["filter_error"]
    text = result["error"]
    assert "host gpu-3: deepseek_hardware_overrides.gpu_count" in text
    assert (
        "host gpu-3: deepseek_serving_goal: 'fast' is not a serving goal; fix: use throughput or latency"
        in text
    )
    assert "nothing was changed" in text


def test_model_that_cannot_fit_fails_with_what_would(calls: dict[str, Any]) -> None:
    result = calls["no_fit"]
    assert result["filter_error"]
    expected = "host gpu-4: deepseek-v3 does not fit on h100-pcie-80g-x4; use 8 GPUs like h100-pcie-80g-x8"
    assert expected in result["error"]


def test_not_a_dict(calls: dict[str, Any]) -> None:
    assert calls["not_a_dict"]["filter_error"] and "expects a dict" in calls["not_a_dict"]["error"]


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
