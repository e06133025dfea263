"""Bundle manifest: every kind of damage is reported by name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from deepseek_node.bundle import manifest as m


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    (tmp_path / "apt").mkdir()
    (tmp_path / "apt" / "a.deb").write_bytes(b"deb")
    (tmp_path / "wheels").mkdir()
    (tmp_path / "wheels" / "x.whl").write_bytes(b"wheel")
    (tmp_path / "models" / "tiny").mkdir(parents=True)
    (tmp_path / "models" / "tiny" / "config.json").write_text("{}")
    m.write_manifest(tmp_path, {"model": {"name": "tiny"}})
    return tmp_path


def test_clean_bundle_verifies(bundle: Path) -> None:
    report = m.verify_bundle(bundle)
    assert report.ok and report.checked == 3
    assert "3 files match" in report.summary()


def test_missing_extra_and_altered_files_are_named(bundle: Path) -> None:
    (bundle / "apt" / "a.deb").unlink()
    (bundle / "wheels" / "x.whl").write_bytes(b"wheeL")  # same size, other content
    (bundle / "wheels" / "evil.whl").write_bytes(b"!")
    report = m.verify_bundle(bundle)
    assert report.missing == ["apt/a.deb"]
    assert report.altered == ["wheels/x.whl"]
    assert report.extra == ["wheels/evil.whl"]
    text = report.summary()
    assert "nothing may be installed" in text and "wheels/evil.whl" in text


def test_subset_limits_the_check(bundle: Path) -> None:
    (bundle / "models" / "tiny" / "config.json").unlink()
    assert m.verify_bundle(bundle, ("apt/", "wheels/")).ok
    assert not m.verify_bundle(bundle).ok


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        ("{not json", "not valid JSON"),
        (json.dumps({"format": 99, "files": {}}), "format-1"),
        (json.dumps({"format": 1, "files": {"../etc/passwd": {"size": 1, "sha256": "x"}}}), "malformed"),
        (json.dumps({"format": 1, "files": {"a": {"size": "1", "sha256": "x"}}}), "malformed"),
    ],
)
def test_corrupt_manifest_is_a_clear_error(bundle: Path, content: str, needle: str) -> None:
    (bundle / m.MANIFEST).write_text(content)
    with pytest.raises(m.BundleError, match=needle):
        m.verify_bundle(bundle)


def test_not_a_bundle(tmp_path: Path) -> None:
    with pytest.raises(m.BundleError, match="missing"):
        m.verify_bundle(tmp_path)
    with pytest.raises(m.BundleError, match="not a directory"):
        m.verify_bundle(tmp_path / "nope")


def test_standalone_script_runs_with_stdlib_only(bundle: Path) -> None:
    """The role runs this file with the target's system python3, outside the package."""
    script = Path(m.__file__)
    ok = subprocess.run(
        [sys.executable, "-I", str(script), "verify", str(bundle)], capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    (bundle / "apt" / "a.deb").write_bytes(b"tampered")
    bad = subprocess.run(
        [sys.executable, "-I", str(script), "verify", str(bundle), "--subset=apt/"],
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 1 and "apt/a.deb" in bad.stderr


def test_report_lists_are_sorted_whatever_the_walk_order(bundle: Path) -> None:
    """Reports are compared across runs and hosts: every list is in path order, not directory order."""
    for name in ("z.whl", "b.whl", "m.whl"):
        (bundle / "wheels" / name).write_bytes(b"!")
    (bundle / "apt" / "b.deb").write_bytes(b"deb")
    (bundle / "apt" / "a.deb").write_bytes(b"DEB")
    (bundle / "wheels" / "x.whl").unlink()
    (bundle / "models" / "tiny" / "config.json").write_text("[]")
    (bundle / "apt" / "link.deb").symlink_to("a.deb")
    m.write_manifest(bundle / "wheels", {})  # a stray manifest below the root is just another extra file
    report = m.verify_bundle(bundle)
    assert report.missing == ["wheels/x.whl"]
    assert report.altered == ["apt/a.deb", "models/tiny/config.json"]
    assert report.extra == [
        "apt/b.deb",
        "wheels/b.whl",
        "wheels/m.whl",
        "wheels/manifest.json",
        "wheels/z.whl",
    ]
    assert report.unsafe == ["apt/link.deb"]
    assert report.problems() == m.verify_bundle(bundle).problems()


def _script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-I", m.__file__, *args], capture_output=True, text=True, check=False
    )


def test_prune_removes_only_unlisted_entries_under_the_subsets(bundle: Path) -> None:
    (bundle / "wheels" / "old.whl").write_bytes(b"old")
    (bundle / "wheels" / "sub").mkdir()
    (bundle / "wheels" / "sub" / "older.whl").write_bytes(b"older")
    (bundle / "wheels" / "link").symlink_to("/etc")  # a symlinked directory: unlinked, never followed
    (bundle / "models" / "tiny" / "notes.txt").write_text("the operator's")  # outside the subsets: kept
    out = _script("prune", str(bundle), "--subset=apt/", "--subset=wheels/")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"removed": ["wheels/link", "wheels/old.whl", "wheels/sub/older.whl"]}
    assert (bundle / "models" / "tiny" / "notes.txt").exists()
    assert m.verify_bundle(bundle, ("apt/", "wheels/")).ok
    again = _script("prune", str(bundle), "--subset=apt/", "--subset=wheels/")
    assert json.loads(again.stdout) == {"removed": []}


def test_prune_refuses_the_whole_tree(bundle: Path) -> None:
    out = _script("prune", str(bundle))
    assert out.returncode == 2 and "needs at least one --subset" in out.stderr
    assert (bundle / "apt" / "a.deb").exists()


def test_verify_json_lists_what_a_transfer_would_change(bundle: Path) -> None:
    (bundle / "apt" / "a.deb").unlink()
    (bundle / "wheels" / "evil.whl").write_bytes(b"!")
    out = _script("verify", str(bundle), "--subset=apt/", "--subset=wheels/", "--json")
    assert out.returncode == 1
    report = json.loads(out.stdout)
    assert (report["ok"], report["missing"], report["extra"]) == (False, ["apt/a.deb"], ["wheels/evil.whl"])
    assert "FAILED verification" in out.stderr


def test_verify_against_a_manifest_on_stdin(bundle: Path) -> None:
    """What --check compares a target's older bundle with: the controller's newer manifest."""
    newer = json.loads((bundle / "manifest.json").read_text())
    newer["files"]["wheels/y.whl"] = {"size": 1, "sha256": "0" * 64}
    out = subprocess.run(
        [sys.executable, "-I", m.__file__, "verify", str(bundle), "--json", "--manifest-stdin"],
        input=json.dumps(newer), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert out.returncode == 1 and json.loads(out.stdout)["missing"] == ["wheels/y.whl"]
    bad = subprocess.run(
        [sys.executable, "-I", m.__file__, "verify", str(bundle), "--manifest-stdin"],
        input="{", capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "the manifest on stdin is not valid JSON" in bad.stderr
