"""Inventory validation for the serving planner: pure functions over the variables Ansible resolved.

`provision plan` gets the variables from `ansible-inventory --list` (so group_vars/host_vars precedence is
exactly Ansible's); the `deepseek_plan` filter gets one host's `deepseek_*` variables from the role. Both
end here, so a bad inventory reads the same in both places: which host, which key, and the fix. Every
problem of every host is reported at once, and nothing is planned, let alone changed, until there are none.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepseek_node.planner import (
    Goal,
    HardwareProfile,
    ModelSpec,
    Plan,
    PlannerInputError,
    PlanRequest,
    Problem,
    plan,
    resolve_model,
    resolve_profile,
)
from deepseek_node.planner.hardware import OVERRIDES_KEY, PROFILE_KEY
from deepseek_node.planner.models import MODEL_DIR_KEY, MODEL_KEY

GROUP = "inference_nodes"
GOAL_KEY = "deepseek_serving_goal"
MAX_CONTEXT_KEY = "deepseek_max_context"
PLANNER_KEYS = (PROFILE_KEY, OVERRIDES_KEY, MODEL_KEY, MODEL_DIR_KEY, GOAL_KEY, MAX_CONTEXT_KEY)
_OMIT_PREFIX = "__omit_place_holder__"  # what Ansible's `omit` renders to


@dataclass(frozen=True)
class HostSettings:
    """One host's validated planner inputs."""

    host: str
    profile: HardwareProfile
    model: ModelSpec
    goal: Goal
    max_context: int | None

    def request(self) -> PlanRequest:
        return PlanRequest(self.model, self.profile, self.goal, self.max_context, self.host)

    def plan(self) -> Plan:
        return plan(self.request())


class InventoryError(ValueError):
    """Every problem found, each naming its host."""

    def __init__(self, problems: list[tuple[str, Problem]]) -> None:
        self.problems = problems
        super().__init__("\n".join(problem.describe(host) for host, problem in problems))


def _value(hostvars: Mapping[str, Any], key: str) -> Any:
    """A variable's value, with Ansible's `omit` and empty strings meaning unset."""
    value = hostvars.get(key)
    if isinstance(value, str) and (value.startswith(_OMIT_PREFIX) or value.strip() == ""):
        return None
    return value


def _template_problem(key: str, value: Any) -> Problem | None:
    if isinstance(value, str) and "{{" in value:
        return Problem(
            key,
            f"is a template ({value!r}) that only a play can render",
            "give a literal value in the inventory for `provision plan`; the role plans with the rendered one",
        )
    return None


def _goal(value: Any) -> Goal:
    if value is None:
        return Goal.THROUGHPUT
    try:
        return Goal(str(value))
    except ValueError:
        raise PlannerInputError(
            [
                Problem(
                    GOAL_KEY, f"{value!r} is not a serving goal", f"use {' or '.join(g.value for g in Goal)}"
                )
            ]
        ) from None


def _max_context(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise PlannerInputError(
            [Problem(MAX_CONTEXT_KEY, f"{value!r} is not a positive whole number of tokens", "e.g. 32768")]
        )
    return value


def host_settings(host: str, hostvars: Mapping[str, Any], **overrides: Any) -> HostSettings:
    """Validate one host's planner variables. `overrides` (model, model_dir, goal, max_context) come from
    the command line and win over the inventory. Raises PlannerInputError naming the host."""
    if not isinstance(hostvars, Mapping):
        raise PlannerInputError([Problem("hostvars", "must be a mapping of variables", "pass a dict")], host)
    merged = dict(hostvars)
    if overrides.get("model") or overrides.get("model_dir"):
        # The command line names the model outright: the inventory's choice of either kind is replaced.
        merged[MODEL_KEY] = overrides.get("model")
        merged[MODEL_DIR_KEY] = overrides.get("model_dir")
    for key, option in ((GOAL_KEY, "goal"), (MAX_CONTEXT_KEY, "max_context")):
        if overrides.get(option) is not None:
            merged[key] = overrides[option]
    values = {key: _value(merged, key) for key in PLANNER_KEYS}
    problems = [p for key, v in values.items() if (p := _template_problem(key, v))]
    if problems:
        raise PlannerInputError(problems, host)
    results: dict[str, Any] = {}
    steps = {
        "profile": lambda: resolve_profile(values[PROFILE_KEY], values[OVERRIDES_KEY]),
        "model": lambda: resolve_model(values[MODEL_KEY], values[MODEL_DIR_KEY]),
        "goal": lambda: _goal(values[GOAL_KEY]),
        "max_context": lambda: _max_context(values[MAX_CONTEXT_KEY]),
    }
    for name, step in steps.items():
        try:
            results[name] = step()
        except PlannerInputError as exc:
            problems += exc.problems
    if problems:
        raise PlannerInputError(problems, host)
    return HostSettings(host, results["profile"], results["model"], results["goal"], results["max_context"])


def group_hosts(inventory: Mapping[str, Any], group: str = GROUP) -> list[str]:
    """Hosts of `group` and of its child groups, from `ansible-inventory --list` output, sorted."""
    hosts: set[str] = set()
    seen: set[str] = set()
    pending = [group]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        entry = inventory.get(name) or {}
        hosts.update(entry.get("hosts", []))
        pending.extend(entry.get("children", []))
    return sorted(hosts)


def validate_inventory(
    inventory: Mapping[str, Any], group: str = GROUP, **overrides: Any
) -> list[HostSettings]:
    """Every host of `group`, validated; InventoryError with all problems of all hosts otherwise."""
    hosts = group_hosts(inventory, group)
    if not hosts:
        groups = sorted(k for k in inventory if k != "_meta")
        raise InventoryError(
            [
                (
                    "(none)",
                    Problem(
                        group,
                        f"the inventory has no hosts in group {group!r} (groups: {', '.join(groups) or 'none'})",
                        f"put the inference servers in group {group!r}, or name the group with --group",
                    ),
                )
            ]
        )
    hostvars = inventory.get("_meta", {}).get("hostvars", {})
    settings: list[HostSettings] = []
    problems: list[tuple[str, Problem]] = []
    for host in hosts:
        try:
            settings.append(host_settings(host, hostvars.get(host, {}), **overrides))
        except PlannerInputError as exc:
            problems += [(host, p) for p in exc.problems]
    if problems:
        raise InventoryError(problems)
    return settings


# --- The thin loader: Ansible resolves the variables, we only read its answer. ---


class InventoryLoadError(RuntimeError):
    pass


def ansible_inventory_command() -> str:
    """`ansible-inventory` beside this interpreter (the venv's), else on PATH."""
    beside = Path(sys.executable).with_name("ansible-inventory")
    if beside.is_file():
        return str(beside)
    found = shutil.which("ansible-inventory")
    if not found:
        raise InventoryLoadError(
            "ansible-inventory is not installed: install the controller extra (pip install 'deepseek-node[controller]')"
        )
    return found


def load_inventory(source: str | Path) -> dict[str, Any]:
    """`ansible-inventory -i SOURCE --list`, as a dict. Refuses sources Ansible cannot parse, which it would
    otherwise turn into an empty inventory with a warning."""
    if not Path(source).exists():
        raise InventoryLoadError(
            f"inventory {source} does not exist: give the path to hosts.yml or its directory"
        )
    env = dict(os.environ)
    env.update(
        {
            "ANSIBLE_INVENTORY_UNPARSED_FAILED": "true",
            "ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED": "true",
            "ANSIBLE_NOCOLOR": "1",
        }
    )
    proc = subprocess.run(
        [ansible_inventory_command(), "-i", str(source), "--list"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    if proc.returncode != 0:
        detail = proc.stderr.strip().splitlines()[-6:]
        raise InventoryLoadError(f"ansible-inventory cannot read {source}: " + " ".join(detail))
    try:
        data = json.loads(proc.stdout)
    except ValueError as exc:
        raise InventoryLoadError(f"ansible-inventory gave no JSON for {source}: {exc}") from exc
    if not isinstance(data, dict):
        raise InventoryLoadError(f"ansible-inventory gave no inventory for {source}")
    return data
