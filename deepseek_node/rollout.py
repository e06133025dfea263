"""How a change rolls across the fleet: batch sizes and the failure threshold, read from the inventory.

Ansible templates play keywords (`serial`, `max_fail_percentage`) with play and extra vars only, never
inventory vars, so the runner reads them here and hands them over as extra vars. Pure functions over
`ansible-inventory --list` output; one value per fleet (a play has one batch plan)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from deepseek_node.inventory import GROUP, group_hosts

ROLLOUT_VARS = ("deepseek_serial", "deepseek_max_fail_percentage")
_PERCENT = re.compile(r"^\s*(\d{1,3})\s*%\s*$")


class RolloutError(ValueError):
    pass


def _check_batch(value: Any) -> str | None:
    if isinstance(value, bool):
        return "a batch is a host count or a percentage, not true/false"
    if isinstance(value, int):
        return None if value >= 1 else "a host count must be at least 1"
    if isinstance(value, str):
        if value.strip().isdigit():
            return None if int(value) >= 1 else "a host count must be at least 1"
        m = _PERCENT.match(value)
        if m and 1 <= int(m.group(1)) <= 100:
            return None
    return f"{value!r} is neither a host count (e.g. 1) nor a percentage (e.g. '25%')"


def check_rollout(values: Mapping[str, Any]) -> list[str]:
    """Problems with deepseek_serial / deepseek_max_fail_percentage, each naming the fix; [] when fine."""
    problems: list[str] = []
    if "deepseek_serial" in values:
        serial = values["deepseek_serial"]
        batches = serial if isinstance(serial, list) else [serial]
        if not batches:
            problems.append(
                "deepseek_serial is an empty list: give e.g. [1, '25%'] (first one host, then 25%)"
            )
        for b in batches:
            why = _check_batch(b)
            if why:
                problems.append(f"deepseek_serial: {why}; give e.g. [1, '25%']")
    if "deepseek_max_fail_percentage" in values:
        mfp = values["deepseek_max_fail_percentage"]
        if isinstance(mfp, bool) or not isinstance(mfp, int | float) or not 0 <= mfp <= 100:
            problems.append(
                f"deepseek_max_fail_percentage: {mfp!r} is not a number from 0 to 100 "
                "(0: the first failing host stops the roll)"
            )
    return problems


def rollout_extravars(inventory: Mapping[str, Any], group: str = GROUP) -> dict[str, Any]:
    """The rollout settings the inventory gives the hosts of `group`, as extra vars; {} when it gives none.

    RolloutError when hosts disagree (a play has one batch plan: set them in group_vars/all) or a value is
    malformed."""
    hostvars = inventory.get("_meta", {}).get("hostvars", {})
    found: dict[str, dict[str, list[str]]] = {}
    for host in group_hosts(inventory, group):
        for key in ROLLOUT_VARS:
            if key in hostvars.get(host, {}):
                found.setdefault(key, {}).setdefault(repr(hostvars[host][key]), []).append(host)
    out: dict[str, Any] = {}
    problems: list[str] = []
    for key, by_value in found.items():
        if len(by_value) > 1:
            detail = "; ".join(
                f"{v} on {', '.join(h[:3])}{' …' if len(h) > 3 else ''}" for v, h in by_value.items()
            )
            problems.append(f"{key} differs between hosts ({detail}): set it once, in group_vars/all")
            continue
        host = next(iter(by_value.values()))[0]
        out[key] = hostvars[host][key]
    problems += check_rollout(out)
    if problems:
        raise RolloutError("; ".join(problems))
    return out
