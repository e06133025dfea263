"""The lab's Debian release: validation, a rootfs cache per release, air-gapped apt sources, one release per
lab, and `provision lab up --suite`. Pure or on temp dirs: no root, no network."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepseek_node.cli.main import app
from deepseek_node.lab import Lab, LabError
from deepseek_node.lab.core import suite_conflict
from deepseek_node.lab.rootfs import (
    DEFAULT_SUITE,
    SUITES,
    air_gap_apt_sources,
    cache_key,
    describe,
    rootfs_path,
    validate_suite,
)


def test_the_lab_boots_debian_12_by_default_and_13_on_request() -> None:
    assert DEFAULT_SUITE == "bookworm"
    assert SUITES == {"bookworm": "Debian 12", "trixie": "Debian 13"}
    for suite in SUITES:
        validate_suite(suite)
    assert describe("trixie") == "Debian 13 (trixie)"


@pytest.mark.parametrize("suite", ["sid", "Trixie", "", "noble", "bookworm "])
def test_an_unknown_suite_is_refused_naming_the_choices(suite: str) -> None:
    with pytest.raises(ValueError, match=r"choose bookworm \(Debian 12\), trixie \(Debian 13\)") as err:
        validate_suite(suite)
    assert repr(suite) in str(err.value)
    with pytest.raises(ValueError, match="choose bookworm"):
        Lab(suite=suite)
    with pytest.raises(ValueError, match="choose bookworm"):
        cache_key(suite)


def test_each_release_has_its_own_rootfs_cache(tmp_path: Path) -> None:
    assert cache_key() == cache_key("bookworm")
    assert cache_key("trixie") != cache_key("bookworm")
    assert rootfs_path(tmp_path) == rootfs_path(tmp_path, "bookworm")
    assert rootfs_path(tmp_path, "trixie").name == f"rootfs-trixie-{cache_key('trixie')}"
    assert rootfs_path(tmp_path, "trixie") != rootfs_path(tmp_path)


def test_apt_sources_of_both_formats_are_removed(tmp_path: Path) -> None:
    apt = tmp_path / "etc/apt"
    parts = apt / "sources.list.d"
    parts.mkdir(parents=True)
    (apt / "sources.list").write_text("deb http://deb.debian.org/debian bookworm main\n")
    # Debian 13 writes its sources in deb822 form.
    (parts / "debian.sources").write_text(
        "Types: deb\nURIs: http://deb.debian.org/debian\nSuites: trixie\nComponents: main\n"
    )
    (parts / "extra.list").write_text("deb http://example.org/debian trixie main\n")
    (parts / "notes.txt").write_text("not a source\n")
    air_gap_apt_sources(tmp_path)
    active = [line for line in (apt / "sources.list").read_text().splitlines() if not line.startswith("#")]
    assert active == []
    assert sorted(p.name for p in parts.iterdir()) == ["notes.txt"]
    air_gap_apt_sources(tmp_path)  # idempotent


def test_apt_sources_air_gap_without_a_sources_list_d(tmp_path: Path) -> None:
    air_gap_apt_sources(tmp_path)
    assert (tmp_path / "etc/apt/sources.list").read_text().startswith("#")


def _lab_with_host(tmp_path: Path, suite: str, recorded: str | None) -> Lab:
    lab = Lab(state_dir=tmp_path / "state", inventory_dir=tmp_path / "inv", prefix="dsnq", suite=suite)
    (lab.state_dir / "hosts" / "dsnq1").mkdir(parents=True)
    if recorded is not None:
        lab.suite_path.write_text(recorded + "\n")
    return lab


def test_one_lab_runs_one_release(tmp_path: Path) -> None:
    lab = _lab_with_host(tmp_path, "bookworm", "trixie")
    assert lab.running_suite() == "trixie"
    with pytest.raises(LabError) as err:
        lab._check_suite()
    message = str(err.value)
    assert "dsnq1" in message and "Debian 13 (trixie)" in message and "not Debian 12 (bookworm)" in message
    assert "provision lab down" in message and "--suite trixie" in message
    Lab(state_dir=lab.state_dir, prefix="dsnq", suite="trixie")._check_suite()


def test_hosts_from_before_the_release_was_recorded_run_debian_12(tmp_path: Path) -> None:
    lab = _lab_with_host(tmp_path, "trixie", None)
    assert lab.running_suite() == "bookworm"
    with pytest.raises(LabError, match="run Debian 12"):
        lab._check_suite()


def test_a_lab_without_hosts_may_boot_any_release(tmp_path: Path) -> None:
    lab = Lab(state_dir=tmp_path / "state", prefix="dsnq", suite="trixie")
    lab.state_dir.mkdir()
    lab.suite_path.write_text("bookworm\n")  # left by hosts that are gone
    assert lab.running_suite() is None
    lab._check_suite()


def test_suite_conflict_names_both_releases_and_the_fixes() -> None:
    text = suite_conflict("bookworm", "trixie", ["dsn1", "dsn2"])
    assert text.startswith("this lab's hosts (dsn1, dsn2) run Debian 12 (bookworm), not Debian 13 (trixie)")
    assert "`provision lab down`" in text and "`provision lab up --suite bookworm`" in text


def test_lab_up_refuses_an_unknown_suite_before_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DEEPSEEK_NODE_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("DEEPSEEK_NODE_CACHE", str(tmp_path / "cache"))
    result = CliRunner().invoke(app, ["lab", "up", "--suite", "sid"])
    text = " ".join(result.output.split())
    assert result.exit_code == 2, result.output
    assert "Traceback" not in result.output
    assert "error: --suite: lab suite 'sid'" in text
    assert "choose bookworm (Debian 12), trixie (Debian 13)" in text
    assert list(tmp_path.iterdir()) == []


def test_lab_up_help_names_the_releases() -> None:
    result = CliRunner().invoke(app, ["lab", "up", "--help"], env={"COLUMNS": "300"})
    text = " ".join(result.output.split())
    assert result.exit_code == 0
    assert "--suite" in text and "trixie (Debian 13)" in text
