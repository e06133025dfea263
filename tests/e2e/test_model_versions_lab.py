"""The versioned model store on a converged lab host: adoption of an in-place model dir, a rollback to a
version the host does not keep refused, and a re-run with the session bundle that changes nothing and reads
no weights. (A new version rolled in and rolled back across several hosts: test_fleet_roll_lab.py.)"""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from deepseek_node.bundle.build import model_version_default
from deepseek_node.bundle.manifest import sha256_file
from deepseek_node.demo import chat, endpoint_for
from deepseek_node.runner import RunConfig, RunResult, run

pytestmark = [pytest.mark.lab, pytest.mark.slow]

MODELS = "/var/lib/deepseek-node/models"
SYNC_TASK = "Transfer and verify the model version"
READ_TASKS = (
    "Checksum the version's files that are already on the host",
    "Copy model files that are missing or differ from the bundle",
)


def _assert_ok(result: RunResult) -> None:
    assert result.ok, "run failed:\n" + "\n".join(result.failures)


def _run(site: dict, lab, playbook: str = "site.yml", **kw: Any) -> tuple[RunResult, list[dict]]:
    events: list[dict] = []
    result = run(
        RunConfig(
            inventory=lab.inventory_path,
            playbook=playbook,
            limit=site["hosts"][0].name,
            artifacts_dir=site["inventory_dir"] / "runs",
            **kw,
        ),
        on_event=events.append,
    )
    return result, events


def _task_events(events: list[dict], task: str) -> set[str]:
    return {e["event"] for e in events if (e.get("event_data") or {}).get("task") == task}


def _sh(lab, host: str, cmd: str) -> str:
    return lab.run(host, cmd).stdout.strip()


def _second_bundle(session_bundle: Path, dest: Path) -> tuple[Path, str]:
    """The session bundle (hard links: no copy) with one model file changed, as a new model version."""
    subprocess.run(["cp", "-al", str(session_bundle), str(dest)], check=True)
    manifest = json.loads((dest / "manifest.json").read_text())
    rel = f"{manifest['model']['path']}/figures/README.md"
    for path in (dest / rel, dest / "manifest.json"):
        path.unlink()  # never write through a hard link into the session bundle
    (dest / rel).write_text("nested checkpoint file, revised\n")
    os.chmod(dest / rel, 0o644)
    manifest["files"][rel] = {"size": (dest / rel).stat().st_size, "sha256": sha256_file(dest / rel)}
    manifest["model"]["version"] = model_version_default(manifest["files"], manifest["model"]["path"])
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return dest, manifest["model"]["version"]


def test_model_versions_adopt_refuse_and_rerun_without_reading(site: dict, lab, bundle_dir: Path) -> None:
    _assert_ok(site["first"])
    host = site["hosts"][0].name
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    name, v1 = manifest["model"]["name"], manifest["model"]["version"]
    store = f"{MODELS}/{name}"
    ep = endpoint_for(site["hosts"][0].address, site["inventory_dir"])

    # site.yml put the model at <name>/<version>/ behind `current`; the daemon loads `current` and serves
    # the model's name (not "current", not the version).
    assert _sh(lab, host, f"readlink {store}/current") == v1
    assert set(_sh(lab, host, f"ls -A {store}").split()) == {".history", "current", v1}
    assert f'"{store}/current"' in _sh(lab, host, "grep -A1 '^model:' /etc/deepseek-node/daemon.yaml")
    assert re.fullmatch(r"[0-9a-f]{64}", _sh(lab, host, f"cat {store}/{v1}/.verified"))

    # An earlier release's layout (the model synced in place, no marker) is adopted by moving it.
    _sh(
        lab,
        host,
        f"set -e; mv {store}/{v1} {MODELS}/.old; rm -rf {store}; mv {MODELS}/.old {store}; rm {store}/.verified",
    )
    inode = _sh(lab, host, f"stat -c %i {store}/model.safetensors")
    adopted, events = _run(site, lab, tags=["inference"])
    _assert_ok(adopted)
    assert _sh(lab, host, f"stat -c %i {store}/{v1}/model.safetensors") == inode  # moved, not copied
    assert _sh(lab, host, f"readlink {store}/current") == v1
    copy_events = _task_events(events, READ_TASKS[1])
    assert "runner_item_on_ok" not in copy_events, "adoption copied files the host already had"
    assert chat(ep, "Hello", max_tokens=4).strip()

    # Naming a version the host does not keep fails and changes nothing.
    bad, _ = _run(
        site,
        lab,
        playbook="playbooks/model_rollback.yml",
        extravars={"inference_daemon_model_rollback_to": "nope"},
    )
    assert not bad.ok and any("not kept on this host" in f for f in bad.failures), bad.failures
    assert _sh(lab, host, f"readlink {store}/current") == v1

    # A re-run with the session bundle: the model's marker matches it, so the run transfers and reads no
    # weights.
    again, events = _run(site, lab, tags=["inference"])
    _assert_ok(again)
    assert "runner_on_skipped" in _task_events(events, SYNC_TASK)
    for task in READ_TASKS:
        assert not _task_events(events, task), f"{task} ran on a no-change re-run"
    assert _sh(lab, host, f"readlink {store}/current") == v1
