"""The bundle's Ansible collections: deepseek.node built from the project tree, and the collections its
roles depend on, so that an air-gapped controller installs them all with
`ansible-galaxy collection install --offline collections/*.tar.gz`.

The dependencies are built from the collections the controller's `ansible` package installed: those are the
versions galaxy.yml pins and the roles are tested with. A controller that runs ansible-core alone (no
`ansible` package) gets them from here too.
"""

from __future__ import annotations

import fnmatch
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import yaml

from deepseek_node.bundle.manifest import BundleError

COLLECTIONS_DIR = "collections"
Progress = Callable[[str], None]
# The collection's content at the top of the project tree; everything else there is in galaxy.yml's
# build_ignore (checked before building, so that nothing else, e.g. a bundle built inside the checkout, is
# packed into the collection).
CONTENT = frozenset({"galaxy.yml", "meta", "plugins", "playbooks", "roles", "docs", "LICENSE"})
# What an installed collection holds that a source tree for `ansible-galaxy collection build` must not.
_INSTALLED_ONLY = ("MANIFEST.json", "FILES.json", "__pycache__", "*.pyc")


def galaxy_meta(project_root: Path) -> dict[str, Any]:
    path = project_root / "galaxy.yml"
    try:
        meta = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        raise BundleError(f"cannot read {path} ({exc}): run from a deepseek-node checkout") from None
    if not isinstance(meta, dict) or not {"namespace", "name", "version"} <= meta.keys():
        raise BundleError(f"{path} lacks namespace, name or version: restore it from the checkout")
    return meta


def unexpected_content(names: Iterable[str], meta: Mapping[str, Any]) -> list[str]:
    """Top-level names of the project tree that would go into the collection but are not its content."""
    ignore = [
        *(meta.get("build_ignore") or []),
        ".git",
        "__pycache__",
        f"{meta['namespace']}-{meta['name']}-*.tar.gz",
    ]
    content = CONTENT | {str(meta.get("readme") or "README.md")}
    return sorted(
        n for n in names if n not in content and not any(fnmatch.fnmatch(n, str(p)) for p in ignore)
    )


def pinned_version(fqcn: str, spec: object) -> str:
    """The one version a dependency pin allows: the bundle carries exactly one tarball per collection."""
    text = str(spec).strip()
    version = text.removeprefix("==").strip()
    if not version or any(c in version for c in "<>=!*, "):
        raise BundleError(
            f"galaxy.yml pins {fqcn} as {text!r}: pin it to one version (==X.Y.Z), the one the controller's "
            "ansible package carries (`ansible-galaxy collection list`)"
        )
    return version


def tarball_name(namespace: str, name: str, version: str) -> str:
    return f"{namespace}-{name}-{version}.tar.gz"


def find_installed(fqcn: str, search: Iterable[Path]) -> Path | None:
    """The first installed copy of a collection (a directory with MANIFEST.json) under `search` paths."""
    namespace, name = fqcn.split(".", 1)
    for base in search:
        path = Path(base) / "ansible_collections" / namespace / name
        if (path / "MANIFEST.json").is_file():
            return path
    return None


def _galaxy_build(source: Path, dest: Path) -> None:
    galaxy = Path(sys.executable).parent / "ansible-galaxy"
    proc = subprocess.run(
        [str(galaxy if galaxy.exists() else "ansible-galaxy"), "collection", "build", "--force",
         "--output-path", str(dest), str(source)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise BundleError(
            f"ansible-galaxy collection build {source} failed (exit {proc.returncode}):\n  "
            + "\n  ".join(tail)
        )


def build_installed(installed: Path, dest: Path) -> str:
    """A collection tarball in `dest` from an installed collection; returns its file name.

    Installed collections carry MANIFEST.json and FILES.json, not galaxy.yml, and the `ansible` package
    leaves some of the listed files out: the tarball is built again from what is installed, with a
    galaxy.yml made from MANIFEST.json's collection_info."""
    info = json.loads((installed / "MANIFEST.json").read_text())["collection_info"]
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "src"
        shutil.copytree(installed, source, ignore=shutil.ignore_patterns(*_INSTALLED_ONLY))
        (source / "galaxy.yml").write_text(yaml.safe_dump({**info, "build_ignore": []}, sort_keys=False))
        _galaxy_build(source, dest)
    name = tarball_name(info["namespace"], info["name"], info["version"])
    if not (dest / name).is_file():
        raise BundleError(f"ansible-galaxy built no {name} from {installed}")
    return name


def build_collections(
    project_root: Path, dest: Path, progress: Progress = print, search: Iterable[Path] | None = None
) -> dict[str, str]:
    """Fill `dest` with deepseek.node's tarball and its pinned dependencies'; returns {fqcn: file name}."""
    meta = galaxy_meta(project_root)
    dest.mkdir(parents=True, exist_ok=True)
    paths = [Path(p) for p in (sys.path if search is None else search) if p]
    deps: Mapping[str, object] = meta.get("dependencies") or {}
    found = {}
    for fqcn, spec in sorted(deps.items()):
        version = pinned_version(fqcn, spec)
        installed = find_installed(fqcn, paths)
        have = (
            json.loads((installed / "MANIFEST.json").read_text())["collection_info"]["version"]
            if installed
            else None
        )
        if have != version:
            raise BundleError(
                f"galaxy.yml pins {fqcn} =={version}, but this controller's Python has "
                f"{have or 'no copy of it'}: install the ansible package that carries it, or pin what the "
                "roles were tested with"
            )
        found[fqcn] = installed
    fqcn = f"{meta['namespace']}.{meta['name']}"
    stray = unexpected_content((p.name for p in project_root.iterdir()), meta)
    if stray:
        raise BundleError(
            f"{project_root} holds {', '.join(stray)}, which is not collection content: move it out of the "
            "checkout, or add it to galaxy.yml's build_ignore"
        )
    progress(f"collections: {fqcn} {meta['version']} and {', '.join(found) or 'no dependencies'}")
    _galaxy_build(project_root, dest)
    out = {fqcn: tarball_name(meta["namespace"], meta["name"], str(meta["version"]))}
    if not (dest / out[fqcn]).is_file():
        raise BundleError(f"ansible-galaxy built no {out[fqcn]} from {project_root}")
    for dep, installed in found.items():
        out[dep] = build_installed(installed, dest)
    return out
