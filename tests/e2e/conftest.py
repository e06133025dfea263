"""The converged lab host every end-to-end test file shares: site.yml runs once per session."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepseek_node.demo import write_lab_group_vars
from deepseek_node.runner import RunConfig, run


@pytest.fixture(scope="session")
def site(lab, bundle_dir: Path) -> dict:
    """site.yml converged once on the first lab host (the second host stays bare for negative tests).

    Tests that change the converged host put it back as site.yml leaves it: later files rely on it."""
    hosts = lab.up(count=2)
    inventory_dir = lab.inventory_path.parent
    write_lab_group_vars(inventory_dir, bundle_dir)
    first = run(
        RunConfig(inventory=lab.inventory_path, limit=hosts[0].name, artifacts_dir=inventory_dir / "runs")
    )
    return {"hosts": hosts, "inventory_dir": inventory_dir, "first": first}
