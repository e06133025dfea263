"""Serving groups in the inventory: every refusal names the host or group and the fix, and a good group
plans as one model over its servers. Most cases are `ansible-inventory --list`-shaped dicts; real YAML
inventories go through ansible-inventory where what Ansible does to the structure matters."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from deepseek_node.cli.main import app
from deepseek_node.inventory import InventoryError, load_inventory, validate_inventory
from deepseek_node.planner import Precision
from deepseek_node.serving_groups import DEFAULT_PORT, find_serving_groups

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "inventories" / "example"
H100 = {"deepseek_hardware_profile": "h100-sxm-80g-x8", "deepseek_model": "deepseek-r1"}


def _inventory(
    groups: dict[str, list[str]],
    hostvars: dict[str, dict[str, Any]],
    nodes: list[str] | None = None,
) -> dict[str, Any]:
    """What `ansible-inventory --list` gives for serving groups `groups` (name -> hosts) whose hosts are all
    inference nodes unless `nodes` says which are."""
    hosts = sorted({h for members in groups.values() for h in members} | set(hostvars))
    inv: dict[str, Any] = {
        "all": {"children": ["ungrouped", "inference_nodes", "serving_groups"]},
        "inference_nodes": {"hosts": sorted(nodes if nodes is not None else hosts)},
        "serving_groups": {"children": sorted(groups)},
        "_meta": {"hostvars": {h: dict(hostvars.get(h, {})) for h in hosts}},
    }
    inv.update({name: {"hosts": members} for name, members in groups.items()})
    return inv


def _pair(name: str = "pair", hosts: tuple[str, ...] = ("gpu-a", "gpu-b"), **extra: Any) -> dict[str, Any]:
    """Host vars of a good group: what group_vars/<name>.yml gives every member."""
    return {
        h: {**H100, "deepseek_serving_group": name, "deepseek_serving_group_head": hosts[0], **extra}
        for h in hosts
    }


def _refused(inventory: dict[str, Any]) -> str:
    with pytest.raises(InventoryError) as exc:
        validate_inventory(inventory)
    return str(exc.value)


def test_good_group() -> None:
    inv = _inventory(
        {"pair": ["gpu-a", "gpu-b"]}, {**_pair(), "gpu-a": {**_pair()["gpu-a"], "ansible_host": "10.1.0.1"}}
    )
    settings = validate_inventory(inv)
    (group,) = find_serving_groups(inv, settings)
    assert (group.name, group.head, group.workers) == ("pair", "gpu-a", ("gpu-b",))
    assert (group.master_addr, group.master_port) == ("10.1.0.1", DEFAULT_PORT)
    g = group.plan()
    assert (g.plan.precision, g.plan.tp, g.plan.pp, g.servers) == (Precision.FP8, 8, 2, 2)


def test_head_named_second_still_leads_and_address_and_port_can_be_set() -> None:
    hv = _pair(hosts=("gpu-b", "gpu-a"), deepseek_serving_group_port=29600)
    hv["gpu-b"]["deepseek_serving_group_address"] = "192.168.100.2"
    inv = _inventory({"pair": ["gpu-a", "gpu-b"]}, hv)
    (group,) = find_serving_groups(inv, validate_inventory(inv))
    assert group.hosts == ("gpu-b", "gpu-a")
    assert (group.master_addr, group.master_port) == ("192.168.100.2", 29600)


def test_host_in_two_serving_groups() -> None:
    hv = {**_pair("left", ("gpu-a", "gpu-b")), **_pair("right", ("gpu-c", "gpu-d"))}
    # Ansible merges both groups' variables into gpu-b: it looks like a member of `right` only.
    hv["gpu-b"] = {**hv["gpu-b"], "deepseek_serving_group": "right", "deepseek_serving_group_head": "gpu-c"}
    text = _refused(_inventory({"left": ["gpu-a", "gpu-b"], "right": ["gpu-b", "gpu-c", "gpu-d"]}, hv))
    assert "host gpu-b: serving_groups: the host is in 2 serving groups (left, right)" in text
    assert "fix: keep it in one of left, right and remove it from the others" in text


def test_member_outside_inference_nodes() -> None:
    text = _refused(_inventory({"pair": ["gpu-a", "gpu-b"]}, _pair(), nodes=["gpu-a"]))
    assert "host gpu-b: serving group pair: the host is a member but not in inference_nodes" in text
    assert "fix: add gpu-b to inference_nodes" in text


@pytest.mark.parametrize(
    "value, words",
    [
        (None, "host gpu-b: deepseek_serving_group: is not set; fix: set it in group_vars/pair.yml: "
               "deepseek_serving_group: pair"),
        ("other", "host gpu-b: deepseek_serving_group: is 'other', not the group's own name 'pair'"),
    ],
)  # fmt: skip
def test_group_name_must_be_the_groups_own(value: str | None, words: str) -> None:
    hv = _pair()
    hv["gpu-b"]["deepseek_serving_group"] = value
    assert words in _refused(_inventory({"pair": ["gpu-a", "gpu-b"]}, hv))


def test_stale_group_variable_outside_serving_groups() -> None:
    hv = {**_pair(), "gpu-z": {**H100, "deepseek_serving_group": "pair"}}
    text = _refused(_inventory({"pair": ["gpu-a", "gpu-b"]}, hv))
    assert (
        "host gpu-z: deepseek_serving_group: is 'pair', but the host is in no group under serving_groups"
        in text
    )


def test_missing_head() -> None:
    hv = _pair()
    for h in hv:
        del hv[h]["deepseek_serving_group_head"]
    text = _refused(_inventory({"pair": ["gpu-a", "gpu-b"]}, hv))
    assert "serving group pair: deepseek_serving_group_head is not set for gpu-a, gpu-b" in text
    assert "fix: set it in group_vars/pair.yml: deepseek_serving_group_head: <one of gpu-a, gpu-b>" in text


def test_foreign_head() -> None:
    hv = _pair()
    for h in hv:
        hv[h]["deepseek_serving_group_head"] = "gpu-q"
    text = _refused(_inventory({"pair": ["gpu-a", "gpu-b"]}, hv))
    assert "serving group pair: deepseek_serving_group_head 'gpu-q' is not a member of the group" in text


def test_members_naming_different_heads() -> None:
    hv = _pair()
    hv["gpu-b"]["deepseek_serving_group_head"] = "gpu-b"
    assert "its members name different heads (gpu-a, gpu-b)" in _refused(
        _inventory({"pair": ["gpu-a", "gpu-b"]}, hv)
    )


def test_different_gpu_kinds_or_counts() -> None:
    hv = _pair()
    hv["gpu-b"]["deepseek_hardware_profile"] = "a100-sxm-80g-x8"
    text = _refused(_inventory({"pair": ["gpu-a", "gpu-b"]}, hv))
    assert (
        "host gpu-b: serving group pair: has 8x NVIDIA A100 SXM4 80GB (a100-sxm-80g-x8), but gpu-a has"
        in text
    )
    assert "a group's servers must be identical" in text and "fix: give gpu-b its own group" in text
    hv = _pair()
    hv["gpu-b"]["deepseek_hardware_overrides"] = {"gpu_count": 4}
    text = _refused(_inventory({"pair": ["gpu-a", "gpu-b"]}, hv))
    assert "has 4x NVIDIA H100 SXM5 80GB (h100-sxm-80g-x8 (gpu_count=4))" in text


def test_members_serving_different_models() -> None:
    hv = _pair()
    hv["gpu-b"]["deepseek_model"] = "deepseek-v3"
    text = _refused(_inventory({"pair": ["gpu-a", "gpu-b"]}, hv))
    assert "host gpu-b: serving group pair: serves deepseek-v3 for throughput" in text


def test_unusable_sizes() -> None:
    one = _refused(_inventory({"solo": ["gpu-a"]}, _pair("solo", ("gpu-a",))))
    assert "serving group solo: serving group size: a serving group needs 2 or more servers, not 1" in one
    names = tuple(f"gpu-{i}" for i in range(5))
    five = _refused(_inventory({"five": list(names)}, _pair("five", names)))
    assert (
        "serving group five: serving group size: 61 layers in 5 pipeline stages give a largest stage of 13"
        in five
    )
    assert "usable sizes: 2, 3, 4, 7, 8" in five


def test_group_too_small_for_its_model() -> None:
    hv = _pair(deepseek_hardware_profile="l4-24g-x8")
    text = _refused(_inventory({"pair": ["gpu-a", "gpu-b"]}, hv))
    assert "serving group pair: deepseek-r1 does not fit on 2 x l4-24g-x8; fix: make it" in text


def test_cpu_group_on_the_builtin_engine_is_refused() -> None:
    hv = _pair(
        deepseek_hardware_profile="cpu-only",
        deepseek_model="deepseek-r1-distill-qwen-1.5b",
        deepseek_engine="builtin",
    )
    assert "runs vLLM's multi-node mode, not the builtin engine" in _refused(
        _inventory({"pair": ["gpu-a", "gpu-b"]}, hv)
    )
    hv = _pair(deepseek_engine="builtin")
    assert "runs vLLM's multi-node mode, not the builtin engine" in _refused(
        _inventory({"pair": ["gpu-a", "gpu-b"]}, hv)
    )


def test_bad_port_and_network() -> None:
    hv = _pair(deepseek_serving_group_port=70000)
    assert "deepseek_serving_group_port: 70000 is not a TCP port" in _refused(
        _inventory({"pair": ["gpu-a", "gpu-b"]}, hv)
    )
    hv = _pair(deepseek_network_gbps="fast")
    assert "host gpu-a: deepseek_network_gbps: 'fast' is not a bandwidth in Gb/s" in _refused(
        _inventory({"pair": ["gpu-a", "gpu-b"]}, hv)
    )


def test_slowest_member_link_paces_the_group() -> None:
    hv = _pair()
    hv["gpu-b"]["deepseek_network_gbps"] = 10
    inv = _inventory({"pair": ["gpu-a", "gpu-b"]}, hv)
    (group,) = find_serving_groups(inv, validate_inventory(inv))
    g = group.plan()
    assert group.profile.network_gbps == 10 and g.handoff and g.handoff.too_slow and g.warnings


# --- real inventories through ansible-inventory ---


def _write(root: Path, hosts_yml: str, files: dict[str, str]) -> Path:
    root.mkdir(parents=True)
    (root / "hosts.yml").write_text(hosts_yml)
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


TWO_GROUPS = """\
all:
  children:
    inference_nodes:
      children:
        left: {hosts: {gpu-a: {}, gpu-b: {}}}
        right: {hosts: {gpu-b: {}, gpu-c: {}}}
    serving_groups:
      children:
        left:
        right:
"""


def test_ansible_merges_a_shared_hosts_vars_and_the_structure_still_shows_it(tmp_path: Path) -> None:
    group_vars = {
        f"group_vars/{name}.yml": "deepseek_hardware_profile: h100-sxm-80g-x8\ndeepseek_model: deepseek-r1\n"
        f"deepseek_serving_group: {name}\ndeepseek_serving_group_head: {head}\n"
        for name, head in (("left", "gpu-a"), ("right", "gpu-c"))
    }
    inv = load_inventory(_write(tmp_path / "inv", TWO_GROUPS, group_vars))
    # One value survives Ansible's merge: from the variables alone gpu-b looks like a good member.
    assert inv["_meta"]["hostvars"]["gpu-b"]["deepseek_serving_group"] in ("left", "right")
    text = _refused(inv)
    assert "host gpu-b: serving_groups: the host is in 2 serving groups (left, right)" in text


def test_provision_plan_shows_the_example_group_per_rank() -> None:
    runner = CliRunner()
    result = runner.invoke(app, ["plan", "-i", str(EXAMPLE), "--json"])
    assert result.exit_code == 0, result.output
    entries = {e["host"]: e for e in json.loads(result.stdout)}
    head, worker = entries["ds-h100-11"], entries["ds-h100-12"]
    assert (head["group"], head["rank"], head["role"], worker["rank"], worker["role"]) == (
        "r1_h100_pair", 0, "head", 1, "worker",
    )  # fmt: skip
    assert (head["precision"], head["tp"], head["pp"], head["fit"]) == ("fp8", 8, 2, "compatible")
    assert head["interconnect"]["network_gbps"] == 100 and not head["interconnect"]["too_slow"]
    assert "--headless" in worker["vllm"]["argv"] and worker["vllm"]["module"] == "vllm.entrypoints.cli.main"
    argv = head["vllm"]["argv"]
    assert argv[argv.index("--master-addr") + 1] == "10.40.4.11" and "--headless" not in argv
    assert [r["host"] for r in head["ranks"]] == ["ds-h100-11", "ds-h100-12"]
    # The other hosts still get their own plans.
    assert entries["ds-h200-01"]["precision"] == "fp8" and "group" not in entries["ds-h200-01"]
    table = runner.invoke(app, ["plan", "-i", str(EXAMPLE)])
    assert table.exit_code == 0, table.output
    assert "Serving groups (vLLM multi-node)" in table.stdout and "r1_h100_pair" in table.stdout
    assert (
        "vllm rank 1 (worker, ds-h100-12):" in table.stdout
        and "interconnect: each step hands" in table.stdout
    )
    # The worker's command is what the role runs: the launcher in the engine's virtualenv (plain
    # `python -m vllm.entrypoints.cli.main` fails on vLLM's CPU build).
    flat = " ".join(table.stdout.split())
    assert "/opt/deepseek-node/vllm-venv/bin/deepseek-vllm-serve serve" in flat
    assert "-m vllm.entrypoints.cli.main" not in flat


def test_what_if_group_from_the_command_line() -> None:
    runner = CliRunner()
    result = runner.invoke(
        app, ["plan", "--hardware", "a100-sxm-80g-x8", "--model", "deepseek-v3", "--servers", "2", "--json"]
    )
    assert result.exit_code == 0, result.output
    entries = json.loads(result.stdout)
    assert [e["host"] for e in entries] == ["rank-0", "rank-1"]
    assert (
        entries[0]["precision"] == "int8"
        and "pre-quantized int8" in entries[0]["vllm"]["checkpoint"]["needs"]
    )
    bad = runner.invoke(
        app, ["plan", "--hardware", "h100-sxm-80g-x8", "--model", "deepseek-v3", "--servers", "5"]
    )
    assert bad.exit_code == 2 and "61 layers in 5 pipeline stages" in bad.output


def test_workers_start_before_the_heads_readiness_gate() -> None:
    """A play's hosts go through its tasks together: were the worker's start after the head's gate (which
    waits for every worker), the head would wait for a worker that never starts."""
    tasks = yaml.safe_load((REPO / "roles/inference_daemon/tasks/main.yml").read_text())
    order = [t.get("ansible.builtin.import_tasks") for t in tasks]
    assert order.index("worker.yml") < order.index("service.yml")
