"""The lab itself: real Debian 12 targets boot, are reachable only as intended, reboot, leave nothing behind."""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import yaml

from deepseek_node.lab import Lab, LabHost, UnknownHostError
from deepseek_node.lab.network import ipv4_addresses
from tests.lab_fixtures import LAB_HOSTS, LAB_PREFIX, LAB_SUBNET

pytestmark = pytest.mark.lab

BASE_UNITS = {"ssh.service", "systemd-networkd.service", "systemd-journald.service", "dbus.service"}


@pytest.fixture(autouse=True, scope="module")
def _session_hosts(lab: Lab) -> None:
    """The session lab as it boots, two hosts: end-to-end files before this one may have booted a third."""
    lab.up(count=LAB_HOSTS)


def _hosts(lab: Lab) -> list[LabHost]:
    hosts = lab.hosts()
    assert [h.name for h in hosts] == [f"{LAB_PREFIX}{i}" for i in range(1, LAB_HOSTS + 1)]
    return hosts


def _try_connect(lab: Lab, name: str, address: str, port: int) -> subprocess.CompletedProcess[str]:
    """Connect from inside a target; prints OK or the error (errno name) and exits 0 / 1."""
    script = (
        "import socket, sys, errno\n"
        "try:\n"
        f"    s = socket.create_connection(({address!r}, {port}), timeout=3)\n"
        "    s.sendall(b'hello from target'); s.close(); print('OK')\n"
        "except OSError as e:\n"
        "    print(errno.errorcode.get(e.errno, e)); sys.exit(1)\n"
    )
    return lab.run(name, ["python3", "-c", script], check=False, timeout=30)


def test_systemd_is_pid1_and_the_system_is_running(lab: Lab) -> None:
    for h in _hosts(lab):
        out = lab.run(h.name, "cat /proc/1/comm; systemctl is-system-running --wait || true").stdout.split()
        assert out[0] == "systemd"
        if out[1] != "running":
            failed = lab.run(h.name, "systemctl --failed --no-legend --plain").stdout
            assert out[1] == "degraded", f"{h.name} is {out[1]}"
            # Tests sharing the session lab may leave failed units of their own; the base system must be fine.
            assert not BASE_UNITS & {line.split()[0] for line in failed.splitlines() if line.strip()}, failed


def test_ssh_checks_host_keys(lab: Lab, tmp_path: Path) -> None:
    h = _hosts(lab)[0]
    guest_key = lab.run(h.name, "cat /etc/ssh/ssh_host_ed25519_key.pub").stdout.split()[:2]
    known = lab.known_hosts_path.read_text()
    assert f"{h.name},{h.address} {' '.join(guest_key)}" in known
    # The same ssh command with an empty known_hosts must refuse to connect.
    empty = tmp_path / "known_hosts"
    empty.write_text("")
    argv = [a.replace(str(lab.known_hosts_path), str(empty)) for a in lab.ssh_argv(h.name)]
    proc = subprocess.run([*argv, "-o", "BatchMode=yes", "true"], capture_output=True, text=True, timeout=30)
    assert proc.returncode != 0
    assert "host key" in proc.stderr.lower()
    assert os.stat(lab.key_path).st_mode & 0o777 == 0o600


def test_unknown_host_lists_valid_names(lab: Lab) -> None:
    with pytest.raises(UnknownHostError) as err:
        lab.ssh_argv("nosuchhost")
    assert f"{LAB_PREFIX}1" in str(err.value)


def test_inventory(lab: Lab) -> None:
    data = yaml.safe_load(lab.inventory_path.read_text())
    hosts = data["all"]["children"]["inference_nodes"]["hosts"]
    assert hosts == {
        h.name: {"ansible_host": h.address, "deepseek_controller_address": h.controller_address}
        for h in _hosts(lab)
    }
    assert hosts[f"{LAB_PREFIX}1"]["ansible_host"] == f"{LAB_SUBNET}.1.2"
    v = data["all"]["vars"]
    assert v["ansible_user"] == "deploy"
    assert Path(v["ansible_ssh_private_key_file"]) == lab.key_path.resolve()
    assert f"UserKnownHostsFile={lab.known_hosts_path}" in v["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=yes" in v["ansible_ssh_common_args"]
    assert v["ansible_python_interpreter"] == "/usr/bin/python3"
    assert v["deepseek_hardware_profile"] == "cpu-only"
    # The exact inventory works for plain ssh as Ansible would use it.
    h = _hosts(lab)[1]
    argv = ["ssh", "-i", v["ansible_ssh_private_key_file"], *shlex.split(v["ansible_ssh_common_args"])]
    argv += ["-o", "BatchMode=yes", f"{v['ansible_user']}@{h.address}", "hostname; id -u; sudo -n id -u"]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout.split()
    assert out[0] == h.name
    assert out[1] != "0" and out[2] == "0"  # an unprivileged login that becomes root with sudo


def test_hosts_have_their_own_identity(lab: Lab) -> None:
    seen = {}
    for h in _hosts(lab):
        hostname, machine_id = lab.run(h.name, "hostname; cat /etc/machine-id").stdout.split()
        assert hostname == h.name
        assert len(machine_id) == 32
        seen[h.name] = machine_id
    assert len(set(seen.values())) == len(seen), seen


def test_targets_have_no_route_out(lab: Lab) -> None:
    for h in _hosts(lab):
        assert lab.run(h.name, "ip route show default; ip -6 route show default").stdout.strip() == ""
        # `ip route get` only asks the kernel; no packet is sent.
        assert lab.run(h.name, "ip route get 1.1.1.1", check=False).returncode != 0
        routes = [r.split() for r in lab.run(h.name, "ip -4 route show").stdout.strip().splitlines()]
        net = h.controller_address.rsplit(".", 1)[0] + ".0/24"
        assert routes == [[net, "dev", "host0", "proto", "kernel", "scope", "link", "src", h.address]]
        # The host side never forwards what arrives from a target.
        veth = f"ve-{h.name}"
        assert Path(f"/proc/sys/net/ipv4/conf/{veth}/forwarding").read_text().strip() == "0"


def test_targets_cannot_reach_each_other(lab: Lab) -> None:
    h1, h2 = _hosts(lab)[:2]
    for src, dst in ((h1, h2), (h2, h1)):
        for address in (dst.address, dst.controller_address):
            proc = _try_connect(lab, src.name, address, 22)
            assert proc.returncode == 1, (src.name, address, proc.stdout, proc.stderr)
            assert "ENETUNREACH" in proc.stdout


def test_target_reaches_its_controller_address(lab: Lab) -> None:
    for h in _hosts(lab):
        received: list[bytes] = []
        with socket.create_server((h.controller_address, 0)) as srv:
            srv.settimeout(20)
            port = srv.getsockname()[1]
            t = threading.Thread(target=_accept_one, args=(srv, received))
            t.start()
            proc = _try_connect(lab, h.name, h.controller_address, port)
            t.join(timeout=20)
        assert proc.stdout.strip() == "OK", proc.stdout + proc.stderr
        assert received == [b"hello from target"]


def _accept_one(srv: socket.socket, received: list[bytes]) -> None:
    conn, _ = srv.accept()
    with conn:
        received.append(conn.recv(100))


def test_guest_reboot_brings_the_host_back(lab: Lab) -> None:
    h = _hosts(lab)[0]
    lab.run(h.name, "touch /run/lab-marker")
    lab.run(h.name, "systemctl --no-block reboot", check=False, timeout=30)
    deadline = time.monotonic() + 60
    while True:
        try:
            proc = lab.run(h.name, "test -e /run/lab-marker && echo old || echo new", check=False, timeout=10)
            if proc.stdout.strip() == "new":
                break
        except subprocess.TimeoutExpired:
            pass
        assert time.monotonic() < deadline, "host did not come back within 60 s of a guest reboot"
        time.sleep(0.2)
    assert lab.hosts()[0].pid == h.pid  # same supervisor restarted nspawn
    # The recreated veth got its address back: the controller address answers again.
    assert lab.run(h.name, "ip route get " + h.controller_address).returncode == 0
    assert lab.run(h.name, "systemctl is-system-running --wait || true").stdout.strip() in (
        "running",
        "degraded",
    )


def _free_subnet() -> str:
    """A 10.X subnet no interface here uses (other engineers' labs may be running beside this test)."""
    used = {ip.split(".")[1] for _, ip in ipv4_addresses() if ip.startswith("10.")}
    return next(f"10.{x}" for x in range(200, 255) if str(x) not in used)


def _leftovers(state: Path, prefix: str, subnet: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit() and int(proc.name) != os.getpid():
            try:
                cmd = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(state) in cmd:
                found.append(f"process {proc.name}: {cmd!r}")
    found += [f"mount {line}" for line in Path("/proc/mounts").read_text().splitlines() if str(state) in line]
    found += [f"link {p.name}" for p in Path("/sys/class/net").iterdir() if p.name.startswith(f"ve-{prefix}")]
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    found += [f"route {r}" for r in routes.splitlines() if f" {subnet}." in f" {r}"]
    hosts_dir = state / "hosts"
    if hosts_dir.exists():
        found += [f"dir {p}" for p in hosts_dir.iterdir()]
    return found


def test_up_is_idempotent_recovers_and_down_leaves_nothing(tmp_path: Path) -> None:
    from tests.lab_fixtures import require_lab

    require_lab()
    prefix, state = "dsnx", tmp_path / "state"
    subnet = _free_subnet()
    lab = Lab(state_dir=state, inventory_dir=tmp_path / "inv", prefix=prefix, subnet=subnet)
    try:
        (first,) = lab.up(count=1)
        assert lab.up(count=1) == [first]  # a healthy host is kept as is
        # Kill the host hard: up() must notice, clean the stale state and boot it again.
        from deepseek_node.lab.host import HostDir, processes_using

        for pid in processes_using(HostDir(state / "hosts" / first.name)):
            os.kill(pid, 9)
        deadline = time.monotonic() + 10
        while lab.status()[0].running and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not lab.status()[0].running
        (again,) = lab.up(count=1)
        assert again.pid != first.pid
        assert [s.ssh_ok for s in lab.status()] == [True]
        assert lab.run(first.name, "hostname").stdout.strip() == first.name
    finally:
        lab.down()
    lab.down()  # idempotent
    assert not lab.inventory_path.exists()
    assert lab.status() == []
    # nspawn's veth goes away with the container's namespace, which the kernel tears down asynchronously
    deadline = time.monotonic() + 5
    while _leftovers(state, prefix, subnet) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _leftovers(state, prefix, subnet) == []
