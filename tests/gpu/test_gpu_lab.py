"""The GPU stack for real on a lab target with no route out: site.yml (preflight, offline repository, GPU stack)
installs it from the bundle, the reboot handler reboots the target and waits for it, and a second run changes
nothing. Then the default policy skips the stack with its message and `required` fails before any change.

What is real and what stands in (the lab has no GPU, no EFI firmware and no kernel modules):
- the driver is Debian's (nvidia-kernel-dkms, nvidia-smi, libcuda1, ... from non-free, with DKMS and the
  signing tools), fetched by the bundle builder from the nvidia_driver role's defaults;
- Fabric Manager, the container toolkit and the CUDA toolkit are stand-in .debs with the real names and layout
  (tests/fixtures/standin_debs.py): the first two only exist in NVIDIA's repositories, the third is ~1.5 GiB
  (its real closure is resolved by tests/gpu/test_bundle_packages.py instead);
- the host reads a recorded hardware tree (4 NVSwitches, Secure Boot on; preflight_hw_root) and installs as a
  golden image (deepseek_gpu_stack: always), since no GPU is present;
- mokutil is a stand-in on PATH (a container has no EFI variables); the signing itself is real: DKMS builds a
  module against Debian's kernel headers and signs it with the key the role generated.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from deepseek_node.demo import write_lab_group_vars
from deepseek_node.paths import cache_dir, project_root
from deepseek_node.runner import RunConfig, RunResult, run
from deepseek_node.tiny_model import tiny_model_cached
from tests.gpu.helpers import (
    FAKE_HW_ROOT,
    MOKUTIL_STATE,
    SIGNING_PROBE,
    build_gpu_test_bundle,
    dpkg_version,
    driver_version_in,
    fake_hardware_script,
    held,
    pid1_start,
    read_json,
    seed_bundle,
)

pytestmark = [pytest.mark.lab, pytest.mark.slow]

TAGS = ["preflight", "offline_repo", "gpu"]
GOLDEN = {
    "deepseek_gpu_stack": "always",
    "preflight_hw_root": FAKE_HW_ROOT,
    "nvidia_container_toolkit_runtimes": ["docker", "containerd"],
}
TIMINGS: dict[str, float] = {}


class Events:
    """Collects runner events: which tasks changed, and the messages of chosen tasks."""

    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []

    def __call__(self, event: dict[str, Any]) -> None:
        if event.get("event", "").startswith("runner_on_"):
            self.items.append(event)

    def ok(self, task: str) -> list[dict[str, Any]]:
        return [
            e["event_data"]
            for e in self.items
            if e["event"] == "runner_on_ok" and e["event_data"].get("task") == task
        ]

    def changed_tasks(self) -> list[str]:
        return [
            e["event_data"]["task"]
            for e in self.items
            if e["event"] == "runner_on_ok" and (e["event_data"].get("res") or {}).get("changed")
        ]


def _run(lab, name: str, tmp: Path, extravars: dict, tags: list[str], label: str) -> tuple[RunResult, Events]:
    events = Events()
    started = time.monotonic()
    # A fresh ansible-runner data dir per run: runner keeps env/extravars and env/cmdline between runs there.
    result = run(
        RunConfig(
            inventory=lab.inventory_path,
            limit=name,
            tags=tags,
            extravars=extravars,
            artifacts_dir=tmp / f"runs-{label}",
        ),
        on_event=events,
    )
    TIMINGS[label] = time.monotonic() - started
    return result, events


def _assert_ok(result: RunResult) -> None:
    assert result.ok, "site.yml failed:\n" + "\n".join(result.failures)


@pytest.fixture(scope="module")
def gpu_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("gpu-bundle")
    started = time.monotonic()
    build_gpu_test_bundle(
        work / "bundle",
        project_root(),
        tiny_model_cached(cache_dir()),
        cache_dir() / "bundle",
        cache_dir() / "bundle" / "gnupg",
        work,
    )
    TIMINGS["bundle"] = time.monotonic() - started
    return work / "bundle"


@pytest.fixture(scope="module")
def converged(lab, gpu_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """site.yml (preflight, offline repository, GPU stack) once on the first lab host."""
    tmp = tmp_path_factory.mktemp("gpu-runs")
    name = lab.names()[0]
    inventory_dir = lab.inventory_path.parent
    write_lab_group_vars(inventory_dir, gpu_bundle)
    lab.run(name, fake_hardware_script(nvswitches=True, secure_boot=True))
    started = time.monotonic()
    seed_bundle(lab, name, gpu_bundle)
    TIMINGS["seed"] = time.monotonic() - started
    supervisor = {h.name: h.pid for h in lab.hosts()}[name]
    boot_before = pid1_start(lab, name)
    result, events = _run(lab, name, tmp, {"deepseek_bundle_dir": str(gpu_bundle), **GOLDEN}, TAGS, "first")
    return {
        "name": name,
        "tmp": tmp,
        "bundle": gpu_bundle,
        "inventory_dir": inventory_dir,
        "result": result,
        "events": events,
        "boot_before": boot_before,
        "boot_after": pid1_start(lab, name),
        "supervisor": supervisor,
        "driver": driver_version_in(gpu_bundle / "apt"),
    }


def test_site_installs_the_pinned_driver_from_the_bundle(converged: dict, lab) -> None:
    _assert_ok(converged["result"])
    assert converged["result"].changed > 0
    name, driver = converged["name"], converged["driver"]
    for pkg in ("nvidia-kernel-dkms", "nvidia-smi", "libcuda1", "libnvidia-ml1"):
        assert dpkg_version(lab, name, pkg).split("-")[0] == driver, pkg
        assert held(lab, name, pkg), f"{pkg} is not held"
    out = lab.run(
        name,
        "systemctl is-enabled nvidia-persistenced; cat /etc/modprobe.d/deepseek-node-blacklist-nouveau.conf",
    )
    assert out.stdout.startswith("enabled") and "blacklist nouveau" in out.stdout
    assert read_json(lab, name, "/etc/ansible/facts.d/deepseek_nvidia_driver.fact")["version"] == driver


def test_target_has_no_route_out_and_only_the_bundle_as_package_source(converged: dict, lab) -> None:
    out = lab.run(
        converged["name"],
        "ip route; grep -h '^[^#]' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true",
    ).stdout
    assert "default" not in out
    assert "deb.debian.org" not in out and "file:/srv/deepseek-node/bundle/apt" in out


def test_reboot_handler_rebooted_the_target_and_waited(converged: dict, lab) -> None:
    _assert_ok(converged["result"])
    name = converged["name"]
    reboots = converged["events"].ok("Reboot the host and wait for it to come back")
    assert [e["host"] for e in reboots] == [name]
    assert reboots[0]["res"]["rebooted"] is True
    # The guest's init is new (it rebooted) but the lab's supervisor of that host, on this controller, is the
    # same process: the controller was not rebooted, only the target.
    assert converged["boot_after"] != converged["boot_before"]
    assert {h.name: h.pid for h in lab.hosts()}[name] == converged["supervisor"]
    # Everything after the reboot ran on the returned host.
    assert converged["events"].ok("Install Fabric Manager pinned to the driver " + converged["driver"])


def test_nvswitch_detected_so_fabric_manager_matches_the_driver(converged: dict, lab) -> None:
    name, driver = converged["name"], converged["driver"]
    fact = read_json(lab, name, "/etc/ansible/facts.d/deepseek_preflight.fact")
    assert fact["nvswitch_count"] == 4 and fact["gpu_stack"]["fabric_manager"] is True
    assert dpkg_version(lab, name, "nvidia-fabricmanager-535").split("-")[0] == driver
    assert held(lab, name, "nvidia-fabricmanager-535")
    out = lab.run(name, "nv-fabricmanager --version; systemctl is-enabled nvidia-fabricmanager").stdout
    assert f"Fabric Manager version is : {driver}" in out and "enabled" in out


def test_secure_boot_key_generated_dkms_signs_and_enrolment_staged(converged: dict, lab) -> None:
    name = converged["name"]
    fact = read_json(lab, name, "/etc/ansible/facts.d/deepseek_preflight.fact")
    assert fact["secure_boot"] is True
    out = lab.run(
        name,
        "stat -c '%a %n' /var/lib/dkms/deepseek-node/mok.key /var/lib/dkms/deepseek-node/mok.der; "
        "cat /etc/dkms/framework.conf.d/deepseek-node-mok.conf; "
        "test -e /var/lib/dkms/deepseek-node/enrol.hash && echo hash-left || echo hash-removed",
    ).stdout
    assert "600 /var/lib/dkms/deepseek-node/mok.key" in out
    assert "mok_signing_key=/var/lib/dkms/deepseek-node/mok.key" in out
    assert "mok_certificate=/var/lib/dkms/deepseek-node/mok.der" in out
    assert "hash-removed" in out
    # Staged: mokutil --import of exactly this certificate, with a password hash.
    der = lab.run(name, "base64 -w0 /var/lib/dkms/deepseek-node/mok.der").stdout
    sha1 = hashlib.sha1(base64.b64decode(der)).hexdigest()
    assert f"{sha1}.der" in lab.run(name, f"ls {MOKUTIL_STATE}/new").stdout
    assert (
        "is already in the enrollment request"
        in lab.run(name, "mokutil --test-key /var/lib/dkms/deepseek-node/mok.der", check=False).stdout
    )
    # The one-time password stays on the controller, for the operator at the console.
    secret = converged["inventory_dir"] / "secrets" / "mok" / name
    assert secret.is_file() and oct(secret.stat().st_mode & 0o777) == "0o600"
    assert secret.read_text().strip() not in lab.run(name, "cat /etc/ansible/facts.d/*.fact").stdout
    # Modules DKMS builds are signed with that key (a real build against Debian's headers from the bundle).
    started = time.monotonic()
    probe = lab.run(name, SIGNING_PROBE, timeout=300)
    TIMINGS["signing probe"] = time.monotonic() - started
    signer = re.search(r"^signer=(.*)$", probe.stdout, re.M)
    assert signer and signer.group(1) == f"deepseek-node DKMS module signing key ({name})", probe.stdout
    assert "sig_hashalgo=sha256" in probe.stdout


def test_cuda_and_container_toolkit(converged: dict, lab) -> None:
    name = converged["name"]
    out = lab.run(name, "bash -lc 'echo $CUDA_HOME; nvcc --version'").stdout
    assert "/usr/lib/nvidia-cuda-toolkit" in out and "release 11.8" in out
    assert held(lab, name, "nvidia-cuda-toolkit") and held(lab, name, "nvidia-container-toolkit")
    docker = read_json(lab, name, "/etc/docker/daemon.json")
    assert docker["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert "nvidia-container-runtime" in lab.run(name, "cat /etc/containerd/config.toml").stdout
    skipped = converged["events"].ok("Report a skipped smoke test")
    assert skipped and "no GPU here" in skipped[0]["res"]["msg"]


def test_second_run_changes_nothing_and_does_not_reboot(converged: dict, lab) -> None:
    _assert_ok(converged["result"])
    name = converged["name"]
    extra = {"deepseek_bundle_dir": str(converged["bundle"]), **GOLDEN}
    again, events = _run(lab, name, converged["tmp"], extra, TAGS, "second")
    _assert_ok(again)
    assert again.changed == 0, f"second run changed: {events.changed_tasks()}"
    assert pid1_start(lab, name) == converged["boot_after"]


def test_default_policy_skips_the_stack_with_a_message(converged: dict, lab) -> None:
    """No GPU on the real /sys and the default policy: every GPU role says why it skips, nothing is installed."""
    name = converged["name"]
    extra = {"deepseek_bundle_dir": str(converged["bundle"])}
    result, events = _run(lab, name, converged["tmp"], extra, ["gpu"], "auto")
    _assert_ok(result)
    msgs = events.ok("Skip the NVIDIA driver where preflight decided against the GPU stack")
    assert msgs and "no NVIDIA GPU detected" in msgs[0]["res"]["msg"] and "skipped" in msgs[0]["res"]["msg"]
    for task in (
        "Skip Fabric Manager where there is no GPU stack or no NVSwitch",
        "Skip the CUDA toolkit where there is no GPU stack",
        "Skip the NVIDIA container toolkit where there is no GPU stack",
    ):
        assert events.ok(task), task
    # Only the remembered facts change (the policy and the hardware seen are different now).
    assert set(events.changed_tasks()) <= {
        "Remember the preflight facts (read back as ansible_local.deepseek_preflight)"
    }


def test_required_policy_fails_before_any_change(converged: dict, lab) -> None:
    name = converged["name"]
    extra = {"deepseek_bundle_dir": str(converged["bundle"]), "deepseek_gpu_stack": "required"}
    result, events = _run(lab, name, converged["tmp"], extra, ["gpu"], "required")
    assert not result.ok
    assert any(
        "Stop here when this host cannot take the GPU stack" in f and "'required'" in f
        for f in result.failures
    )
    assert events.changed_tasks() == []


def test_report_timings(converged: dict) -> None:
    """Not a check: prints where the GPU lab test spends its time (shown with -s or -rA)."""
    print("GPU lab timings: " + json.dumps({k: round(v, 1) for k, v in TIMINGS.items()}))
