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


# A serving group changes as one unit: the plays' first step groups its members under this prefix
# (`group_by` on deepseek_serving_group), because play keywords see `groups` but not host vars.
ROLL_GROUP_PREFIX = "deepseek_roll_group_"
DEFAULT_SERIAL: tuple[int | str, ...] = (1, "25%")
# Hosts of this inventory group (optional) change first, as one batch; the roll then waits for an
# operator's go (deepseek_canary_go) before it touches any other host.
CANARY_GROUP = "canary"


def roll_units(groups: Mapping[str, Any], hosts: list[str]) -> list[list[str]]:
    """`hosts` in order, each serving group's members together at its first member's place (one unit),
    every other host a unit of its own."""
    group_of: dict[str, str] = {}
    for name, members in groups.items():
        if name.startswith(ROLL_GROUP_PREFIX):
            for member in members:
                group_of.setdefault(str(member), name)
    wanted = set(hosts)
    units: list[list[str]] = []
    placed: set[str] = set()
    for host in hosts:
        if host in placed:
            continue
        group = group_of.get(host)
        unit = [m for m in groups[group] if m in wanted] if group else [host]
        placed.update(unit)
        units.append(unit)
    return units


def _canary_first(groups: Mapping[str, Any], units: list[list[str]]) -> tuple[list[list[str]], int]:
    """The units holding a canary host first (a serving group with one canary member is all canary), and
    how many there are."""
    canary = {str(h) for h in groups.get(CANARY_GROUP, [])}
    first = [u for u in units if canary.intersection(u)]
    return first + [u for u in units if not canary.intersection(u)], len(first)


def roll_order(groups: Mapping[str, Any], base: str = GROUP) -> list[str]:
    """The play's hosts in rolling order: `base`'s hosts as the inventory lists them, the canary group's
    first, a serving group's members next to each other (so no batch boundary has to fall inside one)."""
    units, _ = _canary_first(groups, roll_units(groups, [str(h) for h in groups.get(base, [])]))
    return [h for unit in units for h in unit]


def _batch_size(value: int | str, total: int) -> int:
    # Ansible's own rule for `serial`: a percentage of the play's hosts, rounded down, at least one.
    if isinstance(value, str) and value.strip().endswith("%"):
        return max(1, int(total * int(value.strip()[:-1]) / 100))
    return max(1, int(value))


def roll_batches(
    play_hosts: list[str], groups: Mapping[str, Any], serial: Any = DEFAULT_SERIAL, base: str = GROUP
) -> list[int]:
    """`serial` as explicit batch sizes that never split a serving group, over the hosts of `base` that are
    in `play_hosts` (Ansible offers the limited inventory there, not yet in play order), taken in
    `roll_order`: a batch takes whole units up to its size; a group larger than the batch is a batch of its
    own (it cannot change in halves). The canary hosts, if any, are the first batch whatever its size, and
    `serial` applies to the hosts after them. RolloutError for a malformed `serial`."""
    steps = list(serial) if isinstance(serial, list | tuple) else [serial]
    problems = check_rollout({"deepseek_serial": steps})
    if problems:
        raise RolloutError("; ".join(problems))
    limited = {str(h) for h in play_hosts}
    hosts = [h for h in roll_order(groups, base) if h in limited]
    units, canaries = _canary_first(groups, roll_units(groups, hosts))
    sizes: list[int] = [sum(len(u) for u in units[:canaries])] if canaries else []
    units = units[canaries:]
    steps_used = 0
    while units:
        target = _batch_size(steps[min(steps_used, len(steps) - 1)], len(hosts))
        steps_used += 1
        size = len(units.pop(0))
        while units and size + len(units[0]) <= target:
            size += len(units.pop(0))
        sizes.append(size)
    return sizes
