"""Where the project's Ansible content and state live.

The Ansible tree (site.yml, roles/, plugins/: also the collection deepseek.node) ships beside the package in a
checkout; on a controller installed from a bundle (controller/install.sh) it lies in the virtualenv, under
share/deepseek-node. An operator may point elsewhere with DEEPSEEK_NODE_HOME.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


class ProjectNotFound(RuntimeError):
    pass


def installed_tree() -> Path:
    """Where a bundle's controller/install.sh puts the Ansible tree: inside the virtualenv running this."""
    return Path(sys.prefix) / "share" / "deepseek-node"


def project_root() -> Path:
    env = os.environ.get("DEEPSEEK_NODE_HOME")
    candidates = [Path(env)] if env else []
    candidates += [Path(__file__).resolve().parents[1], installed_tree(), Path.cwd()]
    for cand in candidates:
        if (cand / "site.yml").is_file() and (cand / "roles").is_dir():
            return cand
    raise ProjectNotFound(
        "cannot find the deepseek-node Ansible tree (site.yml, roles/): run from a checkout, install the "
        "controller from a bundle (BUNDLE/controller/install.sh) or set DEEPSEEK_NODE_HOME to its path"
    )


def templates_dir() -> Path:
    """The daemon's config and unit templates: the inference_daemon role's own."""
    return project_root() / "roles" / "inference_daemon" / "templates"


def state_dir() -> Path:
    """Controller-side state (lab, caches); root-owned by default since the lab needs root."""
    return Path(os.environ.get("DEEPSEEK_NODE_STATE", "/var/lib/deepseek-node"))


def cache_dir() -> Path:
    return Path(os.environ.get("DEEPSEEK_NODE_CACHE", "/var/cache/deepseek-node"))


def artifacts_root() -> Path:
    """Where runs keep their artifacts by default: ./artifacts of a checkout; for an installed tree, which
    is replaced whole by the next bundle's install, the state directory, so the history outlives upgrades."""
    root = project_root()
    if root.resolve() == installed_tree().resolve():
        return state_dir() / "artifacts"
    return root / "artifacts"
