"""Rollout settings: read once per fleet from the inventory, refused when malformed or inconsistent."""

from __future__ import annotations

import pytest

from deepseek_node.rollout import RolloutError, check_rollout, rollout_extravars


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
