"""Preflight's disk-space decision as Ansible filters (the logic is deepseek_node.disk_space)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

try:
    from deepseek_node import disk_space
except ImportError:  # ansible-playbook from a checkout whose package is not installed in this interpreter
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    from deepseek_node import disk_space


def deepseek_space_needs(manifest: dict[str, Any], bundle_dest: str, models_dir: str, venv_dir: str) -> list:
    """[{what, path, bytes}]: what the bundle, the model and the virtualenv need on the host."""
    return disk_space.space_needs(manifest or {}, str(bundle_dest), str(models_dir), str(venv_dir))


def deepseek_space_problems(measured: list[dict[str, Any]], margin_gib: float = 2) -> list[str]:
    """Why those do not fit the host's filesystems (one line per filesystem short of space); [] when they do."""
    return disk_space.space_problems(list(measured or []), int(float(margin_gib) * disk_space.GIB))


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "deepseek_space_needs": deepseek_space_needs,
            "deepseek_space_problems": deepseek_space_problems,
        }
