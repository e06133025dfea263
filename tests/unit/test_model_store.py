"""The versioned model store module (plugins/modules/deepseek_model_store.py) and the bundle's version id."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepseek_node.bundle.build import check_model_version, model_version_default
from deepseek_node.bundle.manifest import BundleError

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location(
    "deepseek_model_store", REPO / "plugins" / "modules" / "deepseek_model_store.py"
)
store = importlib.util.module_from_spec(_spec)
assert _spec.loader is not None
_spec.loader.exec_module(store)


def _version(root: Path, name: str, digest: str | None = "d", mtime: float | None = None) -> Path:
    d = root / name
    d.mkdir(parents=True)
    (d / "config.json").write_text("{}")
    if digest is not None:
        (d / ".verified").write_text(digest + "\n")
    if mtime is not None:
        os.utime(d, (mtime, mtime))
    return d


def _run(root: Path, state: str, check: bool = False, **kw: object) -> dict:
    return store.run({"root": str(root), "state": state, "keep": 3, **kw}, check)


def test_switch_is_a_relative_link_and_records_history(tmp_path: Path) -> None:
    _version(tmp_path, "v1", "d1")
    r = _run(tmp_path, "current", version="v1", digest="d1")
    assert r["changed"] and r["current"] == "v1" and r["previous"] is None
    assert os.readlink(tmp_path / "current") == "v1"
    assert _run(tmp_path, "current", version="v1", digest="d1")["changed"] is False
    _version(tmp_path, "v2", "d2")
    r = _run(tmp_path, "current", version="v2", digest="d2")
    assert r["changed"] and r["previous"] == "v1"
    assert (tmp_path / ".history").read_text().split() == ["v1", "v2"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".current")]  # no temp link left


def test_switch_refuses_an_unverified_or_different_version(tmp_path: Path) -> None:
    _version(tmp_path, "v1", None)
    with pytest.raises(store.StoreError, match="not verified"):
        _run(tmp_path, "current", version="v1", digest="d1")
    _version(tmp_path, "v2", "other")
    with pytest.raises(store.StoreError, match="not verified"):
        _run(tmp_path, "current", version="v2", digest="d2")
    assert not (tmp_path / "current").exists()
    # A --check preview of a version not transferred yet predicts the switch instead of failing.
    assert _run(tmp_path, "current", check=True, version="v9", digest="d9")["changed"]


def test_check_mode_changes_nothing(tmp_path: Path) -> None:
    _version(tmp_path, "v1")
    assert _run(tmp_path, "current", check=True, version="v1")["changed"]
    assert not (tmp_path / "current").exists()


def test_rollback_goes_to_the_previously_active_version_and_back(tmp_path: Path) -> None:
    for v in ("a", "b", "c"):
        _version(tmp_path, v)
        _run(tmp_path, "current", version=v)
    r = _run(tmp_path, "rollback")
    assert (r["changed"], r["current"], r["previous"]) == (True, "b", "c")
    # The version rolled away from is now the previous one: a second rollback undoes the first.
    assert _run(tmp_path, "rollback")["current"] == "c"
    assert _run(tmp_path, "rollback", version="a")["current"] == "a"
    assert os.readlink(tmp_path / "current") == "a"


def test_rollback_without_a_previous_version_fails_and_changes_nothing(tmp_path: Path) -> None:
    _version(tmp_path, "a")
    _run(tmp_path, "current", version="a")
    before = (tmp_path / ".history").read_text()
    with pytest.raises(store.StoreError, match=r"no previous version of .* is kept.*nothing was changed"):
        _run(tmp_path, "rollback")
    with pytest.raises(store.StoreError, match=r"version zz .* is not kept.*\(kept: a\)"):
        _run(tmp_path, "rollback", version="zz")
    assert os.readlink(tmp_path / "current") == "a"
    assert (tmp_path / ".history").read_text() == before


def test_rollback_skips_a_previous_version_that_was_pruned_or_is_unverified(tmp_path: Path) -> None:
    for v in ("a", "b", "c"):
        _version(tmp_path, v)
        _run(tmp_path, "current", version=v)
    (tmp_path / "b" / ".verified").unlink()
    assert _run(tmp_path, "rollback")["current"] == "a"


def test_prune_keeps_n_most_recent_and_never_current_or_previous(tmp_path: Path) -> None:
    for i, v in enumerate(("a", "b", "c", "d")):
        _version(tmp_path, v, mtime=1000 + i)
        _run(tmp_path, "current", version=v)
    _version(tmp_path, "stray", None, mtime=5000)  # an interrupted transfer, never activated
    _run(tmp_path, "rollback", version="a")  # current a, previous d
    r = _run(tmp_path, "pruned", keep=3)
    assert r["pruned"] == ["b", "stray"]
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "a",
        "c",
        "current",
        "d",
    ]
    assert _run(tmp_path, "pruned", keep=3)["changed"] is False
    assert store.plan_prune(["x", "y", "z"], "z", "y", 2) == ["x"]
    with pytest.raises(store.StoreError, match="keep at least 2"):
        store.plan_prune(["x"], "x", None, 1)


def test_adopt_moves_an_in_place_model_dir_without_copying(tmp_path: Path) -> None:
    root = tmp_path / "deepseek-tiny"
    root.mkdir()
    (root / "config.json").write_text("{}")
    (root / "model.safetensors").write_bytes(b"w" * 10)
    inode = (root / "model.safetensors").stat().st_ino
    r = _run(root, "adopted", version="v1")
    assert r["changed"]
    assert (root / "v1" / "model.safetensors").stat().st_ino == inode  # moved, not copied
    assert sorted(p.name for p in root.iterdir()) == ["v1"]
    assert _run(root, "adopted", version="v1")["changed"] is False  # a store is left alone


@pytest.mark.parametrize("bad", ["current", "../x", "a/b", "", ".hidden", "x" * 65])
def test_bad_versions_are_refused(tmp_path: Path, bad: str) -> None:
    with pytest.raises(store.StoreError, match="invalid"):
        store.check_version(bad)
    with pytest.raises(BundleError, match="--model-version"):
        check_model_version(bad)


def test_default_version_is_the_same_in_the_bundle_builder_and_the_role(tmp_path: Path) -> None:
    files = {
        "models/m/config.json": {"size": 2, "sha256": "a" * 64},
        "models/m/w.safetensors": {"size": 9, "sha256": "b" * 64},
        "apt/x.deb": {"size": 1, "sha256": "c" * 64},
    }
    python_side = model_version_default(files, "models/m")
    changed = {**files, "models/m/config.json": {"size": 2, "sha256": "d" * 64}}
    assert model_version_default(changed, "models/m") != python_side
    assert (
        model_version_default({**files, "apt/x.deb": {"size": 5, "sha256": "e" * 64}}, "models/m")
        == python_side
    )
    # The role's Jinja expression (tasks/model.yml) on the same entries.
    expr = "{{ (model_files | items2dict | to_json(sort_keys=True) | hash('sha256'))[:12] }}"
    entries = [{"key": k, "value": v} for k, v in files.items() if k.startswith("models/m/")]
    (tmp_path / "vars.json").write_text(json.dumps({"model_files": entries}))
    out = subprocess.run(
        [
            str(Path(sys.executable).with_name("ansible")),
            "localhost",
            "-c",
            "local",
            "-m",
            "ansible.builtin.debug",
            "-a",
            f"msg={expr}",
            "-e",
            f"@{tmp_path / 'vars.json'}",
            "-o",
        ],
        capture_output=True,
        text=True,
        check=True,
        env={
            **os.environ,
            "ANSIBLE_LOCALHOST_WARNING": "False",
            "ANSIBLE_INVENTORY_UNPARSED_WARNING": "False",
        },
    ).stdout
    assert python_side in out, out


def test_served_name_of_a_store_path_is_the_models_name(tmp_path: Path) -> None:
    from deepseek_node.daemon.runtime import default_served_name

    root = tmp_path / "deepseek-tiny"
    _version(root, "3f2a9c01b7de")
    (root / "current").symlink_to("3f2a9c01b7de")
    assert default_served_name(root / "current") == "deepseek-tiny"
    assert default_served_name(root / "3f2a9c01b7de") == "deepseek-tiny"
    _version(root, "old")  # an older kept version is just a directory
    assert default_served_name(root / "old") == "old"
    plain = tmp_path / "plain-model"
    plain.mkdir()
    assert default_served_name(plain) == "plain-model"


def test_rollback_cli_refuses_a_bad_version_before_running_anything(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from deepseek_node.cli.main import app

    r = CliRunner().invoke(app, ["model", "rollback", "-i", str(tmp_path), "--to", "current"])
    assert r.exit_code == 2 and "--to 'current' is not a model version" in r.output
    assert not (tmp_path / "artifacts").exists()
