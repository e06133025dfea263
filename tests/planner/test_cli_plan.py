"""`provision plan`: inventories through ansible-inventory, tables, JSON, listings and exit codes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepseek_node.cli.main import app

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventories" / "example"
runner = CliRunner()


def _run(*args: str):
    return runner.invoke(app, ["plan", *args])


def _write_inventory(root: Path, hosts_yml: str, files: dict[str, str] | None = None) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "hosts.yml").write_text(hosts_yml)
    for rel, text in (files or {}).items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_example_inventory_plans_every_host() -> None:
    result = _run("-i", str(EXAMPLE), "--json")
    assert result.exit_code == 0, result.output
    plans = {p["host"]: p for p in json.loads(result.stdout)}
    assert set(plans) == {
        "ds-h200-01", "ds-h200-02", "ds-h100-01", "ds-l40s-01", "ds-l40s-02", "ds-a100-01", "ds-edge-01",
        "ds-h100-11", "ds-h100-12",
    }  # fmt: skip
    assert all(p["fit"] == "compatible" for p in plans.values())
    assert (plans["ds-h200-01"]["precision"], plans["ds-h200-01"]["tp"]) == ("fp8", 8)
    # host_vars take two of the four L40S away: half the pipeline stages.
    assert (plans["ds-l40s-01"]["pp"], plans["ds-l40s-02"]["pp"]) == (4, 2)
    assert plans["ds-l40s-02"]["profile"]["overridden"] == ["gpu_count=2"]
    # group_vars bridge the A100 PCIe cards in pairs: TP 2 over the bridge.
    assert plans["ds-a100-01"]["tp"] == 2
    assert (plans["ds-edge-01"]["precision"], plans["ds-edge-01"]["max_context"]) == ("fp32", 16384)


def test_example_inventory_table() -> None:
    result = _run("-i", str(EXAMPLE))
    assert result.exit_code == 0, result.output
    assert "ds-h200-01" in result.stdout and "l40s-48g-x4 (gpu_count=2)" in result.stdout
    assert "tp8 inside one NVSwitch domain" in result.stdout


def test_model_option_overrides_the_inventory() -> None:
    result = _run("-i", str(EXAMPLE), "--model", "deepseek-r1-distill-qwen-1.5b", "--json")
    assert result.exit_code == 0, result.output
    assert {p["model"]["name"] for p in json.loads(result.stdout)} == {"deepseek-r1-distill-qwen-1.5b"}


def test_lab_like_inventory_with_tiny_model(tmp_path: Path, tiny_model_dir: Path) -> None:
    inv = _write_inventory(
        tmp_path / "inv",
        "all:\n  children:\n    inference_nodes:\n      hosts:\n        lab-1:\n        lab-2:\n",
        {
            "group_vars/inference_nodes.yml": f"deepseek_hardware_profile: cpu-only\ndeepseek_model_dir: {tiny_model_dir}\n"
        },
    )
    result = _run("-i", str(inv), "--json")
    assert result.exit_code == 0, result.output
    for p in json.loads(result.stdout):
        assert (p["precision"], p["tp"], p["pp"], p["fit"]) == ("fp32", 1, 1, "compatible")


def test_bad_inventory_names_every_host_key_and_fix(tmp_path: Path) -> None:
    inv = _write_inventory(
        tmp_path / "inv",
        "all:\n  children:\n    inference_nodes:\n      hosts:\n        gpu-a:\n        gpu-b:\n",
        {
            "group_vars/inference_nodes.yml": "deepseek_model: deepseek-v3\n",
            "host_vars/gpu-a.yml": "deepseek_hardware_profile: h100-80g-x8\n",
            "host_vars/gpu-b.yml": (
                "deepseek_hardware_profile: h100-sxm-80g-x8\n"
                "deepseek_hardware_overrides:\n  gpu_count: -4\ndeepseek_max_context: lots\n"
            ),
        },
    )
    before = sorted(p.name for p in inv.rglob("*"))
    result = _run("-i", str(inv))
    assert result.exit_code == 2
    err = result.stderr
    assert "nothing was changed" in err
    assert "host gpu-a: deepseek_hardware_profile: 'h100-80g-x8' is not a known hardware profile" in err
    assert "host gpu-b: deepseek_hardware_overrides.gpu_count: -4 must not be negative; fix:" in err
    assert "host gpu-b: deepseek_max_context: 'lots' is not a positive whole number" in err
    assert sorted(p.name for p in inv.rglob("*")) == before


def test_no_hosts_in_group(tmp_path: Path) -> None:
    inv = _write_inventory(tmp_path / "inv", "all:\n  children:\n    web:\n      hosts:\n        www-1:\n")
    result = _run("-i", str(inv))
    assert result.exit_code == 2
    assert "no hosts in group 'inference_nodes'" in result.stderr


def test_missing_and_unparsable_inventories(tmp_path: Path) -> None:
    result = _run("-i", str(tmp_path / "nope.yml"))
    assert result.exit_code == 2 and "does not exist" in result.stderr
    bad = tmp_path / "bad.yml"
    bad.write_text("all: [this is: not an inventory\n")
    result = _run("-i", str(bad))
    assert result.exit_code == 2 and "ansible-inventory cannot read" in result.stderr


def test_hardware_what_if_that_does_not_fit_exits_1() -> None:
    result = _run("--hardware", "t4-16g-x1", "--model", "deepseek-v3")
    assert result.exit_code == 1
    assert "does not fit" in result.stdout and "would fit:" in result.stdout


def test_hardware_what_if_with_a_model_dir(tiny_model_dir: Path) -> None:
    result = _run("--hardware", "cpu-only", "--model-dir", str(tiny_model_dir), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)[0]["precision"] == "fp32"


def test_bad_options_exit_2() -> None:
    assert _run().exit_code == 2
    assert _run("--hardware", "h100", "--model", "deepseek-v3").exit_code == 2
    result = _run("--hardware", "h100-sxm-80g-x8", "--model", "deepseek-r2")
    assert result.exit_code == 2 and "--model: 'deepseek-r2'" in result.stderr
    assert _run("--list-profiles").exit_code == 2
    assert _run("--model", "deepseek-v3", "--model-dir", "/tmp", "--hardware", "cpu-only").exit_code == 2


def test_list_profiles_like_nim() -> None:
    result = _run("--list-profiles", "--model", "deepseek-r1", "--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    rows = {(c["hardware"], c["name"]): c["fit"] for c in data["candidates"]}
    assert rows[("h200-sxm-141g-x8", "vllm-fp8-tp8-pp1")] == "compatible"
    assert rows[("h100-sxm-80g-x8", "vllm-fp8-tp8-pp1")] == "incompatible"
    assert rows[("h100-sxm-80g-x8", "vllm-int4-tp8-pp1")] == "compatible"
    assert data["model"]["name"] == "deepseek-r1" and len(data["candidates"]) > 100


def test_list_profiles_table_for_one_box() -> None:
    result = _run("--list-profiles", "--model", "deepseek-r1-distill-qwen-14b", "--hardware", "t4-16g-x1")
    assert result.exit_code == 0, result.output
    assert "Compatible but low memory" in result.stdout and "Incompatible" in result.stdout
    assert "vllm-int4-tp1-pp1" in result.stdout


@pytest.mark.parametrize("option, key", [("--list-hardware", "gpu_count"), ("--list-models", "params_b")])
def test_catalog_listings(option: str, key: str) -> None:
    result = _run(option, "--json")
    assert result.exit_code == 0 and all(key in row for row in json.loads(result.stdout))
    assert _run(option).exit_code == 0


def test_example_inventory_shows_engine_and_vllm_command_line() -> None:
    result = _run("-i", str(EXAMPLE), "--json")
    assert result.exit_code == 0, result.output
    plans = {p["host"]: p for p in json.loads(result.stdout)}
    assert {p["engine"] for p in plans.values()} == {"vllm"}
    r1 = plans["ds-h200-01"]["vllm"]
    assert r1["module"] == "vllm.entrypoints.openai.api_server"
    argv = r1["argv"]
    assert argv[argv.index("--tensor-parallel-size") + 1] == "8" and "--quantization" not in argv
    assert r1["checkpoint"]["problem"] is None and r1["checkpoint"]["formats"][0] == "fp8"
    edge = plans["ds-edge-01"]["vllm"]
    assert "--gpu-memory-utilization" not in edge["argv"] and "VLLM_CPU_KVCACHE_SPACE" in edge["env"]
    table = _run("-i", str(EXAMPLE))
    assert "vllm: env HF_HUB_OFFLINE=1" in table.stdout
    assert "python -m vllm.entrypoints.openai.api_server --model" in table.stdout


def test_what_if_names_the_checkpoint_a_plan_needs() -> None:
    result = _run("--hardware", "h100-sxm-80g-x8", "--model", "deepseek-v3", "--json")
    assert result.exit_code == 0, result.output
    vllm = json.loads(result.stdout)[0]["vllm"]
    assert vllm["checkpoint"]["formats"] == ["awq", "gptq", "compressed-tensors"]
    assert "the checkpoint is fp8" in vllm["checkpoint"]["problem"]
    assert "checkpoint:" in _run("--hardware", "h100-sxm-80g-x8", "--model", "deepseek-v3").stdout


def test_engine_option(tmp_path: Path) -> None:
    result = _run(
        "--hardware",
        "h100-sxm-80g-x8",
        "--model",
        "deepseek-r1-distill-llama-70b",
        "--engine",
        "builtin",
        "--json",
    )
    assert result.exit_code == 0, result.output
    p = json.loads(result.stdout)[0]
    assert (p["engine"], p["tp"], p["vllm"]) == ("builtin", 1, None)
    # What the builtin engine cannot do offline (fp8 kernels from the Hub, bitsandbytes) it does not plan.
    v3 = _run("--hardware", "h100-sxm-80g-x8", "--model", "deepseek-v3", "--engine", "builtin", "--json")
    assert v3.exit_code == 1 and "serve fp8 with vLLM" in v3.stdout
    old = _write_inventory(
        tmp_path / "inv",
        "all:\n  children:\n    inference_nodes:\n      hosts:\n        p100-1:\n",
        {
            "group_vars/inference_nodes.yml": "deepseek_hardware_profile: t4-16g-x1\n"
            "deepseek_hardware_overrides: {compute_capability: '6.0'}\n"
            "deepseek_model: deepseek-r1-distill-qwen-1.5b\n"
        },
    )
    result = _run("-i", str(old), "--json")
    assert result.exit_code == 0 and json.loads(result.stdout)[0]["engine"] == "builtin"
    result = _run("-i", str(old), "--engine", "vllm")
    assert (
        result.exit_code == 2 and "--engine: vllm was requested, but compute capability 6.0" in result.stderr
    )
