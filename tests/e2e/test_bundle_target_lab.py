"""A bundle built for another release is refused by preflight before any change, naming both."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from deepseek_node.bundle.target import bundle_target
from deepseek_node.runner import RunConfig, run

pytestmark = pytest.mark.lab


def test_a_bundle_for_another_release_is_refused_before_any_change(
    site: dict, lab, bundle_dir: Path, tmp_path: Path
) -> None:
    other = tmp_path / "trixie-bundle"
    shutil.copytree(bundle_dir, other)
    manifest = json.loads((other / "manifest.json").read_text())
    manifest["target"] = bundle_target("trixie", "amd64")
    (other / "manifest.json").write_text(json.dumps(manifest))
    bare = site["hosts"][1].name
    result = run(
        RunConfig(
            inventory=lab.inventory_path,
            limit=bare,
            extravars={"deepseek_bundle_dir": str(other)},
            artifacts_dir=site["inventory_dir"] / "runs",
        )
    )
    assert not result.ok
    why = next(f for f in result.failures if "the bundle is for" in f)
    assert "Debian 13 (amd64, Python 3.13)" in why and "Debian 12" in why and "--suite bookworm" in why
    probe = lab.run(bare, "test -e /srv/deepseek-node || echo clean")
    assert "clean" in probe.stdout
