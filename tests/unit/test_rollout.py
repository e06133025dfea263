"""Rollout settings: read once per fleet from the inventory, refused when malformed or inconsistent."""

from __future__ import annotations

import pytest

from deepseek_node.rollout import (
    RolloutError,
    check_rollout,
    roll_batches,
    roll_order,
    rollout_extravars,
)


def _inventory(hostvars: dict[str, dict]) -> dict:
    return {
        "inference_nodes": {"hosts": sorted(hostvars)},
        "_meta": {"hostvars": hostvars},
    }


def test_no_settings_means_the_playbook_defaults() -> None:
    assert rollout_extravars(_inventory({"a": {}, "b": {}})) == {}


def test_one_value_for_the_fleet_is_passed_on() -> None:
    hv = {h: {"deepseek_serial": [1, "50%"], "deepseek_max_fail_percentage": 0} for h in ("a", "b", "c")}
    assert rollout_extravars(_inventory(hv)) == {
        "deepseek_serial": [1, "50%"],
        "deepseek_max_fail_percentage": 0,
    }


def test_hosts_that_disagree_are_refused_naming_them() -> None:
    hv = {"a": {"deepseek_serial": 1}, "b": {"deepseek_serial": 2}}
    with pytest.raises(RolloutError, match=r"deepseek_serial differs between hosts.*group_vars/all"):
        rollout_extravars(_inventory(hv))


@pytest.mark.parametrize(
    ("values", "needle"),
    [
        ({"deepseek_serial": 0}, "at least 1"),
        ({"deepseek_serial": "lots"}, "neither a host count"),
        ({"deepseek_serial": [1, "250%"]}, "neither a host count"),
        ({"deepseek_serial": []}, "empty list"),
        ({"deepseek_serial": True}, "not true/false"),
        ({"deepseek_max_fail_percentage": 101}, "0 to 100"),
        ({"deepseek_max_fail_percentage": "x"}, "0 to 100"),
    ],
)
def test_malformed_values_are_refused(values: dict, needle: str) -> None:
    problems = check_rollout(values)
    assert problems and needle in problems[0]


@pytest.mark.parametrize("serial", [1, "3", "25%", [1, "25%"], [1, 5, "100%"]])
def test_good_values_pass(serial: object) -> None:
    assert check_rollout({"deepseek_serial": serial, "deepseek_max_fail_percentage": 10}) == []


# Serving groups change as one unit: their members are next to each other and never split by a batch.
GROUPS = {
    "inference_nodes": ["a", "w1", "b", "h1", "c", "d", "e"],
    "deepseek_roll_group_pair": ["h1", "w1"],
}


def test_roll_order_keeps_a_group_together_at_its_first_member():
    assert roll_order(GROUPS) == ["a", "h1", "w1", "b", "c", "d", "e"]
    assert roll_order({"inference_nodes": ["x", "y"]}) == ["x", "y"]


def test_batches_never_split_a_serving_group():
    hosts = roll_order(GROUPS)
    # [1, '25%'] over 7 hosts: 1, then 1 (25% of 7 rounds down) — the pair is one batch of 2.
    assert roll_batches(hosts, GROUPS, [1, "25%"]) == [1, 2, 1, 1, 1, 1]
    assert roll_batches(hosts, GROUPS, [3]) == [3, 3, 1]
    assert roll_batches(hosts, GROUPS, ["100%"]) == [7]
    # Without groups the sizes are Ansible's own.
    plain = {"inference_nodes": ["a", "b", "c", "d", "e"]}
    assert roll_batches(["a", "b", "c", "d", "e"], plain, [1, "50%"]) == [1, 2, 2]
    assert roll_batches(["a", "b", "c", "d", "e"], plain, 2) == [2, 2, 1]


def test_batches_for_a_limited_play_count_only_its_hosts():
    assert roll_batches(["h1", "w1", "c"], GROUPS, [1, "25%"]) == [2, 1]


def test_batches_take_the_inventory_in_any_order_and_refuse_a_bad_serial():
    # Ansible hands over the limited inventory in its own order (and hosts outside the play's group).
    assert roll_batches(["w1", "monitor", "a", "h1"], GROUPS, [1]) == [1, 2]
    with pytest.raises(RolloutError, match="percentage"):
        roll_batches(["a"], GROUPS, ["many"])


def test_the_canary_group_rolls_first_as_one_batch_then_serial_applies():
    groups = {**GROUPS, "canary": ["d", "w1"]}  # a canary member takes its whole serving group along
    assert roll_order(groups) == ["h1", "w1", "d", "a", "b", "c", "e"]
    assert roll_batches(roll_order(groups), groups, [1, "50%"]) == [3, 1, 3]
    assert roll_batches(["a", "b"], groups, [1]) == [1, 1]  # no canary host in this run: plain serial
