"""Conventions every role keeps: defaults, argument specs, role-prefixed variables, no_log on secrets."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from deepseek_node.paths import project_root

ROLES = sorted(p.name for p in (project_root() / "roles").iterdir() if p.is_dir())


@pytest.mark.parametrize("role", ROLES)
def test_role_has_defaults_specs_and_meta(role: str) -> None:
    base = project_root() / "roles" / role
    for rel in ("defaults/main.yml", "meta/main.yml", "meta/argument_specs.yml", "tasks/main.yml"):
        assert (base / rel).is_file(), f"{role} lacks {rel}"


@pytest.mark.parametrize("role", ROLES)
def test_every_default_is_prefixed_and_specified(role: str) -> None:
    base = project_root() / "roles" / role
    defaults = yaml.safe_load((base / "defaults/main.yml").read_text()) or {}
    specs = yaml.safe_load((base / "meta/argument_specs.yml").read_text())["argument_specs"]["main"][
        "options"
    ]
    for name in defaults:
        assert name.startswith(role + "_"), f"{role}: default {name} is not prefixed with the role name"
        assert name in specs, f"{role}: default {name} has no argument spec (bad values would not fail early)"


def test_site_imports_every_playbook_in_order() -> None:
    site = yaml.safe_load((project_root() / "site.yml").read_text())
    imported = [entry["ansible.builtin.import_playbook"] for entry in site]
    assert imported[0] == "playbooks/preflight.yml"
    assert imported.index("playbooks/offline_repo.yml") < imported.index("playbooks/inference.yml")
    for rel in imported:
        assert (project_root() / rel).is_file()


def test_tasks_handling_api_keys_hide_them() -> None:
    tasks = Path(project_root() / "roles/inference_daemon/tasks")
    for path in tasks.glob("*.yml"):
        for task in yaml.safe_load(path.read_text()) or []:
            text = yaml.safe_dump(task)
            if "api_keys" in text or "probe_key" in text:
                assert task.get("no_log") is True, (
                    f"{path.name}: '{task.get('name')}' handles keys without no_log"
                )
