"""The Ansible inventory (hosts.yml) describing the running lab hosts."""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from deepseek_node.lab.network import Addressing
from deepseek_node.lab.rootfs import LAB_USER

GROUP = "inference_nodes"


def render_inventory(hosts: Iterable[Addressing], key_path: Path, known_hosts: Path) -> str:
    data: dict[str, Any] = {
        "all": {
            "children": {
                GROUP: {
                    "hosts": {
                        h.name: {
                            "ansible_host": h.address,
                            "deepseek_controller_address": h.controller_address,
                        }
                        for h in sorted(hosts, key=lambda h: h.index)
                    }
                }
            },
            "vars": {
                # Unprivileged login + sudo, as on a real fleet: every play's `become` is exercised.
                "ansible_user": LAB_USER,
                "ansible_ssh_private_key_file": str(key_path),
                "ansible_ssh_common_args": (
                    f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes -o IdentitiesOnly=yes"
                ),
                "ansible_python_interpreter": "/usr/bin/python3",
                "deepseek_hardware_profile": "cpu-only",
            },
        }
    }
    header = "# Written by `provision lab up`; removed by `provision lab down`. Do not edit.\n"
    return header + yaml.safe_dump(data, sort_keys=False, default_flow_style=False, width=1000)


def write_atomic(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    tmp.chmod(mode)
    tmp.replace(path)
