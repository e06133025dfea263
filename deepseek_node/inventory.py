"""Inventory validation for the serving planner: pure functions over the variables Ansible resolved.

`provision plan` gets the variables from `ansible-inventory --list` (so group_vars/host_vars precedence is
exactly Ansible's); the `deepseek_plan` filter gets one host's `deepseek_*` variables from the role. Both
end here, so a bad inventory reads the same in both places: which host, which key, and the fix. Every
problem of every host is reported at once, and nothing is planned, let alone changed, until there are none.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from deepseek_node.planner import (
    Engine,
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
from deepseek_node.planner.hardware import NETWORK_KEY, OVERRIDES_KEY, PROFILE_KEY, apply_network
from deepseek_node.planner.models import MODEL_DIR_KEY, MODEL_KEY

GROUP = "inference_nodes"
GOAL_KEY = "deepseek_serving_goal"
MAX_CONTEXT_KEY = "deepseek_max_context"
ENGINE_KEY = "deepseek_engine"
PLANNER_KEYS = (
    PROFILE_KEY, OVERRIDES_KEY, MODEL_KEY, MODEL_DIR_KEY, GOAL_KEY, MAX_CONTEXT_KEY, ENGINE_KEY, NETWORK_KEY,
)  # fmt: skip
_OMIT_PREFIX = "__omit_place_holder__"  # what Ansible's `omit` renders to


@dataclass(frozen=True)
class HostSettings:
    """One host's validated planner inputs."""

    host: str
    profile: HardwareProfile
    model: ModelSpec
    goal: Goal
    max_context: int | None
    engine: Engine = Engine.AUTO

    def request(self) -> PlanRequest:
        return PlanRequest(
            self.model, self.profile, self.goal, self.max_context, self.host, engine=self.engine
        )

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


def _engine(value: Any) -> Engine:
    if value is None:
        return Engine.AUTO
    try:
        return Engine(str(value))
    except ValueError:
        raise PlannerInputError(
            [
                Problem(
                    ENGINE_KEY,
                    f"{value!r} is not a serving engine",
                    f"use {' or '.join(e.value for e in Engine)} (auto: vLLM wherever a vLLM build runs)",
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
    for key, option in ((GOAL_KEY, "goal"), (MAX_CONTEXT_KEY, "max_context"), (ENGINE_KEY, "engine")):
        if overrides.get(option) is not None:
            merged[key] = overrides[option]
    values = {key: _value(merged, key) for key in PLANNER_KEYS}
    problems = [p for key, v in values.items() if (p := _template_problem(key, v))]
    if problems:
        raise PlannerInputError(problems, host)
    results: dict[str, Any] = {}
    steps = {
        "profile": lambda: apply_network(
            resolve_profile(values[PROFILE_KEY], values[OVERRIDES_KEY]), values[NETWORK_KEY]
        ),
        "model": lambda: resolve_model(values[MODEL_KEY], values[MODEL_DIR_KEY]),
        "goal": lambda: _goal(values[GOAL_KEY]),
        "max_context": lambda: _max_context(values[MAX_CONTEXT_KEY]),
        "engine": lambda: _engine(values[ENGINE_KEY]),
    }
    for name, step in steps.items():
        try:
            results[name] = step()
        except PlannerInputError as exc:
            problems += exc.problems
    if problems:
        raise PlannerInputError(problems, host)
    return HostSettings(
        host, results["profile"], results["model"], results["goal"], results["max_context"], results["engine"]
    )


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
    # Serving groups (children of `serving_groups`) are refused here too, before anything is planned.
    from deepseek_node.serving_groups import find_serving_groups

    find_serving_groups(inventory, settings, group)
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


_YAML_SUFFIXES = (".yml", ".yaml")
_FIX = (
    "fix: correct that file (YAML: `all:` with `children:`/`hosts:` mappings, see inventories/example), "
    "or give the path to hosts.yml or its directory"
)


def _yaml_files(source: Path) -> list[Path]:
    """The YAML files Ansible reads for `source`: itself, or a directory's files and group/host vars."""
    if source.is_file():
        return [source] if source.suffix in _YAML_SUFFIXES else []
    files = [p for p in sorted(source.iterdir()) if p.is_file() and p.suffix in _YAML_SUFFIXES]
    for sub in ("group_vars", "host_vars"):
        if (source / sub).is_dir():
            files += [
                p for p in sorted((source / sub).rglob("*")) if p.is_file() and p.suffix in _YAML_SUFFIXES
            ]
    return files


def _check_yaml_syntax(source: Path) -> None:
    """YAML syntax errors with their line and column, before Ansible buries them under every plugin it tried."""
    import yaml

    class Loader(yaml.SafeLoader):
        """Ansible's own tags (!vault, !unsafe, ...) are data here, not errors."""

    def any_tag(loader: yaml.SafeLoader, _suffix: str, node: yaml.Node) -> Any:
        if isinstance(node, yaml.MappingNode):
            return loader.construct_mapping(node)
        if isinstance(node, yaml.SequenceNode):
            return loader.construct_sequence(node)
        return loader.construct_scalar(node)  # type: ignore[arg-type]

    Loader.add_multi_constructor("!", any_tag)
    cannot = f"ansible-inventory cannot read {source}: "
    for path in _yaml_files(source):
        try:
            text = path.read_text(encoding="utf-8")
            if text.startswith("$ANSIBLE_VAULT"):
                continue  # an encrypted vars file: only Ansible, with the vault password, can read it
            data = yaml.load(text, Loader=Loader)  # a SafeLoader subclass: no arbitrary objects
        except OSError as exc:
            raise InventoryLoadError(f"{cannot}{path} cannot be read: {exc.strerror or exc}") from None
        except UnicodeDecodeError:
            raise InventoryLoadError(f"{cannot}{path} is not UTF-8 text; {_FIX}") from None
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise InventoryLoadError(
                f"{cannot}{path} is not valid YAML ({exc.problem or exc}{where}); {_FIX}"
            ) from None
        except yaml.YAMLError as exc:
            raise InventoryLoadError(f"{cannot}{path} is not valid YAML ({exc}); {_FIX}") from None
        if data is not None and not isinstance(data, dict):
            vars_file = path.parent.name in ("group_vars", "host_vars") or path.parent.parent.name in (
                "group_vars",
                "host_vars",
            )
            what = "a mapping of variables (`name: value` lines)" if vars_file else "a mapping of groups"
            raise InventoryLoadError(f"{cannot}{path} holds a {type(data).__name__}, not {what}; {_FIX}")


def _ansible_reason(stderr: str, source: Path) -> str:
    """The failure of the plugin meant for `source` (yaml for .yml files, else ini), not the last one tried:
    a YAML file's real problem is otherwise hidden behind the INI parser's complaint about `all:`."""
    reasons: dict[str, str] = {}
    current: str | None = None
    lines: list[str] = []
    for line in [*stderr.splitlines(), "[END]"]:
        match = re.match(r"\[WARNING\]: Failed to parse inventory with '(\w+)' plugin: ?(.*)", line)
        if match or line.startswith(("[ERROR]", "[END]", "Failed to parse inventory with")):
            if current and current not in reasons:
                reasons[current] = " ".join(" ".join(lines).split())
            current, lines = (match.group(1), [match.group(2)]) if match else (None, [])
        elif current:
            lines.append(line)
    prefer = ("yaml", "ini") if source.is_dir() or source.suffix in _YAML_SUFFIXES else ("ini", "yaml")
    for plugin in prefer:
        if reasons.get(plugin):
            return reasons[plugin]
    tail = [line for line in stderr.strip().splitlines() if line.strip() and "<<< caused by >>>" not in line]
    return " ".join(tail[-3:])


def load_inventory(source: str | Path) -> dict[str, Any]:
    """`ansible-inventory -i SOURCE --list`, as a dict. Refuses sources Ansible cannot parse, which it would
    otherwise turn into an empty inventory with a warning."""
    path = Path(source)
    if not path.exists():
        raise InventoryLoadError(
            f"inventory {source} does not exist: give the path to hosts.yml or its directory"
        )
    if path.is_dir() and not any(p.is_file() and not p.name.startswith(".") for p in path.iterdir()):
        raise InventoryLoadError(
            f"inventory directory {source} holds no inventory file: put hosts.yml in it "
            "(see inventories/example), or give the path to hosts.yml"
        )
    _check_yaml_syntax(path)
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
        raise InventoryLoadError(
            f"ansible-inventory cannot read {source}: {_ansible_reason(proc.stderr, path)}; {_FIX}"
        )
    try:
        data = json.loads(proc.stdout)
    except ValueError as exc:
        raise InventoryLoadError(f"ansible-inventory gave no JSON for {source}: {exc}") from exc
    if not isinstance(data, dict):
        raise InventoryLoadError(f"ansible-inventory gave no inventory for {source}")
    return data
