"""The bundle's controller part: what the machine that runs `provision` on the air-gapped side needs, so that
it too is installed from the bundle alone (`BUNDLE/controller/install.sh`).

    controller/install.sh           the one command (bash: nothing else can be assumed on a bare Debian)
    controller/bundle_manifest.py   the stdlib manifest checker install.sh verifies the bundle with
    controller/controller.env       KEY=VALUE facts install.sh reads: release, packages, the install's id
    controller/apt/                 a signed flat repository: the controller's Debian packages + closure
    controller/wheels/              this project's wheel and its `controller` extra's closure, locked with
                                    one sha256 per wheel (requirements.lock)
    controller/ansible/             the Ansible tree `provision` runs (site.yml, playbooks/, roles/, ...)

Its packages and wheels are for one Debian release (by default the bundle's own) and its CPython, and are
resolved like the rest of the bundle: apt for an empty system, pip with this controller's tested versions.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from deepseek_node import __version__
from deepseek_node.bundle import manifest as manifest_module
from deepseek_node.bundle.apt import PrivateApt, build_flat_repo
from deepseek_node.bundle.manifest import BundleError, sha256_file
from deepseek_node.bundle.target import SUITES, bundle_target
from deepseek_node.bundle.wheels import (
    PROJECT,
    SUITE_TARGETS,
    Pin,
    Target,
    canonical,
    controller_pins,
    fetch_wheels,
    lock_lines,
    pins_from_report,
    resolve_report,
)

Progress = Callable[[str], None]

CONTROLLER_DIR = "controller"
EXTRA = "controller"
# What `provision` and ansible-playbook need on a minimal Debian besides Python's wheels.
APT_PACKAGES: tuple[str, ...] = (
    "python3",  # the controller's CPython: the virtualenv and the stdlib manifest checker
    "python3-venv",  # venv + ensurepip (Debian splits them out of python3)
    "openssh-client",  # Ansible's connection to every target
    "gnupg",  # to inspect or re-check the bundle's archive key; apt itself verifies with gpgv
)
# The Ansible tree `provision` finds through paths.project_root(): no checkout on the controller.
TREE: tuple[str, ...] = (
    "ansible.cfg",
    "site.yml",
    "playbooks",
    "roles",
    "plugins",
    # The collection deepseek.node as the checkout sees itself (ansible.cfg's collections_path): roles name
    # its plugins by FQCN.
    "galaxy.yml",
    "meta",
    "collections/ansible_collections/deepseek/node",
    "inventories/example",
)
INSTALL_SCRIPT = "install.sh"
CHECKER = "bundle_manifest.py"
ENV_FILE = "controller.env"
LOCK = "requirements.lock"
WHEEL_CACHE = "controller-wheels"
INSTALL_ARGS = ("--no-index", "--require-hashes", "--no-deps")
_ENV_VALUE = re.compile(r"[A-Za-z0-9 ._:/+=@-]*")
_SKIP_PARTS = {"__pycache__", ".pytest_cache"}


# The controller's own packages come from Debian's archive (the one every bundle build already reads).
CONTROLLER_SUITES = tuple(s for s in SUITE_TARGETS if SUITES.get(s, ("",))[0] == "Debian")


def controller_target(suite: str) -> Target:
    if suite not in CONTROLLER_SUITES:
        raise BundleError(
            f"the controller part is built for a Debian release with a known CPython, and {suite} is not one: "
            f"give --controller-suite {' or '.join(CONTROLLER_SUITES)}, or build with --without-controller"
        )
    return SUITE_TARGETS[suite]


def requirement() -> str:
    return f"{PROJECT}[{EXTRA}]=={__version__}"


def tree_files(project_root: Path, tree: Sequence[str] = TREE) -> list[str]:
    """Relative paths of the Ansible tree's files (symlinks followed: the bundle holds regular files only)."""
    files: list[str] = []
    for entry in tree:
        path = project_root / entry
        if path.is_file():
            files.append(entry)
        elif path.is_dir():
            for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_PARTS)
                for name in filenames:
                    if not name.endswith((".pyc", ".pyo")):
                        files.append((Path(dirpath) / name).relative_to(project_root).as_posix())
        else:
            raise BundleError(
                f"{path} is missing: the controller's Ansible tree comes from the project checkout; build "
                "from a complete checkout (or set DEEPSEEK_NODE_HOME to one)"
            )
    return sorted(files)


def controller_id(lock: str, tree: Mapping[str, str]) -> str:
    """A short hash of what goes into the controller's virtualenv: a new lock or tree gives a new install."""
    h = hashlib.sha256(lock.encode())
    for rel in sorted(tree):
        h.update(f"\0{rel}\0{tree[rel]}".encode())
    return h.hexdigest()[:16]


def render_lock(target: Target, pins: list[tuple[str, str]]) -> str:
    head = [
        f"# {requirement()} for CPython {target.python_version} on {target.platform} (Debian {target.suite})",
        f"# install: pip install {' '.join(INSTALL_ARGS)} --find-links THIS_DIR -r {LOCK}",
    ]
    return "\n".join([*head, *lock_lines(pins)]) + "\n"


def render_env(values: Mapping[str, str]) -> str:
    """controller.env: KEY=VALUE lines that install.sh reads without sourcing (nothing in it is executed)."""
    lines = ["# Read by install.sh (never sourced). Written by `provision bundle build`."]
    for key, value in values.items():
        if not re.fullmatch(r"[A-Z][A-Z0-9_]*", key) or not _ENV_VALUE.fullmatch(value):
            raise ValueError(f"controller.env cannot hold {key}={value!r}")
        lines.append(f"{key}={value}")
    return "\n".join(lines) + "\n"


def env_values(target: dict[str, str], packages: Sequence[str], cid: str, key: str) -> dict[str, str]:
    return {
        "VERSION": __version__,
        "CONTROLLER_ID": cid,
        # As /etc/os-release names them (ID, VERSION_ID).
        "DISTRIBUTION": target["distribution"].lower(),
        "RELEASE": target["release"],
        "SUITE": target["suite"],
        "ARCH": target["arch"],
        "PYTHON": target["python"],
        "APT_PACKAGES": " ".join(packages),
        "KEY": key,
    }


def split_project(pins: list[Pin]) -> tuple[Pin | None, list[Pin]]:
    """(this project's own pin, the others): the project's wheel is built here, not downloaded."""
    own = [p for p in pins if p.name == canonical(PROJECT)]
    return (own[0] if own else None), [p for p in pins if p.name != canonical(PROJECT)]


def _resolve(project_wheel: Path, target: Target) -> list[Pin]:
    """The closure of the controller extra for the target, pinned to what this controller runs."""
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("\n".join(controller_pins()) + "\n")
        constraints = fh.name
    try:
        report = resolve_report(
            [requirement()],
            target,
            extra_args=("--find-links", str(project_wheel.parent), "--constraint", constraints),
        )
    finally:
        Path(constraints).unlink(missing_ok=True)
    pins, _ = pins_from_report(report)
    return pins


def _copy_tree(project_root: Path, dest: Path) -> dict[str, str]:
    digests: dict[str, str] = {}
    for rel in tree_files(project_root):
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(project_root / rel, target)
        target.chmod(0o644)
        digests[rel] = sha256_file(target)
    return digests


def build_controller(
    staging: Path,
    *,
    project_root: Path,
    project_wheel: Path,
    apt: PrivateApt,
    suite: str,
    arch: str,
    gnupg_home: Path,
    key: str,
    cache: Path,
    progress: Progress,
) -> dict:
    """Fill staging/controller/; returns the manifest's `controller` entry."""
    target = controller_target(suite)
    dest = staging / CONTROLLER_DIR
    progress(f"controller: Debian packages for {suite} ({', '.join(APT_PACKAGES)}) and their dependencies")
    debs = apt.download_closure(list(APT_PACKAGES), dest / "apt")
    build_flat_repo(dest / "apt", suite, gnupg_home, staging / key)

    progress(
        f"controller: wheels for {PROJECT} {__version__} and its {EXTRA} extra, CPython {target.python_version}"
    )
    own, others = split_project(_resolve(project_wheel, target))
    if own is None or own.filename != project_wheel.name:
        raise BundleError(f"pip did not resolve {PROJECT} to the wheel built here ({project_wheel.name})")
    digests = fetch_wheels(others, cache / WHEEL_CACHE, target)
    wheels = dest / "wheels"
    wheels.mkdir(parents=True)
    for pin in others:
        shutil.copyfile(cache / WHEEL_CACHE / pin.filename, wheels / pin.filename)
    shutil.copyfile(project_wheel, wheels / own.filename)
    digests[own.filename] = sha256_file(project_wheel)
    pins = sorted([own, *others], key=lambda p: p.name)
    lock = render_lock(target, [(p.spec, digests[p.filename]) for p in pins])
    (wheels / LOCK).write_text(lock)

    progress("controller: the Ansible tree and install.sh")
    tree = _copy_tree(project_root, dest / "ansible")
    here = Path(__file__).parent
    shutil.copyfile(here / "install_controller.sh", dest / INSTALL_SCRIPT)
    (dest / INSTALL_SCRIPT).chmod(0o755)
    # The stdlib checker itself (plugins/module_utils; deepseek_node.bundle.manifest is its alias).
    shutil.copyfile(Path(manifest_module.__file__), dest / CHECKER)
    (dest / CHECKER).chmod(0o755)
    cid = controller_id(lock, tree)
    host = bundle_target(suite, arch)
    (dest / ENV_FILE).write_text(render_env(env_values(host, APT_PACKAGES, cid, key)))
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    return {
        "path": CONTROLLER_DIR,
        "install": f"{CONTROLLER_DIR}/{INSTALL_SCRIPT}",
        "id": cid,
        "target": host,
        "apt_packages": list(APT_PACKAGES),
        "debs": len(debs),
        "requirement": requirement(),
        "lock": f"{CONTROLLER_DIR}/wheels/{LOCK}",
        "wheels": len(pins),
        "pins": [p.spec for p in pins],
        "tree": list(TREE),
        "size": size,
    }
