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
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from ansible.errors import AnsibleFilterError

OMIT_NOTE = "unset variables may be left out or passed as omit"


def deepseek_plan(hostvars_subset: Any, host: str | None = None) -> dict[str, Any]:
    try:
        from deepseek_node.inventory import host_settings
        from deepseek_node.planner import PlannerInputError
    except ImportError as exc:  # Ansible runs on another interpreter than the one deepseek-node is in
        raise AnsibleFilterError(
            f"deepseek_plan: cannot import deepseek_node ({exc}); run Ansible from the deepseek-node "
            "virtual environment (its bin/ansible-playbook)"
        ) from exc
    if not isinstance(hostvars_subset, Mapping):
        raise AnsibleFilterError(
            f"deepseek_plan: expects a dict of deepseek_* variables, got {type(hostvars_subset).__name__} "
            f"({OMIT_NOTE})"
        )
    name = str(host or hostvars_subset.get("inventory_hostname") or "(unnamed host)")
    try:
        settings = host_settings(name, hostvars_subset)
    except PlannerInputError as exc:
        raise AnsibleFilterError(f"deepseek_plan: invalid inventory (nothing was changed):\n{exc}") from exc
    plan = settings.plan()
    if not plan.fits:
        raise AnsibleFilterError(f"deepseek_plan: {plan.summary()}")
    return plan.to_daemon_config()


class FilterModule:
    """Registers `deepseek_plan` for Ansible."""

    def filters(self) -> dict[str, Any]:
        return {"deepseek_plan": deepseek_plan}
