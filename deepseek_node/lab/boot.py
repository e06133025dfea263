"""Has a lab host finished booting? One probe over ssh, parsed and judged by pure functions (unit tested).

sshd answers root long before boot ends, but the unprivileged user Ansible logs in as is refused
("System is booting up") while /run/nologin exists, which systemd-user-sessions.service removes. A host
is ready when systemd says `running` and /run/nologin is gone; a `degraded` boot gets its failed units
restarted once, and a host that still is not ready is restarted as a whole.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# `is-system-running --wait` blocks until boot has finished (or the timeout); then the failed units and
# whether logins are still refused. Markers keep the three answers apart whatever each prints.
_MARK = "@@deepseek-lab@@"


def probe_command(wait_s: float) -> str:
    return (
        f"state=$(timeout {max(1, int(wait_s))} systemctl is-system-running --wait 2>/dev/null); "
        f'echo "{_MARK}state ${{state:-unknown}}"; '
        "systemctl list-units --state=failed --plain --no-legend --no-pager 2>/dev/null "
        f'| while read -r unit _; do echo "{_MARK}failed $unit"; done; '
        f'if [ -e /run/nologin ]; then echo "{_MARK}nologin"; fi'
    )


@dataclass(frozen=True)
class BootProbe:
    state: str
    failed_units: tuple[str, ...] = ()
    nologin: bool = False


def parse_probe(stdout: str) -> BootProbe:
    state, failed, nologin = "unknown", [], False
    for line in stdout.splitlines():
        if not line.startswith(_MARK):
            continue
        word, _, rest = line[len(_MARK) :].partition(" ")
        if word == "state":
            state = rest.strip() or "unknown"
        elif word == "failed" and rest.strip():
            failed.append(rest.strip())
        elif word == "nologin":
            nologin = True
    return BootProbe(state, tuple(failed), nologin)


class Action(enum.Enum):
    READY = "ready"
    WAIT = "wait"  # still booting: probe again
    RESTART_UNITS = "restart failed units"
    RESTART_HOST = "restart the host"


def decide(probe: BootProbe, units_restarted: bool, timed_out: bool) -> Action:
    """What to do with a host after a probe.

    units_restarted: its failed units were restarted once already in this boot; timed_out: this boot has
    used up its time.
    """
    if probe.state == "running" and not probe.nologin:
        return Action.READY
    # unknown: the probe's own wait ran out mid-boot; unreachable: ssh did not answer this time.
    if probe.state in ("initializing", "starting", "unknown", "unreachable") and not timed_out:
        return Action.WAIT
    # Finished booting but not cleanly: the failed units (or systemd-user-sessions, for a stale
    # /run/nologin) get one more start; a boot that stays broken is redone from scratch.
    if probe.state in ("running", "degraded") and not units_restarted:
        return Action.RESTART_UNITS
    return Action.RESTART_HOST


def units_to_restart(probe: BootProbe) -> list[str]:
    units = list(probe.failed_units)
    if probe.nologin and "systemd-user-sessions.service" not in units:
        units.append("systemd-user-sessions.service")
    return units


def restart_units_command(units: list[str]) -> str:
    names = " ".join(f"'{u}'" for u in units if "'" not in u)
    return f"systemctl reset-failed; systemctl restart {names}" if names else "systemctl reset-failed"


def describe(probe: BootProbe) -> str:
    parts = [f"systemd state {probe.state}"]
    if probe.failed_units:
        parts.append("failed units: " + ", ".join(probe.failed_units))
    if probe.nologin:
        parts.append("/run/nologin still present (logins refused)")
    return "; ".join(parts)
