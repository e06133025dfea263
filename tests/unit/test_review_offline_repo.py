"""offline_repo on this machine (connection local) with every path it writes pointed into a temporary directory:
the verifier runs under the interpreter Ansible discovered, pip's site-wide file keeps the site's settings, and
exclusive apt mode keeps the sources an operator names."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from deepseek_node.bundle.manifest import write_manifest
from deepseek_node.paths import project_root
from tests.gpu.test_review_gpu_roles import failure, result, run_playbook

ROOT = project_root()
SITE_PIP = "[global]\ntimeout = 60\nindex-url = https://pypi.corp.example/simple\n\n[install]\ntrusted-host = pypi.corp.example\n"


def _role_copy(tmp: Path) -> Path:
    """The real role in the collection's layout (it runs plugins/module_utils/bundle_manifest.py), with its
    apt-cache refresh replaced: this machine's apt is not the one under test."""
    sources = (ROOT / "roles/offline_repo/tasks/sources.yml").read_text()
    assert "__offline_repo_apt_dir" in sources and "/etc/apt" not in sources, (
        "offline_repo writes to /etc/apt directly: running it here would change this machine's apt sources"
    )
    roles = tmp / "roles"
    shutil.copytree(ROOT / "roles/offline_repo", roles / "offline_repo")
    shutil.copytree(ROOT / "roles/check_preview", roles / "check_preview")
    shutil.copytree(ROOT / "plugins/module_utils", tmp / "plugins/module_utils")
    (roles / "offline_repo/handlers/main.yml").write_text(
        yaml.safe_dump(
            [{"name": "Refresh the apt cache", "ansible.builtin.debug": {"msg": "apt cache refreshed"}}]
        )
    )
    return roles


def _bundle(tmp: Path) -> Path:
    bundle = tmp / "bundle"
    for rel, text in {
        "apt/Packages": "",
        "wheels/x-1.0-py3-none-any.whl": "w",
        "keys/archive.asc": "k",
    }.items():
        (bundle / rel).parent.mkdir(parents=True, exist_ok=True)
        (bundle / rel).write_text(text)
    write_manifest(bundle, {"apt": {"key": "keys/archive.asc"}})
    return bundle


def _apt(tmp: Path) -> Path:
    apt = tmp / "etc-apt"
    (apt / "sources.list.d").mkdir(parents=True)
    (tmp / "keyrings").mkdir()
    (apt / "sources.list").write_text("deb http://deb.debian.org/debian bookworm main\n")
    (apt / "sources.list.d/site-mirror.sources").write_text(
        "Types: deb\nURIs: http://mirror.corp.example/debian\n"
    )
    (apt / "sources.list.d/internal.list").write_text("deb http://apt.corp.example/internal bookworm main\n")
    (apt / "sources.list.d/other.list").write_text(
        "# deb http://apt.corp.example/internal bookworm main\ndeb http://elsewhere.example/debian bookworm main\n"
    )
    return apt


def _play(tmp: Path, bundle: Path, apt: Path, keep: object) -> list:
    return [
        {
            "name": "Publish the bundle as playbooks/offline_repo.yml does",
            "hosts": "all",
            "gather_facts": False,
            "tasks": [
                {
                    "name": "Publish",
                    "ansible.builtin.include_role": {"name": "offline_repo"},
                    "vars": {
                        "deepseek_bundle_dir": str(bundle),
                        "offline_repo_dest": str(tmp / "dest"),
                        "offline_repo_tool_dir": str(tmp / "tool"),
                        "offline_repo_keyring": str(tmp / "keyrings/offline.asc"),
                        "offline_repo_pip_conf": str(tmp / "pip.conf"),
                        "offline_repo_keep_apt_sources": keep,
                        "__offline_repo_apt_dir": str(apt),
                    },
                }
            ],
        }
    ]


def _path_without_pyenv() -> str:
    # Interpreter discovery takes the first python3.x on PATH; pyenv's shims for versions not selected fail.
    return os.pathsep.join(p for p in os.environ.get("PATH", "").split(os.pathsep) if ".pyenv" not in p)


def test_publish_with_discovered_python_pip_backup_and_kept_sources(tmp_path: Path) -> None:
    roles = _role_copy(tmp_path)
    bundle, apt = _bundle(tmp_path), _apt(tmp_path)
    (tmp_path / "pip.conf").write_text(SITE_PIP)
    keep = ["site-mirror.sources", "http://apt.corp.example/internal"]
    hosts = {"node": {"ansible_python_interpreter": "auto_silent"}}
    ran = run_playbook(
        tmp_path, _play(tmp_path, bundle, apt, keep), hosts, roles_path=roles, path=_path_without_pyenv()
    )["node"]
    assert failure(ran) is None, failure(ran)

    # The verifier ran under a real interpreter, not under the name of the discovery mode.
    check = result(ran, "Check whether the target already holds this bundle intact")
    assert check["cmd"][0] != "auto_silent" and Path(check["cmd"][0]).is_file(), check["cmd"]
    assert result(ran, "Verify the published bundle on the target")["rc"] == 0

    # pip: our two settings in the site-wide file, the site's own kept, the file before the change backed up.
    pip = (tmp_path / "pip.conf").read_text()
    assert "timeout = 60" in pip and "trusted-host = pypi.corp.example" in pip
    assert "no-index = true" in pip and f"find-links = {tmp_path}/dest/wheels" in pip
    backups = [p for p in tmp_path.iterdir() if p.name.startswith("pip.conf.")]
    # (one backup per edited setting: the oldest holds the file as the site had it)
    oldest = min(backups, key=lambda b: b.stat().st_mtime_ns) if backups else None
    assert oldest is not None and any(b.read_text() == SITE_PIP for b in backups), oldest

    # apt: the bundle plus what the operator kept (by file name, by URI); everything else disabled.
    left = sorted(p.name for p in (apt / "sources.list.d").iterdir())
    assert left == [
        "deepseek-node-offline.sources",
        "internal.list",
        "other.list.disabled-by-deepseek-node",
        "site-mirror.sources",
    ]
    assert not (apt / "sources.list").exists() and (apt / "sources.list.disabled-by-deepseek-node").exists()


@pytest.mark.parametrize(
    ("keep", "says"),
    [
        ({"site": "mirror"}, "offline_repo_keep_apt_sources"),
        (["/etc/apt/sources.list.d/site.list"], "by its file name"),
    ],
)
def test_bad_kept_sources_fail_before_any_change(tmp_path: Path, keep: object, says: str) -> None:
    roles = _role_copy(tmp_path)
    bundle, apt = _bundle(tmp_path), _apt(tmp_path)
    ran = run_playbook(tmp_path, _play(tmp_path, bundle, apt, keep), {"node": {}}, roles_path=roles)["node"]
    error = failure(ran)
    assert error and says in error, error
    assert not (tmp_path / "dest").exists() and (apt / "sources.list").exists()


def test_check_predicts_the_transfer_and_a_new_bundle_prunes_what_it_no_longer_lists(tmp_path: Path) -> None:
    """--check says what a transfer would copy and remove without copying or hashing file by file; the
    real run removes what the previous bundle left, in one step, and then nothing more."""
    roles = _role_copy(tmp_path)
    bundle, apt = _bundle(tmp_path), _apt(tmp_path)
    keep = ["site-mirror.sources"]

    def go(check: bool = False) -> list:
        ran = run_playbook(
            tmp_path, _play(tmp_path, bundle, apt, keep), {"node": {}}, check=check, roles_path=roles
        )
        assert failure(ran["node"]) is None, failure(ran["node"])
        return ran["node"]

    first = go(check=True)  # a host with nothing yet
    assert (
        "would copy all 3 files"
        in result(first, "Predict the transfer of the apt repository, wheelhouse and keys")["msg"]
    )
    assert not (tmp_path / "dest" / "wheels").exists()
    go()
    # A new bundle: one wheel replaced by another.
    (bundle / "wheels/x-1.0-py3-none-any.whl").unlink()
    (bundle / "wheels/y-2.0-py3-none-any.whl").write_text("y")
    write_manifest(bundle, {"apt": {"key": "keys/archive.asc"}})
    preview = go(check=True)
    said = result(preview, "Predict the transfer of the apt repository, wheelhouse and keys")
    assert said["changed"] and "would copy 1 missing and 0 altered files and remove 1" in said["msg"], said
    assert (tmp_path / "dest/wheels/x-1.0-py3-none-any.whl").exists()  # --check changed nothing
    applied = go()
    pruned = result(applied, "Remove files that are not in this bundle")
    assert pruned["changed"] and not (tmp_path / "dest/wheels/x-1.0-py3-none-any.whl").exists()
    assert (tmp_path / "dest/wheels/y-2.0-py3-none-any.whl").read_text() == "y"
