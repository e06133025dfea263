"""Serving groups in the inventory: several servers serving one model with vLLM's multi-node mode.

A serving group is an inventory group that is a child of `serving_groups`. Its group_vars name it and its
head, so every member knows both (other roles, e.g. the firewall, read these host variables):

    serving_groups:
      children:
        r1_pair:
          hosts: {ds-h100-11: {}, ds-h100-12: {}}
    # group_vars/r1_pair.yml
    deepseek_serving_group: r1_pair
    deepseek_serving_group_head: ds-h100-11

Optional: `deepseek_serving_group_port` (vLLM's --master-port, default 29501) and
`deepseek_serving_group_address` (the head's address the other members reach, default its ansible_host).

Everything is checked from `ansible-inventory --list` before anything is planned or changed, each problem
naming the host or group and the fix: a host in two serving groups (Ansible would silently merge both
groups' variables, so this is read from the groups' structure, not from the merged variables), a member
outside `inference_nodes`, `deepseek_serving_group` not the group's own name, a missing or foreign head,
members that differ in GPUs or in what they serve, and a size the plan cannot use (`planner.group`'s rule:
2 or more servers, stages balanced within 5%, and enough of them to hold the model).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from deepseek_node.inventory import GROUP, HostSettings, InventoryError, group_hosts
from deepseek_node.planner.group import GroupPlan, GroupRequest, plan_group, smallest_group
from deepseek_node.planner.hardware import HardwareProfile
from deepseek_node.planner.problems import PlannerInputError, Problem

SERVING_GROUPS = "serving_groups"
GROUP_KEY = "deepseek_serving_group"
HEAD_KEY = "deepseek_serving_group_head"
PORT_KEY = "deepseek_serving_group_port"
ADDRESS_KEY = "deepseek_serving_group_address"
DEFAULT_PORT = 29501  # vLLM's default --master-port

# What must be the same on every member: the hardware (a pipeline stage per server assumes identical servers)
# and what they serve.
_HARDWARE_FIELDS = (
    "gpu_name", "gpu_count", "gpu_memory_gib", "compute_capability", "fp8", "bf16", "interconnect",
    "nvlink_domain",
)  # fmt: skip


@dataclass(frozen=True)
class ServingGroup:
    name: str
    hosts: tuple[str, ...]  # head first, then the others in name order
    settings: HostSettings  # the head's; every member's are the same (checked)
    profile: HardwareProfile  # the members' profile, with the slowest member's network
    master_addr: str
    master_port: int

    @property
    def head(self) -> str:
        return self.hosts[0]

    @property
    def workers(self) -> tuple[str, ...]:
        return self.hosts[1:]

    def request(self) -> GroupRequest:
        s = self.settings
        return GroupRequest(
            s.model, self.profile, len(self.hosts), s.goal, s.max_context, self.name, self.hosts, s.engine
        )

    def plan(self) -> GroupPlan:
        return plan_group(self.request())


def _group(name: str) -> str:
    return f"serving group {name}"


def _hardware(profile: HardwareProfile) -> tuple[Any, ...]:
    return tuple(getattr(profile, f) for f in _HARDWARE_FIELDS)


def _describe_hardware(profile: HardwareProfile) -> str:
    return f"{profile.gpu_count}x {profile.gpu_name} ({profile.label})"


def _serves(s: HostSettings) -> tuple[Any, ...]:
    return (s.model.name, s.model.source, s.goal, s.max_context, s.engine)


def _describe_serves(s: HostSettings) -> str:
    context = s.max_context if s.max_context is not None else "default"
    return f"{s.model.name} for {s.goal.value}, context {context}, engine {s.engine.value}"


def _port(value: Any) -> int | None:
    if value is None:
        return DEFAULT_PORT
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value < 65536:
        return None
    return value


def _structure(inventory: Mapping[str, Any], problems: list[tuple[str, Problem]]) -> dict[str, list[str]]:
    """Each serving group's members, from the groups' structure; problems for hosts in two of them."""
    entry = inventory.get(SERVING_GROUPS) or {}
    for host in entry.get("hosts", []):
        problems.append(
            (
                host,
                Problem(
                    SERVING_GROUPS,
                    "lists the host directly; its children are the serving groups",
                    "put the host in a group of its own under serving_groups (children:)",
                ),
            )
        )
    groups = {name: group_hosts(inventory, name) for name in sorted(entry.get("children", []))}
    seen: dict[str, list[str]] = {}
    for name, members in groups.items():
        for host in members:
            seen.setdefault(host, []).append(name)
    for host, names in sorted(seen.items()):
        if len(names) > 1:
            problems.append(
                (
                    host,
                    Problem(
                        SERVING_GROUPS,
                        f"the host is in {len(names)} serving groups ({', '.join(names)}); Ansible would merge "
                        f"their variables and the host would serve one of them at random",
                        f"keep it in one of {', '.join(names)} and remove it from the others",
                    ),
                )
            )
    return groups


def _member_problems(
    name: str,
    members: list[str],
    hostvars: Mapping[str, Any],
    nodes: set[str],
    settings: Mapping[str, HostSettings],
) -> list[tuple[str, Problem]]:
    problems: list[tuple[str, Problem]] = []
    fix_vars = f"set it in group_vars/{name}.yml"
    for host in members:
        if host not in nodes:
            problems.append(
                (
                    host,
                    Problem(
                        _group(name),
                        f"the host is a member but not in {GROUP}, so nothing would install or plan it",
                        f"add {host} to {GROUP} (e.g. make {name} a child of a group under {GROUP} too)",
                    ),
                )
            )
        value = hostvars.get(host, {}).get(GROUP_KEY)
        if value != name:
            said = "is not set" if value in (None, "") else f"is {value!r}, not the group's own name {name!r}"
            problems.append((host, Problem(GROUP_KEY, said, f"{fix_vars}: {GROUP_KEY}: {name}")))
    heads = {hostvars.get(h, {}).get(HEAD_KEY) for h in members}
    if None in heads or "" in heads:
        missing = [h for h in members if hostvars.get(h, {}).get(HEAD_KEY) in (None, "")]
        problems.append(
            (
                "",
                Problem(
                    _group(name),
                    f"{HEAD_KEY} is not set for {', '.join(missing)}",
                    f"{fix_vars}: {HEAD_KEY}: <one of {', '.join(members)}>",
                ),
            )
        )
    elif len(heads) > 1:
        problems.append(
            (
                "",
                Problem(
                    _group(name),
                    f"its members name different heads ({', '.join(sorted(map(str, heads)))})",
                    f"set {HEAD_KEY} once, in group_vars/{name}.yml, and not in host_vars",
                ),
            )
        )
    else:
        head = heads.pop()
        if head not in members:
            problems.append(
                (
                    "",
                    Problem(
                        _group(name),
                        f"{HEAD_KEY} {head!r} is not a member of the group",
                        f"name one of its members ({', '.join(members)}) as the head",
                    ),
                )
            )
    ports = {repr(hostvars.get(h, {}).get(PORT_KEY)) for h in members}
    for host in members:
        if _port(hostvars.get(host, {}).get(PORT_KEY)) is None:
            problems.append(
                (
                    host,
                    Problem(
                        PORT_KEY,
                        f"{hostvars[host][PORT_KEY]!r} is not a TCP port",
                        f"leave it unset ({DEFAULT_PORT}) or give a free port",
                    ),
                )
            )
    if len(ports) > 1:
        problems.append(
            (
                "",
                Problem(
                    _group(name),
                    f"its members set different {PORT_KEY}s",
                    f"set it once, in group_vars/{name}.yml",
                ),
            )
        )
    known = [h for h in members if h in settings]
    if not known:
        return problems
    first = settings[known[0]]
    for host in known[1:]:
        other = settings[host]
        if _hardware(other.profile) != _hardware(first.profile):
            problems.append(
                (
                    host,
                    Problem(
                        _group(name),
                        f"has {_describe_hardware(other.profile)}, but {known[0]} has "
                        f"{_describe_hardware(first.profile)}: a group's servers must be identical (one "
                        "pipeline stage each, sized alike)",
                        f"give {host} its own group, or correct its deepseek_hardware_profile / "
                        "deepseek_hardware_overrides",
                    ),
                )
            )
        if _serves(other) != _serves(first):
            problems.append(
                (
                    host,
                    Problem(
                        _group(name),
                        f"serves {_describe_serves(other)}, but {known[0]} serves {_describe_serves(first)}",
                        f"set deepseek_model / deepseek_serving_goal / deepseek_max_context / deepseek_engine "
                        f"once, in group_vars/{name}.yml, and not in host_vars",
                    ),
                )
            )
    return problems


def _plan_problems(group: ServingGroup) -> list[tuple[str, Problem]]:
    try:
        result = group.plan()
    except PlannerInputError as exc:
        return [("", replace(p, key=f"{_group(group.name)}: {p.key}")) for p in exc.problems]
    if result.fits:
        return []
    bigger = smallest_group(group.request(), start=len(group.hosts) + 1)
    fix = (
        f"make it {bigger.servers} servers ({bigger.layout_text()})"
        if bigger
        else "serve a smaller model or a pre-quantized checkpoint"
    )
    return [
        (
            "",
            Problem(
                _group(group.name),
                f"{group.settings.model.name} does not fit on {len(group.hosts)} x {group.profile.name}",
                fix,
            ),
        )
    ]


def find_serving_groups(
    inventory: Mapping[str, Any], settings: list[HostSettings], group: str = GROUP
) -> list[ServingGroup]:
    """The inventory's serving groups, checked; InventoryError with every problem otherwise. `settings` are
    the validated planner inputs of the hosts of `group` (`inventory.validate_inventory`)."""
    hostvars: Mapping[str, Any] = inventory.get("_meta", {}).get("hostvars", {})
    problems: list[tuple[str, Problem]] = []
    groups = _structure(inventory, problems) if SERVING_GROUPS in inventory else {}
    members_of = {h for members in groups.values() for h in members}
    for host in sorted(hostvars):
        value = hostvars[host].get(GROUP_KEY)
        if value not in (None, "") and host not in members_of:
            problems.append(
                (
                    host,
                    Problem(
                        GROUP_KEY,
                        f"is {value!r}, but the host is in no group under {SERVING_GROUPS}",
                        f"add the host to {value} under {SERVING_GROUPS}, or remove {GROUP_KEY}",
                    ),
                )
            )
    nodes = set(group_hosts(inventory, group))
    by_host = {s.host: s for s in settings}
    found: list[ServingGroup] = []
    for name, members in groups.items():
        if not members:
            problems.append(("", Problem(_group(name), "has no hosts", f"add its servers, or remove {name}")))
            continue
        own = _member_problems(name, members, hostvars, nodes, by_host)
        problems += own
        if own or any(len([g for g, m in groups.items() if h in m]) > 1 for h in members):
            continue
        head = hostvars[members[0]][HEAD_KEY]
        hosts = (head, *sorted(h for h in members if h != head))
        head_vars = hostvars.get(head, {})
        slowest = min((by_host[h].profile for h in hosts), key=lambda p: p.network_gbps)
        candidate = ServingGroup(
            name,
            hosts,
            by_host[head],
            replace(by_host[head].profile, network_gbps=slowest.network_gbps),
            str(head_vars.get(ADDRESS_KEY) or head_vars.get("ansible_host") or head),
            _port(head_vars.get(PORT_KEY)) or DEFAULT_PORT,
        )
        planned = _plan_problems(candidate)
        problems += planned
        if not planned:
            found.append(candidate)
    if problems:
        raise InventoryError(problems)
    return found
