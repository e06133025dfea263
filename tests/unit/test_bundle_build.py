"""Bundle building: the package list's single source, input checks, and the CLI's errors."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepseek_node.bundle.build import BundleSpec, _check_model_dir, build_bundle, role_apt_packages
from deepseek_node.bundle.manifest import BundleError
from deepseek_node.cli.main import app
from deepseek_node.paths import project_root

runner = CliRunner()


def test_apt_packages_come_from_role_defaults() -> None:
    packages = role_apt_packages(project_root())
    assert "python3-venv" in packages["inference_daemon"]
    assert "python3-cryptography" in packages["tls"]
    assert "inference_daemon" not in role_apt_packages(project_root(), ("inference_daemon",))


def test_skipping_an_unknown_role_is_an_error() -> None:
    with pytest.raises(BundleError, match="unknown role"):
        role_apt_packages(project_root(), ("no_such_role",))


def test_model_dir_must_look_like_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"config\.json"):
        _check_model_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BundleError, match="safetensors"):
        _check_model_dir(tmp_path)


def test_refuses_to_overwrite_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "w.safetensors").write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    spec = BundleSpec(
        out=out, project_root=project_root(), model_dir=model, model_name="m", cache=tmp_path / "c"
    )
    with pytest.raises(BundleError, match="not a bundle"):
        build_bundle(spec, progress=lambda _m: None)
    assert (out / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["bundle", "build", "--out", "/tmp/x"], "exactly one of --model-dir"),
        (["bundle", "build", "--out", "/tmp/x", "--tiny-model", "--model-dir", "/tmp"], "exactly one of"),
        (
            ["bundle", "build", "--out", "/tmp/x", "--model-dir", "/tmp", "--model-name", "bad name!"],
            "invalid",
        ),
    ],
)
def test_bundle_build_flag_errors(args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert needle in result.output


def test_bundle_verify_reports_by_name(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bundle", "verify", str(tmp_path)])
    assert result.exit_code == 2 and "manifest.json" in result.output


def test_run_rejects_a_missing_inventory(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "-i", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output
