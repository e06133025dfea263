"""Inventory validation for the planner: pure functions over resolved variables, and the thin loader."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepseek_node.inventory import (
    InventoryError,
    InventoryLoadError,
    group_hosts,
    host_settings,
    load_inventory,
    validate_inventory,
)
from deepseek_node.planner import Goal, PlannerInputError, Precision

REPO = Path(__file__).resolve().parents[2]
GOOD = {"deepseek_hardware_profile": "h200-sxm-141g-x8", "deepseek_model": "deepseek-r1"}


def _errors(hostvars: dict, **overrides) -> str:
    with pytest.raises(PlannerInputError) as exc:
        host_settings("node-1", hostvars, **overrides)
    return str(exc.value)


def test_valid_host() -> None:
    s = host_settings("node-1", {**GOOD, "deepseek_serving_goal": "latency", "deepseek_max_context": 8192})
    assert (s.host, s.profile.name, s.model.name, s.goal, s.max_context) == (
        "node-1", "h200-sxm-141g-x8", "deepseek-r1", Goal.LATENCY, 8192,
    )  # fmt: skip
    assert s.plan().precision is Precision.FP8


def test_defaults() -> None:
    s = host_settings("node-1", GOOD)
    assert (s.goal, s.max_context) == (Goal.THROUGHPUT, None)


def test_missing_profile_and_model_are_both_reported() -> None:
    text = _errors({})
    assert "host node-1: deepseek_hardware_profile: is not set; fix:" in text
    assert "host node-1: deepseek_model: neither deepseek_model nor deepseek_model_dir is set; fix:" in text


@pytest.mark.parametrize(
    "extra, words",
    [
        (
            {"deepseek_serving_goal": "fast"},
            "deepseek_serving_goal: 'fast' is not a serving goal; fix: use throughput",
        ),
        ({"deepseek_max_context": -1}, "deepseek_max_context: -1 is not a positive whole number"),
        ({"deepseek_max_context": "32k"}, "deepseek_max_context: '32k' is not a positive whole number"),
        ({"deepseek_max_context": True}, "deepseek_max_context: True is not a positive whole number"),
        ({"deepseek_model": "deepseek-v5"}, "deepseek_model: 'deepseek-v5' is not in the model catalog"),
        ({"deepseek_hardware_overrides": {"gpu_count": 0}}, "deepseek_hardware_overrides.gpu_count: 0 GPUs"),
        ({"deepseek_hardware_overrides": "gpu_count=4"}, "deepseek_hardware_overrides: must be a mapping"),
    ],
)
def test_bad_values_name_host_key_and_fix(extra: dict, words: str) -> None:
    text = _errors({**GOOD, **extra})
    assert f"host node-1: {words}" in text and "fix:" in text


def test_model_dir_that_does_not_exist(tmp_path: Path) -> None:
    text = _errors({**GOOD, "deepseek_model_dir": str(tmp_path / "missing")})
    assert "host node-1: deepseek_model_dir:" in text and "has no config.json" in text


def test_model_dir_wins_over_catalog_name(tiny_model_dir: Path) -> None:
    s = host_settings(
        "lab-1", {**GOOD, "deepseek_hardware_profile": "cpu-only", "deepseek_model_dir": str(tiny_model_dir)}
    )
    assert s.model.source == str(tiny_model_dir)


def test_templates_cannot_be_planned_without_a_play() -> None:
    text = _errors({**GOOD, "deepseek_model_dir": "{{ playbook_dir }}/models/tiny"})
    assert "deepseek_model_dir: is a template" in text and "literal value" in text


def test_omit_and_empty_values_are_unset() -> None:
    omit = "__omit_place_holder__abc"
    s = host_settings(
        "n", {**GOOD, "deepseek_model_dir": omit, "deepseek_max_context": omit, "deepseek_serving_goal": ""}
    )
    assert (s.model.name, s.max_context, s.goal) == ("deepseek-r1", None, Goal.THROUGHPUT)


def test_command_line_overrides_win() -> None:
    s = host_settings("n", GOOD, model="deepseek-r1-distill-qwen-7b", goal=Goal.LATENCY, max_context=4096)
    assert (s.model.name, s.goal, s.max_context) == ("deepseek-r1-distill-qwen-7b", Goal.LATENCY, 4096)


def test_hostvars_must_be_a_mapping() -> None:
    with pytest.raises(PlannerInputError, match="host n: hostvars: must be a mapping"):
        host_settings("n", ["deepseek_model"])  # type: ignore[arg-type]


INVENTORY = {
    "_meta": {
        "hostvars": {
            "a": GOOD,
            "b": {**GOOD, "deepseek_hardware_profile": "nope"},
            "c": {"deepseek_model": "deepseek-r1"},
            "web": {},
        }
    },
    "all": {"children": ["ungrouped", "inference_nodes", "web"]},
    "inference_nodes": {"hosts": ["a"], "children": ["rack2"]},
    "rack2": {"hosts": ["b", "c"]},
    "web": {"hosts": ["web"]},
}


def test_group_hosts_follows_children() -> None:
    assert group_hosts(INVENTORY) == ["a", "b", "c"]
    assert group_hosts(INVENTORY, "web") == ["web"]
    assert group_hosts(INVENTORY, "missing") == []


def test_validate_inventory_reports_every_host() -> None:
    with pytest.raises(InventoryError) as exc:
        validate_inventory(INVENTORY)
    hosts = [host for host, _ in exc.value.problems]
    assert hosts == ["b", "c"]
    assert "host b: deepseek_hardware_profile: 'nope'" in str(exc.value)
    assert "host c: deepseek_hardware_profile: is not set" in str(exc.value)


def test_validate_inventory_valid_hosts() -> None:
    inv = {**INVENTORY, "_meta": {"hostvars": {"a": GOOD, "b": GOOD, "c": GOOD}}}
    assert [s.host for s in validate_inventory(inv)] == ["a", "b", "c"]


def test_validate_inventory_without_the_group() -> None:
    with pytest.raises(InventoryError, match="no hosts in group 'inference_nodes'"):
        validate_inventory({"_meta": {"hostvars": {}}, "all": {"children": ["web"]}, "web": {"hosts": ["w"]}})


def test_load_inventory_resolves_group_and_host_vars_like_ansible() -> None:
    data = load_inventory(REPO / "inventories" / "example")
    hostvars = data["_meta"]["hostvars"]
    assert hostvars["ds-l40s-02"]["deepseek_hardware_overrides"] == {"gpu_count": 2}  # host_vars win
    assert hostvars["ds-l40s-01"]["deepseek_hardware_profile"] == "l40s-48g-x4"  # child group_vars
    assert hostvars["ds-edge-01"]["deepseek_max_context"] == 16384  # child group beats parent group
    assert len(validate_inventory(data)) == 9


def test_load_inventory_refuses_what_ansible_cannot_parse(tmp_path: Path) -> None:
    with pytest.raises(InventoryLoadError, match="does not exist"):
        load_inventory(tmp_path / "missing.yml")
    bad = tmp_path / "hosts.yml"
    bad.write_text("all:\n  hosts: [unclosed\n")
    with pytest.raises(InventoryLoadError, match="cannot read"):
        load_inventory(bad)
