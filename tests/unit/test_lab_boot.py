"""The lab's boot decisions: when a target is ready, when its failed units or the whole host restart."""

from __future__ import annotations

from pathlib import Path

import pytest

from deepseek_node.lab import boot, cgroups
from deepseek_node.lab.boot import Action, BootProbe, decide

MARK = "@@deepseek-lab@@"


def test_parse_probe_reads_state_failed_units_and_nologin() -> None:
    out = (
        f"noise\n{MARK}state degraded\n{MARK}failed systemd-user-sessions.service\n"
        f"{MARK}failed foo.service\n{MARK}nologin\n"
    )
    assert boot.parse_probe(out) == BootProbe(
        "degraded", ("systemd-user-sessions.service", "foo.service"), nologin=True
    )


def test_parse_probe_without_answer_is_unknown() -> None:
    assert boot.parse_probe("") == BootProbe("unknown")
    assert boot.parse_probe(f"{MARK}state \n") == BootProbe("unknown")


def test_running_without_nologin_is_ready() -> None:
    assert decide(BootProbe("running"), units_restarted=False, timed_out=False) is Action.READY
    # Ready wins even after the time is up.
    assert decide(BootProbe("running"), units_restarted=True, timed_out=True) is Action.READY


@pytest.mark.parametrize("state", ["initializing", "starting", "unknown", "unreachable"])
def test_a_boot_in_progress_is_waited_for_until_the_time_is_up(state: str) -> None:
    assert decide(BootProbe(state), units_restarted=False, timed_out=False) is Action.WAIT
    assert decide(BootProbe(state), units_restarted=False, timed_out=True) is Action.RESTART_HOST


def test_degraded_restarts_failed_units_once_then_the_host() -> None:
    probe = BootProbe("degraded", ("systemd-user-sessions.service",), nologin=True)
    assert decide(probe, units_restarted=False, timed_out=False) is Action.RESTART_UNITS
    assert decide(probe, units_restarted=True, timed_out=False) is Action.RESTART_HOST


def test_running_but_logins_refused_counts_as_a_failed_boot() -> None:
    probe = BootProbe("running", (), nologin=True)
    assert decide(probe, units_restarted=False, timed_out=False) is Action.RESTART_UNITS
    assert boot.units_to_restart(probe) == ["systemd-user-sessions.service"]
    assert decide(probe, units_restarted=True, timed_out=False) is Action.RESTART_HOST


@pytest.mark.parametrize("state", ["maintenance", "stopping", "offline"])
def test_states_that_never_recover_restart_the_host(state: str) -> None:
    assert decide(BootProbe(state), units_restarted=False, timed_out=False) is Action.RESTART_HOST


def test_restart_units_command_quotes_units_and_resets_failed_state() -> None:
    cmd = boot.restart_units_command(["a.service", "bad'unit", "b.service"])
    assert cmd == "systemctl reset-failed; systemctl restart 'a.service' 'b.service'"
    assert boot.restart_units_command([]) == "systemctl reset-failed"


def test_describe_names_units_and_nologin() -> None:
    text = boot.describe(BootProbe("degraded", ("x.service",), nologin=True))
    assert "degraded" in text and "x.service" in text and "/run/nologin" in text


def test_probe_command_bounds_the_wait() -> None:
    assert "timeout 30 systemctl is-system-running --wait" in boot.probe_command(30.4)
    assert "timeout 1 " in boot.probe_command(0.2)


HYBRID_MOUNTS = """\
tmpfs /sys/fs/cgroup tmpfs rw,relatime,mode=755 0 0
cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0
cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0
cgroup2 /sys/fs/cgroup/unified cgroup2 rw,relatime 0 0
"""


def test_each_host_gets_its_own_cgroup_in_the_hierarchies_nspawn_splits() -> None:
    own = "9:name=systemd:/\n4:memory:/some/limit\n0::/ctl\n"
    assert cgroups.hierarchies(HYBRID_MOUNTS, own) == [
        Path("/sys/fs/cgroup/systemd"),
        Path("/sys/fs/cgroup/unified/ctl"),
    ]
    pure_v2 = "cgroup2 /sys/fs/cgroup cgroup2 rw,nosuid 0 0\n"
    assert cgroups.hierarchies(pure_v2, "0::/user.slice/x.scope\n") == [
        Path("/sys/fs/cgroup/user.slice/x.scope")
    ]


def test_remove_clears_a_stopped_hosts_cgroup_tree(tmp_path: Path) -> None:
    host = tmp_path / cgroups.BASE / "dsn1"
    (host / "payload" / "system.slice" / "ssh.service").mkdir(parents=True)
    (host / "supervisor").mkdir()
    cgroups.remove([host, tmp_path / "absent"])
    assert not host.exists()
