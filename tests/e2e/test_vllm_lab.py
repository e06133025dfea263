"""vLLM behind the gateway on a real lab target, from the bundle alone: the engine's virtualenv from the
bundle's locked wheelhouse, its own hardened unit on loopback, the gateway in front with TLS and keys;
then the same host switched to the builtin engine. Slow: the wheelhouse is ~0.9 GB and vLLM takes minutes
to start on two shared cores."""

from __future__ import annotations

import json
import shutil
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from deepseek_node.demo import chat, endpoint_for, write_lab_group_vars
from deepseek_node.runner import RunConfig, RunResult, run

pytestmark = [pytest.mark.lab, pytest.mark.slow]

# vLLM's first start compiles its CPU kernels' graphs: allow for it on a loaded 2-core machine.
READY_TIMEOUT_S = 1500


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


def _run(lab, host: str, bundle: Path, inventory_dir: Path, **extra: object) -> RunResult:
    return run(
        RunConfig(
            inventory=lab.inventory_path,
            limit=host,
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
    """The second lab host (left bare by test_site.py) converged with the vLLM bundle."""
    hosts = lab.up(count=2)
    host = hosts[1]
    inventory_dir = lab.inventory_path.parent
    write_lab_group_vars(inventory_dir, vllm_bundle)
    first = _run(lab, host.name, vllm_bundle, inventory_dir)
    return {"host": host, "inventory_dir": inventory_dir, "first": first, "bundle": vllm_bundle}


def _ok(result: RunResult) -> None:
    assert result.ok, "site.yml failed:\n" + "\n".join(result.failures)


def test_vllm_serves_behind_the_gateway(served: dict, lab) -> None:
    _ok(served["first"])
    name = served["host"].name
    assert lab.run(name, "systemctl is-active deepseek-node-engine deepseek-node").stdout.split() == [
        "active",
        "active",
    ]
    ep = endpoint_for(served["host"].address, served["inventory_dir"])
    assert chat(ep, "Hello, how are you today?", max_tokens=8).strip()
    assert chat(ep, "Write a short poem about the sea.", stream=True, max_tokens=8).strip()
    ctx = ssl.create_default_context(cafile=str(ep.ca_cert))
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(ep.base_url + "/models", context=ctx, timeout=30)
    assert err.value.code == 401
    req = urllib.request.Request(
        ep.base_url.removesuffix("/v1") + "/metrics", headers={"Authorization": f"Bearer {ep.api_key}"}
    )
    metrics = urllib.request.urlopen(req, context=ctx, timeout=30).read().decode()
    assert "vllm:num_requests_running" in metrics and "deepseek_node:" in metrics
    ready = urllib.request.Request(
        ep.base_url.removesuffix("/v1") + "/health/ready", headers={"Authorization": f"Bearer {ep.api_key}"}
    )
    assert json.loads(urllib.request.urlopen(ready, context=ctx, timeout=30).read())["backend"] == "vllm"


def test_engine_runs_unprivileged_on_loopback_without_its_key_in_argv(served: dict, lab) -> None:
    _ok(served["first"])
    name = served["host"].name
    ps = lab.run(name, "ps -eo user:20,args --no-headers | grep '[v]llm.entrypoints'").stdout
    assert ps and all(line.split()[0] == "deepseek" for line in ps.splitlines())
    key = lab.run(name, "sed -n 's/^VLLM_API_KEY=//p' /etc/deepseek-node/engine.env").stdout.strip()
    assert len(key) >= 32 and key not in ps
    assert lab.run(name, "stat -c '%a %U' /etc/deepseek-node/engine.env").stdout.split() == ["600", "root"]
    listen = lab.run(name, "ss -ltnH 'sport = :8000'").stdout
    assert "127.0.0.1:8000" in listen and "0.0.0.0:8000" not in listen
    for unit in ("deepseek-node-engine", "deepseek-node"):  # systemd's own score, with both serving
        out = lab.run(name, f"systemd-analyze security --no-pager {unit}", check=False).stdout
        score = float(out.rsplit("Overall exposure level for", 1)[1].split(":")[1].split()[0])
        print(f"{unit}: exposure {score}")
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


def test_second_run_changes_nothing(served: dict, lab) -> None:
    _ok(served["first"])
    again = _run(lab, served["host"].name, served["bundle"], served["inventory_dir"])
    _ok(again)
    assert again.hosts[served["host"].name].changed == 0, again.failures


def test_the_same_host_switches_to_the_builtin_engine(served: dict, lab) -> None:
    _ok(served["first"])
    name = served["host"].name
    result = _run(lab, name, served["bundle"], served["inventory_dir"], deepseek_engine="builtin")
    _ok(result)
    assert lab.run(name, "systemctl is-active deepseek-node").stdout.strip() == "active"
    assert (
        lab.run(name, "test -e /etc/systemd/system/deepseek-node-engine.service || echo gone").stdout.strip()
        == "gone"
    )
    ep = endpoint_for(served["host"].address, served["inventory_dir"])
    assert chat(ep, "Hello again", max_tokens=8).strip()
