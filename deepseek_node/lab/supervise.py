"""Keeps one lab host's systemd-nspawn running: `python -m deepseek_node.lab.supervise ...`.

nspawn exits with 133 when the guest reboots instead of restarting it, so this loop restarts it (and
re-addresses the freshly created veth). SIGTERM/SIGINT stop nspawn (it powers the guest off) and exit.
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import subprocess
import sys
import time
from types import FrameType

from deepseek_node.lab import cgroups
from deepseek_node.lab.network import configure_host_side, delete_link, link_exists

REBOOT_EXIT = 133
STOP_GRACE_S = 20.0


def nspawn_argv(name: str, directory: str) -> list[str]:
    # --register=no/--keep-unit: PID 1 here is not systemd, so nspawn must not talk to machined/systemd.
    return [
        "systemd-nspawn",
        "--boot",
        f"--directory={directory}",
        f"--machine={name}",
        "--register=no",
        "--keep-unit",
        "--network-veth",
        "--console=passive",
        "--resolv-conf=off",
        "--timezone=off",
        "--link-journal=no",
    ]


class Supervisor:
    def __init__(self, name: str, directory: str, ifname: str, controller_address: str) -> None:
        self.argv = nspawn_argv(name, directory)
        self.ifname = ifname
        self.controller_address = controller_address
        self.child: subprocess.Popen[bytes] | None = None
        self.stopping = False
        self.cgroups = cgroups.host_cgroups(name)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.stopping = True
        if self.child and self.child.poll() is None:
            self.child.send_signal(signal.SIGTERM)

    def _configure_veth(self, child: subprocess.Popen[bytes]) -> None:
        # nspawn creates ve-NAME a moment after it starts; poll for it rather than guessing a delay.
        deadline = time.monotonic() + 30
        while child.poll() is None and not self.stopping and time.monotonic() < deadline:
            if link_exists(self.ifname):
                try:
                    configure_host_side(self.ifname, self.controller_address)
                    print(f"supervise: configured {self.ifname}", flush=True)
                    return
                except Exception as exc:  # link may vanish mid-configuration; retry until it settles
                    print(f"supervise: configuring {self.ifname}: {exc}", flush=True)
            time.sleep(0.05)

    def _wait_old_link_gone(self) -> None:
        # The kernel tears down the old netns (and its veth) asynchronously; nspawn fails if ve-NAME exists.
        deadline = time.monotonic() + 5
        while link_exists(self.ifname) and time.monotonic() < deadline:
            time.sleep(0.05)
        delete_link(self.ifname)

    def _wait_child(self, child: subprocess.Popen[bytes]) -> int:
        stop_sent: float | None = None
        while True:
            try:
                return child.wait(timeout=0.5)
            except subprocess.TimeoutExpired:
                pass
            if self.stopping:
                stop_sent = stop_sent or time.monotonic()
                if time.monotonic() - stop_sent > STOP_GRACE_S:
                    child.kill()

    def run(self) -> int:
        first = True
        while not self.stopping:
            if not first:
                self._wait_old_link_gone()
            first = False
            # A guest that rebooted may have left its cgroups behind; a fresh boot starts from empty ones.
            cgroups.remove(self.cgroups)
            for path in self.cgroups:
                path.mkdir(parents=True, exist_ok=True)
            print(f"supervise: starting {' '.join(self.argv)}", flush=True)
            self.child = child = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, preexec_fn=self._enter_cgroups
            )
            if self.stopping:  # the signal came while Popen ran
                child.send_signal(signal.SIGTERM)
            self._configure_veth(child)
            rc = self._wait_child(child)
            print(f"supervise: nspawn exited with {rc}", flush=True)
            if rc != REBOOT_EXIT:
                cgroups.remove(self.cgroups)
                return 0 if self.stopping else rc
        cgroups.remove(self.cgroups)
        return 0

    def _enter_cgroups(self) -> None:
        # Runs in the child between fork and exec: nspawn starts in this host's own cgroups.
        with contextlib.suppress(OSError):
            cgroups.enter(self.cgroups)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="deepseek_node.lab.supervise")
    p.add_argument("--name", required=True)
    p.add_argument("--directory", required=True)
    p.add_argument("--ifname", required=True)
    p.add_argument("--controller-address", required=True)
    args = p.parse_args(argv)
    sup = Supervisor(args.name, args.directory, args.ifname, args.controller_address)
    signal.signal(signal.SIGTERM, sup.on_signal)
    signal.signal(signal.SIGINT, sup.on_signal)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    return sup.run()


if __name__ == "__main__":
    sys.exit(main())
