"""The repository as the Ansible collection deepseek.node: its metadata, self-contained content, the shared
target-side Python, and the built tarball installed and used on its own (no checkout, no ansible.cfg)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from pathlib import Path

import pytest
import yaml

from deepseek_node.bundle.collection import CONTENT, find_installed, unexpected_content
from tests.conftest import REPO

GALAXY = yaml.safe_load((REPO / "galaxy.yml").read_text())
BIN = Path(sys.executable).parent
ROLES = sorted(p.name for p in (REPO / "roles").iterdir() if p.is_dir())
# Collections the roles and playbooks name, other than ansible.builtin and this one.
USED = sorted(
    {
        m.group(1)
        for path in [*(REPO / "roles").rglob("*"), *(REPO / "playbooks").rglob("*")]
        if path.is_file() and path.suffix in (".yml", ".j2")
        for m in re.finditer(r"\b((?:community|ansible)\.[a-z_]+)\.[a-z0-9_]+", path.read_text())
        if m.group(1) != "ansible.builtin"
    }
)


def test_metadata_follows_the_project() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert GALAXY["version"] == pyproject["version"]
    assert GALAXY["license"] == [pyproject["license"]["text"]]
    # Namespace and name: lowercase letters, digits and underscores, not starting with a digit or _.
    for part in (GALAXY["namespace"], GALAXY["name"]):
        assert re.fullmatch(r"[a-z][a-z0-9_]*", part) and "__" not in part
    assert (REPO / GALAXY["readme"]).is_file()
    runtime = yaml.safe_load((REPO / "meta/runtime.yml").read_text())
    core = [r for r in pyproject["optional-dependencies"]["controller"] if r.startswith("ansible-core")]
    assert runtime["requires_ansible"] == ">=2.19.0,<2.20.0" and core == ["ansible-core>=2.19,<2.20"]


def test_dependencies_are_what_the_roles_use_pinned_to_the_installed_ansible_package() -> None:
    deps = GALAXY["dependencies"]
    assert sorted(deps) == USED
    for fqcn, pin in deps.items():
        installed = find_installed(fqcn, [Path(p) for p in sys.path if p])
        assert installed, f"{fqcn} is not installed beside ansible-core"
        have = json.loads((installed / "MANIFEST.json").read_text())["collection_info"]["version"]
        assert pin == f"=={have}", f"galaxy.yml pins {fqcn} {pin}; the ansible package carries {have}"


def test_content_has_no_links() -> None:
    """Roles and plugins are self-contained: nothing links into the Python package or anywhere else."""
    for top in ("roles", "plugins", "playbooks", "meta"):
        links = [str(p.relative_to(REPO)) for p in (REPO / top).rglob("*") if p.is_symlink()]
        assert not links, links


def test_roles_carry_no_plugins() -> None:
    """A role in a collection loads no plugins of its own (Ansible adds role plugin dirs for legacy roles
    only): they live in plugins/."""
    for role in ROLES:
        dirs = [p.name for p in (REPO / "roles" / role).iterdir() if p.name.endswith(("_plugins", "library"))]
        assert not dirs, f"{role}: {dirs}"


def test_checkout_sees_itself_as_the_collection() -> None:
    """ansible.cfg's collections_path holds collections/ansible_collections/deepseek/node, made of links to
    the content at the root: deepseek.node.* names resolve from a checkout as from an installed collection."""
    cfg = (REPO / "ansible.cfg").read_text()
    assert re.search(r"^collections_path = collections:", cfg, re.M)
    view = REPO / "collections/ansible_collections" / GALAXY["namespace"] / GALAXY["name"]
    entries = {p.name for p in view.iterdir()}
    assert entries == {"galaxy.yml", "meta", "plugins", "playbooks", "roles"}
    for name in entries:
        assert (view / name).is_symlink() and (view / name).resolve() == REPO / name


def test_project_tree_holds_only_collection_content_or_ignored_paths() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert unexpected_content({t.split("/")[0] for t in tracked}, GALAXY) == []
    assert {"roles", "plugins", "playbooks", "meta"} <= CONTENT


# The collection's own filters, which a collection role can only reach by FQCN.
FILTERS = sorted(
    {
        name
        for path in (REPO / "plugins/filter").glob("*.py")
        for name in re.findall(r'"(\w+)": \w+', path.read_text().split("def filters(self)")[-1])
    }
)
SHORT_FILTER = re.compile(r"\|\s*(" + "|".join(FILTERS) + r")\b")


@pytest.mark.parametrize("role", ROLES)
def test_roles_name_collection_filters_by_fqcn(role: str) -> None:
    short = [
        f"{p.relative_to(REPO)}: {m.group(1)}"
        for p in sorted((REPO / "roles" / role).rglob("*"))
        if p.is_file() and p.suffix in (".yml", ".j2")
        for m in SHORT_FILTER.finditer(p.read_text())
    ]
    assert not short, short


def test_playbooks_name_collection_filters_by_fqcn() -> None:
    short = [
        f"{p.relative_to(REPO)}: {m.group(1)}"
        for p in sorted((REPO / "playbooks").glob("*.yml"))
        for m in SHORT_FILTER.finditer(p.read_text())
    ]
    assert not short, short


ROLE_PATH = re.compile(r"\{\{ role_path \}\}(/[\w./-]+)")


@pytest.mark.parametrize("role", ROLES)
def test_paths_from_role_path_exist(role: str) -> None:
    """Files a role reaches through role_path are there, in the checkout as in the collection (same layout)."""
    base = REPO / "roles" / role
    missing = [
        f"{p.relative_to(REPO)}: {m.group(1)}"
        for p in sorted(base.rglob("*.yml"))
        for m in ROLE_PATH.finditer(p.read_text())
        if not (base / m.group(1).lstrip("/")).exists()
    ]
    assert not missing, missing


def test_shared_python_is_one_file_one_module() -> None:
    from deepseek_node.bundle import BundleError, manifest
    from deepseek_node.gpu import probe

    assert Path(probe.__file__) == REPO / "plugins/module_utils/gpu_probe.py"
    assert Path(manifest.__file__) == REPO / "plugins/module_utils/bundle_manifest.py"
    assert (
        sys.modules["deepseek_node.gpu.probe"]
        is probe
        is sys.modules["deepseek_node._module_utils.gpu_probe"]
    )
    assert manifest.BundleError is BundleError


def test_daemon_templates_are_the_roles_own() -> None:
    from deepseek_node.paths import templates_dir

    assert templates_dir() == REPO / "roles/inference_daemon/templates"
    for name in ("daemon.yaml.j2", "deepseek-node.service.j2", "devices.j2"):
        assert (templates_dir() / name).is_file() and not (templates_dir() / name).is_symlink()


@pytest.mark.slow
def test_wheel_carries_the_shared_python(tmp_path: Path) -> None:
    """A wheel built from the tree holds plugins/module_utils as deepseek_node._module_utils, and the old
    import paths work from it alone."""
    src = tmp_path / "src"
    src.mkdir()
    # What the wheel is built from, as the working tree has it.
    tracked = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    wanted = [
        rel
        for rel in tracked
        if rel.startswith(("deepseek_node/", "plugins/module_utils/"))
        or rel in ("setup.py", "pyproject.toml", "README.md")
    ]
    for rel in wanted:
        if (REPO / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            (src / rel).write_bytes((REPO / rel).read_bytes())
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "w"), str(src)],
        check=True, capture_output=True,
    )  # fmt: skip
    [wheel] = (tmp_path / "w").glob("*.whl")
    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    for name in ("gpu_probe.py", "bundle_manifest.py"):
        assert (unpacked / "deepseek_node/_module_utils" / name).read_bytes() == (
            REPO / "plugins/module_utils" / name
        ).read_bytes()
    code = (
        f"import sys; sys.path.insert(0, {str(unpacked)!r}); "
        "import deepseek_node.gpu.probe as p, deepseek_node.bundle.manifest as m; print(p.__file__, m.__file__)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert out.stdout.split() == [
        str(unpacked / "deepseek_node/_module_utils/gpu_probe.py"),
        str(unpacked / "deepseek_node/_module_utils/bundle_manifest.py"),
    ]


# --- the built collection, installed and used on its own ----------------------------------------------------


def _ansible(tool: str, args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / tool), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, str]]:
    """(tarball, work dir, env): the collection built from the tree and installed into a temp collections
    path; env points Ansible at that path and at a configuration of its own, not the checkout's."""
    tmp = tmp_path_factory.mktemp("collection")
    cfg = tmp / "ansible.cfg"
    cfg.write_text(f"[defaults]\ncollections_path = {tmp / 'collections'}\n")
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(cfg),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_INVENTORY_UNPARSED_WARNING": "false",
        "PATH": str(BIN) + os.pathsep + os.environ.get("PATH", ""),
    }
    built = _ansible(
        "ansible-galaxy", ["collection", "build", "--output-path", str(tmp), str(REPO)], env, tmp
    )
    assert built.returncode == 0, built.stdout + built.stderr
    [tarball] = tmp.glob("deepseek-node-*.tar.gz")
    done = _ansible(
        "ansible-galaxy",
        ["collection", "install", "--offline", "-p", str(tmp / "collections"), str(tarball)],
        env,
        tmp,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return tarball, tmp, env


@pytest.mark.slow
def test_tarball_holds_the_collection_content_only(installed: tuple[Path, Path, dict[str, str]]) -> None:
    tarball, _, _ = installed
    with tarfile.open(tarball) as tar:
        members = tar.getmembers()
    top = {m.name.split("/")[0] for m in members}
    assert top == {"MANIFEST.json", "FILES.json", "COLLECTION.md", "meta", "plugins", "playbooks", "roles"}
    assert not [m.name for m in members if m.issym() or m.islnk()]
    names = {m.name for m in members}
    assert {
        "plugins/module_utils/gpu_probe.py",
        "plugins/module_utils/bundle_manifest.py",
        "plugins/modules/deepseek_preflight_facts.py",
        "plugins/action/deepseek_luks_escrow.py",
        "plugins/filter/firewall_net.py",
        "playbooks/site.yml",
        "roles/inference_daemon/templates/daemon.yaml.j2",
    } <= names
    assert {f"roles/{r}/README.md" for r in ROLES} <= names


@pytest.mark.slow
def test_installed_roles_and_playbooks_pass_syntax_check(
    installed: tuple[Path, Path, dict[str, str]],
) -> None:
    _, tmp, env = installed
    play = tmp / "uses_roles.yml"
    play.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "Every role of the collection",
                    "hosts": "all",
                    "gather_facts": False,
                    "roles": [{"role": f"deepseek.node.{r}"} for r in ROLES],
                },
                {
                    "name": "The collection's playbook",
                    "ansible.builtin.import_playbook": "deepseek.node.site",
                },
            ],
            sort_keys=False,
        )
    )
    for target in (str(play), "deepseek.node.site", "deepseek.node.model_rollback"):
        out = _ansible("ansible-playbook", ["--syntax-check", "-i", "localhost,", target], env, tmp)
        assert out.returncode == 0, f"{target}:\n{out.stdout}{out.stderr}"


@pytest.mark.slow
def test_installed_modules_and_roles_are_documented(installed: tuple[Path, Path, dict[str, str]]) -> None:
    _, tmp, env = installed
    for kind, name in (
        ("module", "deepseek.node.deepseek_model_store"),
        ("module", "deepseek.node.deepseek_preflight_facts"),
        ("role", "deepseek.node.inference_daemon"),
    ):
        out = _ansible("ansible-doc", ["-t", kind, name], env, tmp)
        assert out.returncode == 0 and name in out.stdout, out.stdout + out.stderr


@pytest.mark.slow
def test_installed_plugins_run(installed: tuple[Path, Path, dict[str, str]]) -> None:
    """Modules reach their module_utils, and a collection role its filters, from the installed collection."""
    _, tmp, env = installed
    (tmp / "hw/models").mkdir(parents=True, exist_ok=True)
    play = tmp / "run.yml"
    play.write_text(
        yaml.safe_dump(
            [
                {
                    "name": "The collection's plugins",
                    "hosts": "localhost",
                    "gather_facts": False,
                    "tasks": [
                        {
                            "name": "Probe an empty hardware tree",
                            "deepseek.node.deepseek_preflight_facts": {
                                "hw_root": str(tmp / "hw"),
                                "models_dir": str(tmp / "hw/models"),
                            },
                            "register": "probe",
                        },
                        {
                            "name": "Read a model store",
                            "deepseek.node.deepseek_model_store": {"root": str(tmp / "hw/models/m")},
                            "register": "store",
                        },
                        {
                            "name": "Check the firewall inputs through the role (its filters, by FQCN)",
                            "ansible.builtin.include_role": {
                                "name": "deepseek.node.firewall",
                                "tasks_from": "validate",
                            },
                        },
                        {
                            "name": "Check what they returned",
                            "ansible.builtin.assert": {
                                "that": [
                                    "probe.facts.pci.gpus == []",
                                    "store.current is none",
                                    "'550.54.14-1' | deepseek.node.deepseek_upstream_version == '550.54.14'",
                                ]
                            },
                        },
                    ],
                }
            ],
            sort_keys=False,
        )
    )
    extra = json.dumps({"ansible_python_interpreter": sys.executable})
    out = _ansible("ansible-playbook", ["-i", "localhost,", "-c", "local", "-e", extra, str(play)], env, tmp)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert "ok=" in out.stdout and "failed=0" in out.stdout
