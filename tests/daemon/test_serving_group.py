"""A serving group's head: readiness covers every worker server (a worker down means not ready, naming
it), the head's engine is stopped when it loses a stage so its unit restarts it for the group to form
again, and /metrics names the group."""

from __future__ import annotations

import asyncio
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from deepseek_node.daemon.config import ConfigError
from deepseek_node.daemon.engines.vllm import group as serving_group
from deepseek_node.daemon.testing import ThreadedDaemon, config_for
from tests.daemon.fake_engine import FakeEngine

KEY = "dsn-group-test-key-0123"
AUTH = {"Authorization": f"Bearer {KEY}"}
INTERNAL = "internal-engine-key-0123456789"
WORKER = ("ds-h100-12", "10.9.9.12")

# /proc/net/tcp and tcp6 as the kernel prints them (addresses in host byte order per 32-bit word).
PROC_TCP = """\
  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000   998        0 4242 1
   1: 0B09090A:7531 0C09090A:D431 01 00000000:00000000 00:00000000 00000000   998        0 4243 1
   2: 0B09090A:0016 0D09090A:C350 06 00000000:00000000 00:00000000 00000000     0        0 0 1
"""
PROC_TCP6 = """\
  sl  local_address                         remote_address                        st tx_queue rx_queue
   0: 0000000000000000FFFF00000B09090A:7532 0000000000000000FFFF00000E09090A:D432 01 00000000:00000000 00:00000000 00000000 998 0 4244 1
   1: 000080FE00000000FF020000FEA3A4A5:7533 000080FE00000000FF020000FEB3B4B5:D433 01 00000000:00000000 00:00000000 00000000 998 0 4245 1
"""


def test_proc_net_tcp_is_read_as_the_kernel_writes_it() -> None:
    v4 = serving_group.parse_proc_net_tcp(PROC_TCP)
    assert [(s.local, s.local_port, s.remote, s.state) for s in v4] == [
        ("127.0.0.1", 8080, "0.0.0.0", "0A"),
        ("10.9.9.11", 30001, "10.9.9.12", "01"),
        ("10.9.9.11", 22, "10.9.9.13", "06"),
    ]
    v6 = serving_group.parse_proc_net_tcp(PROC_TCP6)
    assert v6[0].remote == "10.9.9.14"  # an IPv4-mapped peer is its IPv4 address
    assert v6[1].remote.startswith("fe80::")
    peers = serving_group.connected_peers(v4 + v6)
    assert "10.9.9.12" in peers and "10.9.9.14" in peers and "10.9.9.13" not in peers  # TIME_WAIT is gone
    workers = [WORKER, ("ds-h100-13", "10.9.9.13")]
    missing = serving_group.missing_workers(workers, peers)
    assert missing == [("ds-h100-13", "10.9.9.13")]
    assert serving_group.describe_missing("r1_pair", missing) == (
        "serving group r1_pair: worker ds-h100-13 (10.9.9.13) is not connected to the head's engine"
    )


def test_this_hosts_real_connections_are_found() -> None:
    server = socket.create_server(("127.0.0.1", 0))
    client = socket.create_connection(server.getsockname())
    conn, _ = server.accept()
    try:
        assert "127.0.0.1" in serving_group.connected_peers(serving_group.read_sockets())
    finally:
        conn.close()
        client.close()
        server.close()


@pytest.mark.parametrize(
    ("proc_self_cgroup", "root"),
    [
        ("0::/system.slice/deepseek-node.service\n", ""),  # cgroup v2
        (
            "1:name=systemd:/system.slice/deepseek-node.service\n0::/system.slice/deepseek-node.service\n",
            "unified",
        ),
        ("9:name=systemd:/system.slice/deepseek-node.service\n0::/\n", "systemd"),  # hybrid, units in v1 only
    ],
)
def test_the_engine_units_processes_are_stopped_through_its_cgroup(
    tmp_path: Path, proc_self_cgroup: str, root: str
) -> None:
    """Found through the unit's cgroup (the gateway's sandbox hides other units' /proc/PID/fd); SIGTERM,
    then SIGKILL for what ignores it."""
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "cgroup").write_text(proc_self_cgroup)
    roots = [tmp_path / "cg", tmp_path / "cg" / "unified", tmp_path / "cg" / "systemd"]
    polite = subprocess.Popen(["sleep", "60"])
    stubborn = subprocess.Popen([sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print(1, flush=True); time.sleep(60)"], stdout=subprocess.PIPE)  # fmt: skip
    assert stubborn.stdout is not None and stubborn.stdout.readline()  # its handler is in place
    unit_dir = (
        (tmp_path / "cg" / root if root else tmp_path / "cg")
        / "system.slice"
        / "deepseek-node-engine.service"
    )
    unit_dir.mkdir(parents=True)
    (unit_dir / "cgroup.procs").write_text(f"{polite.pid}\n{stubborn.pid}\n")
    try:
        assert serving_group.own_slice(proc_self_cgroup) == "/system.slice"
        stopped = serving_group.stop_unit_processes("deepseek-node-engine.service", 0.5, roots, proc)
        assert stopped == [polite.pid, stubborn.pid]
        assert polite.wait(10) == -signal.SIGTERM and stubborn.wait(10) == -signal.SIGKILL
    finally:
        for p in (polite, stubborn):
            p.kill()
    assert serving_group.stop_unit_processes("other.service", 0.5, roots, proc) == []


def test_a_group_needs_vllm_as_its_own_unit(tmp_path: Path, tiny_llama_dir: Path) -> None:
    vllm = {"url": "http://127.0.0.1:8001", "api_key_file": str(tmp_path / "k")}
    bad = {"name": "pair", "workers": [{"host": "w", "address": "not-an-ip"}]}
    with pytest.raises(ConfigError, match="not an IP address"):
        config_for(tiny_llama_dir, KEY, vllm=vllm, group=bad)
    good = {"name": "pair", "workers": [{"host": "w", "address": "10.0.0.2"}]}
    with pytest.raises(ConfigError, match=r"vllm\.url"):
        config_for(tiny_llama_dir, KEY, group=good)
    assert config_for(tiny_llama_dir, KEY, vllm=vllm, group=good).group.workers[0].address == "10.0.0.2"


@pytest.fixture
def head(
    tmp_path: Path, tiny_llama_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ThreadedDaemon, dict]]:
    engine = FakeEngine(INTERNAL).start()
    world = {"peers": {WORKER[1]}, "stopped": []}
    monkeypatch.setattr(
        serving_group,
        "read_sockets",
        lambda proc=None: [
            serving_group.Socket("10.9.9.11", 30000, p, 40000, "01", 1) for p in world["peers"]
        ],
    )
    monkeypatch.setattr(
        serving_group, "stop_unit_processes", lambda unit, *a, **k: world["stopped"].append(unit) or [1]
    )
    key_file = tmp_path / "engine.key"
    key_file.write_text(f"VLLM_API_KEY={INTERNAL}\n")
    cfg = config_for(
        tiny_llama_dir,
        KEY,
        served_name="deepseek-r1",
        vllm={"url": engine.url, "api_key_file": str(key_file), "health_interval_s": 0.1},
        group={"name": "r1_pair", "workers": [{"host": WORKER[0], "address": WORKER[1]}]},
    )
    d = ThreadedDaemon(cfg).start()
    d.wait_ready(30)
    yield d, world
    d.stop()
    engine.stop()


def _wait_status(d: ThreadedDaemon, status: int) -> httpx.Response:
    for _ in range(200):
        r = httpx.get(d.base_url + "/health/ready", headers=AUTH)
        if r.status_code == status:
            return r
        asyncio.run(asyncio.sleep(0.05))
    return r


def test_a_worker_down_makes_the_head_not_ready_naming_it_and_its_return_brings_the_group_back(
    head: tuple[ThreadedDaemon, dict],
) -> None:
    d, world = head
    metrics = httpx.get(d.base_url + "/metrics", headers=AUTH).text
    assert 'deepseek_node:serving_group_worker_connected{group="r1_pair",worker="ds-h100-12"} 1.0' in metrics
    assert 'deepseek_node:serving_group_info{group="r1_pair",role="head"} 1.0' in metrics

    world["peers"] = set()  # the worker's connections are gone
    r = _wait_status(d, 503)
    assert r.status_code == 503
    assert (
        "serving group r1_pair: worker ds-h100-12 (10.9.9.12) is not connected"
        in r.json()["error"]["message"]
    )
    assert world["stopped"] == ["deepseek-node-engine.service"], "the head's engine was not restarted"
    metrics = httpx.get(d.base_url + "/metrics", headers=AUTH).text
    assert 'serving_group_worker_connected{group="r1_pair",worker="ds-h100-12"} 0.0' in metrics

    world["peers"] = {WORKER[1]}  # the worker joined the restarted engine
    assert _wait_status(d, 200).status_code == 200
    assert world["stopped"] == ["deepseek-node-engine.service"]  # once per loss, not on every check
