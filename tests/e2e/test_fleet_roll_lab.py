"""A fleet of three lab targets: a model version rolled across all three with the second host made to fail
its gate. The roll stops there; the host not touched and the one already done keep answering throughout (a
client polls every host during the roll); `provision model rollback --to` brings every host back to the
first version, which each kept beside the new one. (benchmarks/fleet_rerun.py times no-change re-runs on
one host and on several.)

Runs after the other end-to-end files (tests/conftest.py orders it last): it converges every host as
site.yml leaves a node, whatever earlier files made of them (a serving group's worker, other bundles)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from deepseek_node.demo import chat, endpoint_for, write_lab_group_vars
from deepseek_node.runner import RunConfig, RunResult, run
from tests.e2e.test_model_versions_lab import _second_bundle

pytestmark = [pytest.mark.lab, pytest.mark.slow]

FLEET = 3
MODELS = "/var/lib/deepseek-node/models"
READY_TIMEOUT_S = 30
# The failing node: its daemon unit starts a process that never listens, so /health/ready never answers.
BROKEN_DROP_IN = "/etc/systemd/system/deepseek-node.service.d/zz-broken.conf"


def _run(lab, inventory_dir: Path, limit: str, playbook: str = "site.yml", **kw: Any) -> RunResult:
    return run(
        RunConfig(
            inventory=lab.inventory_path,
            playbook=playbook,
            limit=limit,
            artifacts_dir=inventory_dir / "runs",
            **kw,
        )
    )


def _ok(result: RunResult) -> None:
    assert result.ok, "run failed:\n" + "\n".join(result.failures)


class Poller:
    """One thread per host sending chat completions back to back; every failure kept with its time."""

    def __init__(self, endpoints: dict[str, Any]) -> None:
        self.endpoints = endpoints
        self.ok: dict[str, int] = dict.fromkeys(endpoints, 0)
        self.failures: dict[str, list[float]] = {h: [] for h in endpoints}
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._poll, args=(h,), daemon=True) for h in endpoints]

    def _poll(self, host: str) -> None:
        while not self._stop.is_set():
            try:
                chat(self.endpoints[host], "Hello", max_tokens=2)
                self.ok[host] += 1
            except Exception:  # any failed request counts
                self.failures[host].append(time.monotonic())
                time.sleep(0.5)

    def __enter__(self) -> Poller:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=150)


@pytest.fixture(scope="module")
def fleet(site: dict, lab, bundle_dir: Path) -> dict:
    """Three hosts converged by site.yml with the session bundle (earlier files left hosts with other
    bundles, group vars and settings: all are put back here)."""
    hosts = lab.up(count=FLEET)
    inventory_dir = site["inventory_dir"]
    write_lab_group_vars(inventory_dir, bundle_dir)
    names = [h.name for h in hosts]
    # Every host, the first too: files before this one (GPU, TLS, firewall tests) may have left it changed.
    first = _run(lab, inventory_dir, ",".join(names), extravars={"deepseek_serial": ["100%"]})
    return {"hosts": hosts, "names": names, "inventory_dir": inventory_dir, "first": first}


def test_a_roll_stops_at_a_node_failing_its_gate_and_rollback_restores(
    fleet: dict, lab, bundle_dir: Path, tmp_path: Path
) -> None:
    _ok(fleet["first"])
    hosts, names, inventory_dir = fleet["hosts"], fleet["names"], fleet["inventory_dir"]
    manifest = json.loads((bundle_dir / "manifest.json").read_text())
    store = f"{MODELS}/{manifest['model']['name']}"
    v1 = manifest["model"]["version"]
    bundle2, v2 = _second_bundle(bundle_dir, tmp_path / "bundle2")

    def current(name: str) -> str:
        return lab.run(name, f"readlink {store}/current").stdout.strip()

    # test_vllm_lab.py left hosts 2 and 3 a vLLM serving group; out of it, with a bundle that carries no vLLM
    # build, each now serves alone with the builtin engine: the group's engine units are retired.
    gone = "test -e /etc/systemd/system/deepseek-node-engine.service || echo gone"
    assert [lab.run(n, gone).stdout.strip() for n in names] == ["gone"] * FLEET

    assert [current(n) for n in names] == [v1] * FLEET
    broken = names[1]
    lab.run(
        broken,
        f"mkdir -p {Path(BROKEN_DROP_IN).parent} && printf '[Service]\\nExecStart=\\nExecStart=/bin/sleep infinity\\n'"
        f" > {BROKEN_DROP_IN} && systemctl daemon-reload",
    )
    endpoints = {h.name: endpoint_for(h.address, inventory_dir) for h in hosts}
    events: list[dict] = []
    # When each host's last task of the inference play ended (after it, the host has passed its gate).
    inference_done: dict[str, float] = {}

    def on_event(event: dict) -> None:
        data = event.get("event_data") or {}
        if data.get("host") and data.get("play") == "Inference daemon":
            inference_done[data["host"]] = time.monotonic()
        events.append(event)

    with Poller(endpoints) as poller:
        time.sleep(2)
        rolled = run(
            RunConfig(
                inventory=lab.inventory_path,
                limit=",".join(names),
                tags=["inference"],
                artifacts_dir=inventory_dir / "runs",
                extravars={
                    "deepseek_bundle_dir": str(bundle2),
                    "deepseek_serial": [1, "25%"],
                    "inference_daemon_ready_timeout_s": READY_TIMEOUT_S,
                },
            ),
            on_event=on_event,
        )
        time.sleep(2)

    # The roll failed at the broken node and went no further.
    assert not rolled.ok
    assert any(broken in f for f in rolled.failures), rolled.failures
    assert current(names[0]) == v2, "the first batch should have rolled in"
    # The new version sits beside the first, which stays verified for a rollback.
    assert (
        lab.run(names[0], f"cat {store}/{v2}/figures/README.md").stdout.strip()
        == "nested checkpoint file, revised"
    )
    assert lab.run(names[0], f"test -f {store}/{v1}/.verified && echo kept").stdout.strip() == "kept"
    for untouched in names[2:]:
        assert current(untouched) == v1
        assert untouched not in inference_done, f"{untouched} was changed after the roll should have stopped"
    # Hosts not being changed answered every request; the first host only failed while it was changed.
    for untouched in names[2:]:
        assert poller.failures[untouched] == [], (
            f"{untouched}: {len(poller.failures[untouched])} failed requests"
        )
        assert poller.ok[untouched] > 0
    after_gate = [t for t in poller.failures[names[0]] if t > inference_done[names[0]]]
    assert after_gate == [], f"{names[0]} failed {len(after_gate)} requests after passing its gate"
    assert poller.ok[names[0]] > 0

    # The operator fixes the node, then returns the fleet to the first version.
    lab.run(broken, f"rm -f {BROKEN_DROP_IN} && systemctl daemon-reload")
    back = subprocess.run(
        [sys.executable, "-m", "deepseek_node.cli.main", "model", "rollback", "-i", str(lab.inventory_path),
         "--limit", ",".join(names), "--to", v1, "--artifacts-dir", str(inventory_dir / "runs")],
        capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert back.returncode == 0, back.stdout + back.stderr
    assert [current(n) for n in names] == [v1] * FLEET
    for name, ep in endpoints.items():
        assert chat(ep, "Hello", max_tokens=4).strip(), name
    # v2 stays kept beside v1 on the hosts it reached (for a roll forward again).
    assert lab.run(names[0], f"test -d {store}/{v2} && echo kept").stdout.strip() == "kept"
