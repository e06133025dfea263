"""Ansible filter `deepseek_plan`: the serving plan for one host, as the daemon config's keys.

The second surface of `deepseek_node.planner` (`provision plan` is the first): the same validation and
the same decision, so what an operator previews is what the role renders. Usage in a role:

    deepseek_daemon_plan: >-
      {{ {'deepseek_hardware_profile': deepseek_hardware_profile,
          'deepseek_hardware_overrides': deepseek_hardware_overrides | default({}),
          'deepseek_model': deepseek_model | default(omit),
          'deepseek_model_dir': deepseek_model_dir | default(omit),
          'deepseek_serving_goal': deepseek_serving_goal | default('throughput'),
          'deepseek_max_context': deepseek_max_context | default(omit)}
         | deepseek_plan(inventory_hostname) }}

It returns `{"model": {...}, "engine": {"max_running": N}, "plan": {...}}` and fails the task, naming the
host, the key and the fix, when the variables are invalid or the model cannot fit (with what would).

`deepseek_vllm_args` takes the same variables and renders how vLLM serves that plan on the host
(`deepseek_node.planner.engine_args`, as `provision plan` shows it):

    {{ deepseek_planner_vars | deepseek_vllm_args(inventory_hostname,
         model_path=inference_daemon_model_dest, port=8000, checkpoint_quant=checkpoint_quant,
         cpu_arch=ansible_architecture, cpu_flags=cpu_flags) }}

It returns `{"engine": "vllm"|"builtin", "engine_reason", "module", "argv", "env"}` (argv and env empty for
the builtin engine). `checkpoint_quant` is the model directory's config.json quant_method (none: not
quantized; left out: the format of the model the plan was made from); a checkpoint that cannot serve the
plan fails the task with what it needs. The API key is not part of the result: it reaches vLLM as
VLLM_API_KEY from a credential file.

`deepseek_group_plan` plans a serving group (several servers, one model, vLLM's multi-node mode) from its
members' variables and renders every rank's command line; see its docstring.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

OMIT_NOTE = "unset variables may be left out or passed as omit"
_FROM_MODEL = object()  # checkpoint_quant left out: the plan's own model's format


def _settings(filter_name: str, hostvars_subset: Any, host: str | None) -> Any:
    """The host's validated planner inputs (`inventory.HostSettings`), or the task's failure."""
    try:
        from deepseek_node.inventory import host_settings
        from deepseek_node.planner import PlannerInputError
    except ImportError as exc:  # Ansible runs on another interpreter than the one deepseek-node is in
        raise AnsibleFilterError(
            f"{filter_name}: cannot import deepseek_node ({exc}); run Ansible from the deepseek-node "
            "virtual environment (its bin/ansible-playbook)"
        ) from exc
    if not isinstance(hostvars_subset, Mapping):
        raise AnsibleFilterError(
            f"{filter_name}: expects a dict of deepseek_* variables, got {type(hostvars_subset).__name__} "
            f"({OMIT_NOTE})"
        )
    name = str(host or hostvars_subset.get("inventory_hostname") or "(unnamed host)")
    try:
        return host_settings(name, hostvars_subset)
    except PlannerInputError as exc:
        raise AnsibleFilterError(f"{filter_name}: invalid inventory (nothing was changed):\n{exc}") from exc


def deepseek_plan(hostvars_subset: Any, host: str | None = None) -> dict[str, Any]:
    plan = _settings("deepseek_plan", hostvars_subset, host).plan()
    if not plan.fits:
        raise AnsibleFilterError(f"deepseek_plan: {plan.summary()}")
    return plan.to_daemon_config()


def deepseek_vllm_args(
    hostvars_subset: Any,
    host: str | None = None,
    *,
    model_path: str,
    port: int,
    served_name: str | None = None,
    bind_host: str = "127.0.0.1",
    checkpoint_quant: Any = _FROM_MODEL,
    engine: str = "auto",
    gpu_compute_capability: Any = None,
    cpu_arch: str | None = None,
    cpu_flags: Any = None,
) -> dict[str, Any]:
    from dataclasses import replace

    settings = _settings("deepseek_vllm_args", hostvars_subset, host)  # fails clearly without deepseek_node
    from deepseek_node.planner import EngineUnavailableError, choose_engine, plan
    from deepseek_node.planner.engine_args import VLLM_MODULE, vllm_args, vllm_env

    req = settings.request()
    try:
        # The host's facts decide (a CPU without AVX2 gets the builtin engine); the profile fills the gaps.
        chosen, reason = choose_engine(
            engine,
            device=req.device,
            gpu_compute_capability=gpu_compute_capability or req.profile.compute_capability or None,
            cpu_arch=cpu_arch or None,
            cpu_flags=cpu_flags or None,
        )
    except ValueError as exc:  # EngineUnavailableError included
        kind = "engine unavailable" if isinstance(exc, EngineUnavailableError) else "bad engine"
        raise AnsibleFilterError(f"deepseek_vllm_args: host {settings.host}: {kind}: {exc}") from exc
    result = plan(replace(req, engine=chosen))
    if not result.fits:
        raise AnsibleFilterError(f"deepseek_vllm_args: {result.summary()}")
    answer: dict[str, Any] = {"engine": chosen.value, "engine_reason": reason, "module": VLLM_MODULE}
    if chosen.value != "vllm":
        return {**answer, "argv": [], "env": {}}
    quant = result.model.quant_method if checkpoint_quant is _FROM_MODEL else checkpoint_quant
    try:
        argv = vllm_args(
            result,
            model_path=str(model_path),
            served_name=str(served_name or result.model.name),
            port=int(port),
            host=str(bind_host),
            checkpoint_quant=quant,
        )
    except ValueError as exc:  # CheckpointMismatchError, a bad port or path
        raise AnsibleFilterError(f"deepseek_vllm_args: {exc}") from exc
    return {**answer, "argv": argv, "env": vllm_env(result)}


def deepseek_group_plan(
    members: Any,
    hostvars: Any,
    group: str | None = None,
    *,
    model_path: str,
    port: int,
    served_name: str | None = None,
    bind_host: str = "127.0.0.1",
    checkpoint_quant: Any = _FROM_MODEL,
    inference_nodes: Any = None,
) -> dict[str, Any]:
    """A serving group's plan and every rank's vLLM command line (`provision plan` shows the same):

        {{ groups[deepseek_serving_group] | deepseek_group_plan(hostvars, deepseek_serving_group,
             model_path=inference_daemon_model_dest, port=8000,
             inference_nodes=groups['inference_nodes']) }}

    Returns `{"group", "head", "hosts", "addresses": {host: address}, "master_addr", "master_port",
    "config": <deepseek_plan's answer>, "interconnect", "warnings",
    "ranks": {host: {"rank", "role", "module", "argv", "env"}}}`; fails the task, naming the group, host and
    fix, as `provision plan` refuses the group. (A host in two serving groups shows only in the inventory's
    structure: `provision plan` and `provision check` refuse it.)
    """
    try:
        from deepseek_node.inventory import GROUP, PLANNER_KEYS, InventoryError, validate_inventory
        from deepseek_node.planner.engine_args import group_vllm_args
        from deepseek_node.serving_groups import (
            ADDRESS_KEY,
            GROUP_KEY,
            HEAD_KEY,
            PORT_KEY,
            SERVING_GROUPS,
            find_serving_groups,
        )
    except ImportError as exc:
        raise AnsibleFilterError(
            f"deepseek_group_plan: cannot import deepseek_node ({exc}); run Ansible from the deepseek-node "
            "virtual environment (its bin/ansible-playbook)"
        ) from exc
    if isinstance(members, str) or not isinstance(members, list | tuple) or not members:
        raise AnsibleFilterError(
            "deepseek_group_plan: expects the group's hosts, e.g. groups[deepseek_serving_group]"
        )
    if not isinstance(hostvars, Mapping):
        raise AnsibleFilterError("deepseek_group_plan: expects hostvars as its first argument")
    hosts = [str(h) for h in members]
    keys = (*PLANNER_KEYS, GROUP_KEY, HEAD_KEY, PORT_KEY, ADDRESS_KEY, "ansible_host")
    name = str(group or hostvars[hosts[0]].get(GROUP_KEY) or "")
    nodes = hosts if inference_nodes is None else [h for h in hosts if h in list(inference_nodes)]
    inventory = {
        SERVING_GROUPS: {"children": [name]},
        name: {"hosts": hosts},
        GROUP: {"hosts": nodes},
        "_meta": {"hostvars": {h: {k: hostvars[h].get(k) for k in keys} for h in hosts}},
    }
    try:
        settings = validate_inventory(inventory, GROUP)
        (serving,) = find_serving_groups(inventory, settings, GROUP)
    except InventoryError as exc:
        raise AnsibleFilterError(
            f"deepseek_group_plan: invalid inventory (nothing was changed):\n{exc}"
        ) from exc
    result = serving.plan()
    quant = result.plan.model.quant_method if checkpoint_quant is _FROM_MODEL else checkpoint_quant
    addresses = {
        h: str(hostvars[h].get(ADDRESS_KEY) or hostvars[h].get("ansible_host") or h) for h in result.hosts
    }
    try:
        ranks = group_vllm_args(
            result,
            model_path=str(model_path),
            served_name=str(served_name or result.plan.model.name),
            port=int(port),
            master_addr=serving.master_addr,
            master_port=serving.master_port,
            host=str(bind_host),
            checkpoint_quant=quant,
            addresses=addresses,
        )
    except ValueError as exc:  # CheckpointMismatchError, a bad port or path
        raise AnsibleFilterError(f"deepseek_group_plan: serving group {name}: {exc}") from exc
    config = result.plan.to_daemon_config()
    config["plan"]["group"] = {"name": name, "servers": result.servers, "head": result.head}
    return {
        "group": name,
        "head": result.head,
        "hosts": list(result.hosts),
        "addresses": addresses,
        "master_addr": serving.master_addr,
        "master_port": serving.master_port,
        "config": config,
        "interconnect": result.handoff.to_dict() if result.handoff else None,
        "warnings": list(result.warnings),
        "ranks": {r.host: {k: v for k, v in r.to_dict().items() if k != "host"} for r in ranks},
    }


class FilterModule:
    """Registers `deepseek_plan`, `deepseek_vllm_args` and `deepseek_group_plan` for Ansible."""

    def filters(self) -> dict[str, Any]:
        return {
            "deepseek_plan": deepseek_plan,
            "deepseek_vllm_args": deepseek_vllm_args,
            "deepseek_group_plan": deepseek_group_plan,
        }
