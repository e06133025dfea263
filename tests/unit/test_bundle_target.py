"""A bundle says which hosts it is for; a host of another release, architecture or Python is refused."""

from __future__ import annotations

import pytest

from deepseek_node.bundle.target import bundle_target, target_mismatch


def _facts(dist: str = "Debian", version: str = "12.8", major: str = "12", arch: str = "x86_64", py=(3, 11)):
    return {
        "distribution": dist,
        "distribution_version": version,
        "distribution_major_version": major,
        "architecture": arch,
        "python": {"version": {"major": py[0], "minor": py[1]}},
    }


BOOKWORM = {"target": bundle_target("bookworm", "amd64")}


def test_the_release_the_bundle_was_built_for_fits() -> None:
    assert target_mismatch(BOOKWORM, _facts()) == ""
    assert (
        target_mismatch(
            {"target": bundle_target("trixie", "amd64")}, _facts("Debian", "13.1", "13", py=(3, 13))
        )
        == ""
    )
    assert (
        target_mismatch(
            {"target": bundle_target("noble", "amd64")}, _facts("Ubuntu", "24.04", "24", py=(3, 12))
        )
        == ""
    )


def test_a_debian_13_host_is_refused_naming_both_releases() -> None:
    why = target_mismatch(BOOKWORM, _facts("Debian", "13.1", "13", py=(3, 13)))
    assert "Debian 12 (amd64, Python 3.11)" in why and "Debian 13.1 (amd64, Python 3.13)" in why
    assert "release, Python differ" in why and "--suite trixie" in why


@pytest.mark.parametrize(
    ("facts", "differs"),
    [
        (_facts("Ubuntu", "22.04", "22", py=(3, 10)), "distribution, release, Python"),
        (_facts(arch="aarch64"), "architecture"),
        (_facts(py=(3, 12)), "Python"),
    ],
)
def test_each_difference_is_named(facts: dict, differs: str) -> None:
    assert f"({differs} differ)" in target_mismatch(BOOKWORM, facts)


def test_an_older_bundle_is_read_from_its_apt_suite() -> None:
    old = {"apt": {"suite": "bookworm", "arch": "amd64"}}
    assert target_mismatch(old, _facts()) == ""
    assert "Debian 13" in target_mismatch(old, _facts("Debian", "13", "13", py=(3, 13)))


def test_unknown_suite_is_refused_by_the_cli() -> None:
    from typer.testing import CliRunner

    from deepseek_node.cli.main import app

    result = CliRunner().invoke(app, ["bundle", "build", "--out", "/tmp/x", "--tiny-model", "--suite", "sid"])
    assert result.exit_code != 0
    assert "--suite 'sid'" in result.output and "bookworm" in result.output


@pytest.mark.parametrize(
    ("suite", "release", "python"), [("jammy", "22.04", "3.10"), ("noble", "24.04", "3.12")]
)
def test_an_ubuntu_bundle_records_ubuntu_its_release_and_python(
    suite: str, release: str, python: str
) -> None:
    assert bundle_target(suite, "amd64") == {
        "distribution": "Ubuntu", "release": release, "suite": suite, "arch": "amd64", "python": python,
    }  # fmt: skip
    major = release.split(".")[0]
    py = tuple(map(int, python.split(".")))
    assert (
        target_mismatch({"target": bundle_target(suite, "amd64")}, _facts("Ubuntu", release, major, py=py))
        == ""
    )


def test_a_debian_bundle_is_refused_on_ubuntu_naming_both() -> None:
    why = target_mismatch(BOOKWORM, _facts("Ubuntu", "24.04", "24", py=(3, 12)))
    assert "the bundle is for Debian 12 (amd64, Python 3.11)" in why
    assert "this host runs Ubuntu 24.04 (amd64, Python 3.12)" in why
    assert "(distribution, release, Python differ)" in why and "--suite noble" in why


def test_an_ubuntu_bundle_is_refused_on_another_release() -> None:
    noble = {"target": bundle_target("noble", "amd64")}
    why = target_mismatch(noble, _facts("Ubuntu", "22.04", "22", py=(3, 10)))
    assert "Ubuntu 24.04 (amd64, Python 3.12)" in why and "Ubuntu 22.04 (amd64, Python 3.10)" in why
    assert "(release, Python differ)" in why and "--suite jammy" in why
    why = target_mismatch(noble, _facts())
    assert "this host runs Debian 12.8" in why and "--suite bookworm" in why
