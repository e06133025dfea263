"""The GPU roles' decisions that depend on the host's state, run by Ansible against this machine with stand-ins.

Each test runs ansible-playbook once (connection local), with the real role tasks and stand-in commands on PATH
(nvidia-smi, modinfo, modprobe, dkms) that answer from a per-host state directory: one inventory host per
situation. Nothing on this machine is changed: the package holds run under --check against packages this
machine does not have, and every path the roles would write is a temporary one.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from deepseek_node.paths import project_root

ROOT = project_root()
TARGET = "535.261.03"

# Answers from $STUB_DIR/<tool>.{out,err,rc}; every call is appended to $STUB_DIR/<tool>.log.
STUB = """#!@PYTHON@
import os, sys
tool = os.path.basename(sys.argv[0])
d = os.environ["STUB_DIR"]
with open(os.path.join(d, tool + ".log"), "a") as fh:
    fh.write(" ".join(sys.argv[1:]) + "\\n")
def read(ext, default=""):
    p = os.path.join(d, tool + "." + ext)
    return open(p).read() if os.path.exists(p) else default
sys.stdout.write(read("out"))
sys.stderr.write(read("err"))
sys.exit(int(read("rc", "0") or 0))
"""

# modinfo: a stand-in module file holds "field=value" lines; a module name answers from modinfo.<field>.
MODINFO = """#!@PYTHON@
import os, sys
d = os.environ["STUB_DIR"]
args = sys.argv[1:]
field, target = args[args.index("-F") + 1], args[-1]
if os.path.isfile(target):
    for line in open(target):
        key, _, value = line.rstrip("\\n").partition("=")
        if key == field:
            print(value)
    sys.exit(0)
p = os.path.join(d, "modinfo." + field)
if os.path.exists(p):
    print(open(p).read().strip())
    sys.exit(0)
print("modinfo: ERROR: Module " + target + " not found.", file=sys.stderr)
sys.exit(1)
"""


def _stub_bin(tmp: Path) -> Path:
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    for tool in ("nvidia-smi", "modprobe", "dkms"):
        (bin_dir / tool).write_text(STUB.replace("@PYTHON@", sys.executable))
    (bin_dir / "modinfo").write_text(MODINFO.replace("@PYTHON@", sys.executable))
    for p in bin_dir.iterdir():
        p.chmod(0o755)
    return bin_dir


def _state(tmp: Path, host: str, files: dict[str, str] | None = None) -> Path:
    d = tmp / "state" / host
    d.mkdir(parents=True)
    for name, text in (files or {}).items():
        (d / name).write_text(text)
    return d


def run_playbook(
    tmp: Path,
    plays: list,
    hosts: dict[str, dict],
    check: bool = False,
    roles_path: Path | None = None,
    path: str | None = None,
) -> dict[str, list[tuple[str, dict]]]:
    """Run plays against local inventory hosts; per host, the (task name, result) of every task that ran."""
    bin_dir = tmp / "bin" if (tmp / "bin").is_dir() else _stub_bin(tmp)
    for h in hosts.values():
        h.setdefault("ansible_connection", "local")
        h.setdefault("ansible_python_interpreter", sys.executable)
    inventory = tmp / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    playbook = tmp / "play.yml"
    playbook.write_text(yaml.safe_dump(plays, sort_keys=False))
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(roles_path or ROOT / "roles"),
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_FORCE_COLOR": "0",
        "PATH": os.pathsep.join(
            [str(bin_dir), str(Path(sys.executable).parent), path or os.environ.get("PATH", "")]
        ),
    }
    argv = [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(playbook)]
    proc = subprocess.run(
        argv + (["--check"] if check else []),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    try:
        out = json.loads(proc.stdout)
    except ValueError:
        pytest.fail(
            f"ansible-playbook printed no JSON (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
        )
    ran: dict[str, list[tuple[str, dict]]] = {h: [] for h in hosts}
    for play in out["plays"]:
        for task in play["tasks"]:
            for host, res in task["hosts"].items():
                ran[host].append((task["task"]["name"], {**res, "play": play["play"]["name"]}))
    return ran


def failure(results: list[tuple[str, dict]]) -> str | None:
    for name, res in results:
        if res.get("failed") and not res.get("ignore_errors"):
            return f"{name}: {res.get('msg', '')}"
    return None


def result(results: list[tuple[str, dict]], task: str) -> dict:
    found = [res for name, res in results if name.split(" : ", 1)[-1] == task]
    assert found, f"task '{task}' did not run: {[n for n, _ in results]}"
    return found[-1]


def copy_role(tmp: Path, role: str, tasks: list) -> Path:
    """A copy of the role whose tasks/main.yml runs only the given tasks (after its per-family vars)."""
    roles = tmp / "roles"
    shutil.copytree(ROOT / "roles" / role, roles / role)
    (roles / role / "tasks" / "main.yml").write_text(
        yaml.safe_dump(
            [{"name": "Load vars", "ansible.builtin.include_tasks": "vars.yml"}, *tasks], sort_keys=False
        )
    )
    shutil.copytree(ROOT / "roles" / "check_preview", roles / "check_preview", dirs_exist_ok=True)
    return roles


GPU_HOST = {
    "install": True,
    "policy": "auto",
    "golden_image": False,
    "gpu_count": 8,
    "secure_boot": False,
    "fabric_manager": True,
    "kernel": "6.1.0-37-amd64",
    "kernel_headers_package": "linux-headers-6.1.0-37-amd64",
    "reason": "8 NVIDIA GPU(s) detected",
}

# --- 1. --check holds only what is installed ------------------------------------------------------------------

HOLD_TASKS = {
    "nvidia_driver": "install-Debian.yml",
    "fabric_manager": "fabric_manager.yml",
    "cuda_toolkit": "toolkit.yml",
    "nvidia_container_toolkit": "toolkit.yml",
}


def test_check_mode_holds_only_packages_already_installed(tmp_path: Path) -> None:
    """--check on a host without the packages: the hold follows the install, so it is not checked for them
    (dpkg_selections fails on a package dpkg does not know). Where the install would change nothing, the hold
    is checked as usual: here it fails, since this machine has none of these packages."""
    plays = []
    for role, file in HOLD_TASKS.items():
        tasks = yaml.safe_load((ROOT / "roles" / role / "tasks" / file).read_text())
        holds = [t for t in tasks if "ansible.builtin.dpkg_selections" in t]
        installs = [t for t in tasks if "ansible.builtin.apt" in t and t.get("when", "") != "false"]
        registers = {t["register"] for t in installs if "register" in t}
        assert holds and registers, f"{role}/{file}: the apt install must register its result for the hold"
        copy_role(tmp_path, role, holds)
        for changed in (True, False):
            plays.append(
                {
                    "name": f"{role} changed={changed}",
                    "hosts": "all",
                    "gather_facts": True,
                    "vars": {"preflight_gpu": GPU_HOST, **{key: {"changed": changed} for key in registers}},
                    "tasks": [
                        {
                            "name": f"{role} changed={changed}",
                            "ansible.builtin.include_role": {"name": role, "apply": {"ignore_errors": True}},
                        }
                    ],
                }
            )
    ran = run_playbook(tmp_path, plays, {"node": {}}, check=True, roles_path=tmp_path / "roles")["node"]
    for role in HOLD_TASKS:
        pending = [r for n, r in ran if r["play"] == f"{role} changed=True" and "hold" in n.lower()]
        installed = [r for n, r in ran if r["play"] == f"{role} changed=False" and "hold" in n.lower()]
        items = [i for r in pending for i in r.get("results", [r])]
        assert items and all(i.get("skipped") and not i.get("failed") for i in items), f"{role}: {pending}"
        items = [i for r in installed for i in r.get("results", [r])]
        assert any(i.get("failed") for i in items), (
            f"{role}: the hold is not checked once installed: {installed}"
        )


# --- 2. and 3. the driver after the install: reboot pending, or no loadable module ------------------------------


def _verify_play(hosts: dict[str, dict]) -> list:
    return [
        {
            "name": "Check the driver as the role does after installing it",
            "hosts": "all",
            "gather_facts": True,
            "environment": {"STUB_DIR": "{{ stub_dir }}"},
            "vars": {"preflight_gpu": "{{ gpu }}"},
            "tasks": [
                {
                    "name": "Load the driver's per-family vars",
                    "ansible.builtin.include_role": {"name": "nvidia_driver", "tasks_from": "vars"},
                },
                {
                    "name": "Run the driver checks",
                    "ansible.builtin.include_role": {"name": "nvidia_driver", "tasks_from": "verify"},
                    "vars": {
                        "__nvidia_driver_proc_version": "{{ stub_dir }}/proc-driver-nvidia-version",
                        "__nvidia_driver_reboot_deferred": "{{ deferred | default(false) }}",
                        "nvidia_driver_target_version": TARGET,
                    },
                },
                {
                    "name": "Run the later roles' driver-dependent steps",
                    "ansible.builtin.include_role": {
                        "name": "nvidia_container_toolkit",
                        "tasks_from": "smoke_test",
                    },
                },
                {
                    "name": "Show the outcome",
                    "ansible.builtin.debug": {
                        "msg": "{{ {'pending': deepseek_reboot_pending | default('unset')} }}"
                    },
                },
            ],
        }
    ]


PROC_VERSION = "NVRM version: NVIDIA UNIX x86_64 Kernel Module  {v}  Wed Jun 25 18:04:12 UTC 2025\nGCC version:  gcc 12.2.0\n"


def test_driver_state_after_install(tmp_path: Path) -> None:
    _stub_bin(tmp_path)
    required = {**GPU_HOST, "policy": "required"}
    states = {
        # Upgraded without the reboot: the old module is loaded and nvidia-smi cannot talk to it.
        "upgraded-not-rebooted": {
            "proc-driver-nvidia-version": PROC_VERSION.format(v="535.183.01"),
            "nvidia-smi.out": "Failed to initialize NVML: Driver/library version mismatch\n",
            "nvidia-smi.rc": "18",
        },
        # First install on a required host, reboot left to the operator (nvidia_driver_reboot: false): nothing
        # is loaded yet, and that is no failure.
        "installed-reboot-deferred": {},
        # Required, and DKMS built no module for the running kernel.
        "required-no-module": {},
        # Required, the module is there but the kernel refuses it (Secure Boot, key not enrolled).
        "required-key-rejected": {
            "modinfo.filename": "/lib/modules/6.1.0-37-amd64/updates/dkms/nvidia-current.ko",
            "modprobe.err": "modprobe: ERROR: could not insert 'nvidia_current': Key was rejected by service\n",
            "modprobe.rc": "1",
        },
        # The same as the first two without a policy that requires GPUs: a message, as before.
        "auto-no-module": {},
        # Healthy: the pinned driver is loaded.
        "loaded": {
            "proc-driver-nvidia-version": PROC_VERSION.format(v=TARGET),
            "nvidia-smi.out": f"{TARGET}, NVIDIA H100 80GB HBM3, 81559 MiB\n" * 8,
        },
    }
    gpu = {
        "installed-reboot-deferred": required,
        "required-no-module": required,
        "required-key-rejected": {**required, "secure_boot": True},
    }
    hosts = {
        name: {"gpu": gpu.get(name, GPU_HOST), "stub_dir": str(_state(tmp_path, name, files))}
        for name, files in states.items()
    }
    hosts["installed-reboot-deferred"]["deferred"] = True
    ran = run_playbook(tmp_path, _verify_play(hosts), hosts)

    up = ran["upgraded-not-rebooted"]
    assert failure(up) is None, failure(up)
    assert result(up, "Show the outcome")["msg"] == {"pending": True}
    msg = result(up, "Report the reboot the NVIDIA driver is waiting for")["msg"]
    assert "535.183.01" in msg and TARGET in msg and "reboot" in msg
    smoke = result(up, "Report a skipped smoke test")["msg"]
    assert "reboot" in smoke

    deferred = ran["installed-reboot-deferred"]
    assert failure(deferred) is None, failure(deferred)
    assert result(deferred, "Show the outcome")["msg"] == {"pending": True}

    no_module = failure(ran["required-no-module"])
    assert no_module and "deepseek_gpu_stack is 'required'" in no_module, no_module
    kernel = platform.release()  # what Ansible's facts name the running kernel
    assert f"running kernel {kernel}" in no_module and f"--apt-package linux-headers-{kernel}" in no_module

    rejected = failure(ran["required-key-rejected"])
    assert rejected and "Key was rejected" in rejected and "MokManager" in rejected, rejected

    auto = ran["auto-no-module"]
    assert failure(auto) is None, failure(auto)
    assert result(auto, "Show the outcome")["msg"] == {"pending": False}

    loaded = ran["loaded"]
    assert failure(loaded) is None, failure(loaded)
    assert result(loaded, "Show the outcome")["msg"] == {"pending": False}
    assert not (tmp_path / "state" / "loaded" / "modprobe.log").exists()


def test_later_roles_skip_driver_dependent_steps_while_a_reboot_is_pending(tmp_path: Path) -> None:
    """Fabric Manager is not started against the old module; the reason is said."""
    plays = [
        {
            "name": "Fabric Manager after a driver upgrade without the reboot",
            "hosts": "all",
            "gather_facts": True,
            "vars": {"preflight_gpu": GPU_HOST, "deepseek_reboot_pending": True},
            "tasks": [
                {
                    "name": "Load its vars",
                    "ansible.builtin.include_role": {"name": "fabric_manager", "tasks_from": "vars"},
                },
                {
                    "name": "Start it",
                    "ansible.builtin.include_role": {"name": "fabric_manager", "tasks_from": "start"},
                },
            ],
        }
    ]
    ran = run_playbook(tmp_path, plays, {"node": {}})["node"]
    assert failure(ran) is None, failure(ran)
    started = [res for name, res in ran if name.split(" : ", 1)[-1].startswith("Start Fabric Manager")]
    assert started and all(r.get("skipped") for r in started)
    assert "reboot" in result(ran, "Report that Fabric Manager starts after the reboot")["msg"]


# --- 4. Secure Boot: re-sign what is not signed by our key ---------------------------------------------------


def _certificate(path: Path, cn: str) -> int:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.x509.oid import NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    now = datetime.datetime.now(datetime.UTC)
    serial = x509.random_serial_number()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return serial


def _sig_key(serial: int) -> str:
    raw = serial.to_bytes(
        (serial.bit_length() + 8) // 8, "big"
    )  # DER's leading zero byte, as modinfo shows it
    return ":".join(f"{b:02X}" for b in raw)


def test_modules_not_signed_by_our_key_are_resigned(tmp_path: Path) -> None:
    cn = "deepseek-node DKMS module signing key (node)"
    _stub_bin(tmp_path)
    hosts = {}
    dkms_status = (
        "nvidia-current/535.261.03, 6.1.0-37-amd64, x86_64: installed\n"
        "nvidia-current/535.261.03, 6.1.0-38-amd64, x86_64: installed\n"
    )
    for host, foreign in (("one-foreign", True), ("all-ours", False)):
        state = _state(tmp_path, host, {"dkms.out": dkms_status})
        mok = state / "mok"
        mok.mkdir()
        serial = _certificate(mok / "mok.pem", cn)
        ours = f"signer={cn}\nsig_key={_sig_key(serial)}\n"
        other = "signer=Build time autogenerated kernel key\nsig_key=1A:2B:3C\n"
        modules = state / "lib-modules"
        for kernel, files in {
            "6.1.0-37-amd64": {
                "nvidia-current.ko": ours,
                "nvidia-current-uvm.ko": other if foreign else ours,
            },
            "6.1.0-38-amd64": {"nvidia-current.ko": ours, "nvidia-current-uvm.ko.xz": ours},
        }.items():
            d = modules / kernel / "updates" / "dkms"
            d.mkdir(parents=True)
            for fname, text in files.items():
                (d / fname).write_text(text)
        # Not DKMS's: a distribution's own signed module is left alone.
        (modules / "6.1.0-38-amd64" / "kernel" / "nvidia").mkdir(parents=True)
        (modules / "6.1.0-38-amd64" / "kernel" / "nvidia" / "nvidia.ko").write_text(other)
        hosts[host] = {"stub_dir": str(state)}
    plays = [
        {
            "name": "Re-sign as the role does under Secure Boot",
            "hosts": "all",
            "gather_facts": True,
            "environment": {"STUB_DIR": "{{ stub_dir }}"},
            "tasks": [
                {
                    "name": "Load the driver's per-family vars",
                    "ansible.builtin.include_role": {"name": "nvidia_driver", "tasks_from": "vars"},
                },
                {
                    "name": "Re-sign",
                    "ansible.builtin.include_role": {"name": "nvidia_driver", "tasks_from": "resign"},
                    "vars": {
                        "nvidia_driver_mok_dir": "{{ stub_dir }}/mok",
                        "__nvidia_driver_modules_dir": "{{ stub_dir }}/lib-modules",
                    },
                },
            ],
        }
    ]
    ran = run_playbook(tmp_path, plays, hosts)
    for host in hosts:
        assert failure(ran[host]) is None, failure(ran[host])
    log = (tmp_path / "state" / "one-foreign" / "dkms.log").read_text().splitlines()
    assert [line for line in log if line.startswith("install")] == [
        "install --force -m nvidia-current -v 535.261.03 -k 6.1.0-37-amd64"
    ]
    assert not (tmp_path / "state" / "all-ours" / "dkms.log").exists()  # dkms not even asked
    assert not any(res.get("changed") for _, res in ran["all-ours"])
