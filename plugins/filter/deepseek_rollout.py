"""Rolling order and batches that keep each serving group whole (the logic is deepseek_node.rollout).

Play keywords (`hosts`, `serial`) are templated with `groups` and extra vars only, so a first play puts each
serving group's members in a `deepseek_roll_group_<name>` group and these filters read them from `groups`:

    hosts: "{{ groups | deepseek_roll_order('inference_nodes') }}"
    serial: "{{ ansible_play_hosts_all | deepseek_roll_serial(groups, deepseek_serial | default([1, '25%'])) }}"
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ansible.errors import AnsibleFilterError

try:
    from deepseek_node import rollout
except ImportError:  # ansible-playbook from a checkout whose package is not installed in this interpreter
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from deepseek_node import rollout


def deepseek_roll_order(groups: dict[str, Any], base: str = "inference_nodes") -> list[str]:
    """`base`'s hosts with each serving group's members next to each other (the play's host order)."""
    return rollout.roll_order(groups, base) or [base]


def deepseek_roll_serial(play_hosts: list[str], groups: dict[str, Any], serial: Any = None) -> list[int]:
    """`serial` (e.g. [1, '25%']) as explicit batch sizes that never split a serving group."""
    try:
        return rollout.roll_batches(
            list(play_hosts), groups, rollout.DEFAULT_SERIAL if serial is None else serial
        )
    except rollout.RolloutError as exc:
        raise AnsibleFilterError(f"deepseek_roll_serial: {exc}") from exc


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "deepseek_roll_order": deepseek_roll_order,
            "deepseek_roll_serial": deepseek_roll_serial,
        }
