"""The main job end to end on the local lab: targets → bundle → site.yml → a chat completion over TLS.

Plain functions so the CLI (`provision demo`) and the end-to-end test run exactly the same steps.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from deepseek_node.gpu import GPU_ROLES
from deepseek_node.paths import cache_dir, project_root

if TYPE_CHECKING:
    from deepseek_node.bundle.build import BundleSpec

DAEMON_PORT = 8443
Say = Callable[[str], None]


@dataclass(frozen=True)
class Endpoint:
    base_url: str
    ca_cert: Path
    api_key: str
    model: str


def ensure_api_key(inventory_dir: Path) -> Path:
    """A random API key kept beside the lab inventory (0600); created once, reused after."""
    path = inventory_dir / "secrets" / "api_key"
    if not path.is_file():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("dsn-" + secrets.token_urlsafe(32) + "\n")
    return path


def write_lab_group_vars(inventory_dir: Path, bundle_dir: Path) -> Path:
    """group_vars for the lab inventory: which bundle to roll out and the API key (by file lookup)."""
    key_file = ensure_api_key(inventory_dir)
    gv = inventory_dir / "group_vars" / "all"
    gv.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {
        "deepseek_bundle_dir": str(bundle_dir),
        "inference_daemon_port": DAEMON_PORT,
        # The lab has no ansible-vault secret: LUKS key material (only if a host names a device) is kept
        # in plain 0600 files beside the inventory.
        "disk_encryption_allow_plain_escrow": True,
        # Each target's own /24 holds only it and its controller side (deepseek_node.lab.network).
        "firewall_admin_networks": ["{{ ansible_host }}/24"],
        "firewall_client_networks": ["{{ ansible_host }}/24"],
        "firewall_monitoring_networks": ["{{ ansible_host }}/24"],
        "inference_daemon_api_keys": [
            {
                "id": "lab-admin",
                "key": f"{{{{ lookup('ansible.builtin.file', '{key_file}') }}}}",
                "scopes": ["inference", "metrics", "admin"],
            }
        ],
        # Prometheus (monitoring play, on hosts of a `monitoring` group) scrapes /metrics with this key.
        "monitoring_metrics_api_key": f"{{{{ lookup('ansible.builtin.file', '{key_file}') }}}}",
    }
    path = gv / "deepseek.yml"
    path.write_text(
        "---\n# Written by deepseek-node for the local lab.\n" + yaml.safe_dump(data, sort_keys=False)
    )
    return path


def lab_bundle_spec(out: Path, **overrides: Any) -> BundleSpec:
    """A bundle for lab targets: the cached tiny model, the shared bundle cache, no GPU stack (the lab has
    no GPUs: its packages are about 1.7 GiB). `overrides` are other BundleSpec fields."""
    from deepseek_node.bundle.build import BundleSpec
    from deepseek_node.tiny_model import tiny_model_cached

    fields: dict[str, Any] = {
        "out": out,
        "project_root": project_root(),
        "model_dir": tiny_model_cached(cache_dir()),
        "model_name": "deepseek-tiny",
        "cache": cache_dir() / "bundle",
        "skip_roles": GPU_ROLES,
    }
    return BundleSpec(**(fields | overrides))


def build_demo_bundle(out: Path, say: Say) -> Path:
    from deepseek_node.bundle.build import build_bundle

    build_bundle(lab_bundle_spec(out), progress=say)
    return out


def endpoint_for(address: str, inventory_dir: Path, model: str = "deepseek-tiny") -> Endpoint:
    return Endpoint(
        base_url=f"https://{address}:{DAEMON_PORT}/v1",
        ca_cert=inventory_dir / "pki" / "ca.crt",
        api_key=(inventory_dir / "secrets" / "api_key").read_text().strip(),
        model=model,
    )


def chat(endpoint: Endpoint, prompt: str, stream: bool = False, max_tokens: int = 32) -> str:
    """One chat completion with the official openai client, trusting only the lab CA."""
    import ssl

    import httpx
    from openai import OpenAI

    trust = ssl.create_default_context(cafile=str(endpoint.ca_cert))
    with httpx.Client(verify=trust, timeout=120) as http:
        client = OpenAI(base_url=endpoint.base_url, api_key=endpoint.api_key, http_client=http, max_retries=0)
        messages = [{"role": "user", "content": prompt}]
        if not stream:
            resp = client.chat.completions.create(
                model=endpoint.model, messages=messages, max_tokens=max_tokens
            )
            return resp.choices[0].message.content or ""
        parts = []
        for chunk in client.chat.completions.create(
            model=endpoint.model, messages=messages, max_tokens=max_tokens, stream=True
        ):
            if chunk.choices and chunk.choices[0].delta.content:
                parts.append(chunk.choices[0].delta.content)
        return "".join(parts)
