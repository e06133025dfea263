"""The lab's Ansible inventory rendering: pure, no root needed."""

from __future__ import annotations

from pathlib import Path

import yaml

from deepseek_node.lab.inventory import render_inventory
from deepseek_node.lab.network import addressing
from deepseek_node.lab.rootfs import cache_key, debian_mirror


def test_inventory_matches_the_documented_shape() -> None:
    hosts = [addressing("dsn", "10.77", i) for i in (2, 1)]
    data = yaml.safe_load(render_inventory(hosts, Path("/s/id_ed25519"), Path("/s/known_hosts")))
    assert data == {
        "all": {
            "children": {
                "inference_nodes": {
                    "hosts": {
                        "dsn1": {"ansible_host": "10.77.1.2", "deepseek_controller_address": "10.77.1.1"},
                        "dsn2": {"ansible_host": "10.77.2.2", "deepseek_controller_address": "10.77.2.1"},
                    }
                }
            },
            "vars": {
                "ansible_user": "deploy",
                "ansible_ssh_private_key_file": "/s/id_ed25519",
                "ansible_ssh_common_args": "-o UserKnownHostsFile=/s/known_hosts "
                "-o StrictHostKeyChecking=yes -o IdentitiesOnly=yes",
                "ansible_python_interpreter": "/usr/bin/python3",
                "deepseek_hardware_profile": "cpu-only",
            },
        }
    }
    assert list(data["all"]["children"]["inference_nodes"]["hosts"]) == ["dsn1", "dsn2"]


def test_rootfs_cache_key_is_stable() -> None:
    assert cache_key() == cache_key()
    assert len(cache_key()) == 12


def test_mirror_env_override(monkeypatch) -> None:
    monkeypatch.setenv("DEEPSEEK_NODE_DEBIAN_MIRROR", "http://mirror.example/debian/")
    assert debian_mirror() == "http://mirror.example/debian"
