"""The air gap end to end: the controller is on the inside too. A fresh lab target with no route out is made
a controller from the bundle alone (controller/install.sh), then converges another target with site.yml from
there: the session's converged host, whose firewall drops the new controller until it is admitted (by hand, as
at the console, then for good by the inside run, whose inventory lists it as an admin network); a second
run changes nothing."""

from __future__ import annotations

import json
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from deepseek_node import __version__

pytestmark = pytest.mark.lab


def _carry_in(lab, host: str, paths: list[Path], exclude: list[Path]) -> None:
    """Copy `paths` to the same absolute paths on `host`, as removable media would bring them in."""
    rel = [str(p).lstrip("/") for p in paths]
    skip = [f"--exclude={str(p).lstrip('/')}" for p in exclude]
    pack = subprocess.Popen(["tar", "-C", "/", "-cf", "-", *skip, *rel], stdout=subprocess.PIPE)
    unpack = subprocess.run(
        [*lab.ssh_argv(host), "tar -C / -xf -"],
        stdin=pack.stdout,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert pack.stdout is not None
    pack.stdout.close()
    assert pack.wait() == 0 and unpack.returncode == 0, unpack.stderr


def _inside(lab, host: str, command: str, timeout: float = 1800) -> subprocess.CompletedProcess[str]:
    return lab.run(host, command, check=False, timeout=timeout)


def _inside_run(lab, ctl: str, inventory: Path, target: str) -> dict:
    """`provision run` on the inside controller (runs kept where an installed controller keeps them)."""
    r = _inside(lab, ctl, f"provision run -i {shlex.quote(str(inventory))} --limit {target}")
    newest = _inside(lab, ctl, 'cat "$(ls -d /var/lib/deepseek-node/artifacts/*/ | tail -n 1)summary.json"')
    assert newest.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads(newest.stdout)
    assert r.returncode == 0 and summary["result"] == "ok", r.stdout[-3000:] + "\n".join(summary["failures"])
    return summary


RULES = "/etc/deepseek-node/nftables.nft"
FIREWALL_CHANGES = [
    "Write the firewall rules (checked by nft before they replace the file)",
    "Load the firewall rules",
]


def test_a_controller_installed_from_the_bundle_alone_converges_another_target(
    site: dict, lab, bundle_dir: Path
) -> None:
    assert site["first"].ok, site["first"].failures
    target = site["hosts"][0]
    inventory_dir = site["inventory_dir"]
    # A bare host of its own, after those the other end-to-end files use.
    spare = max(len(lab.hosts()), 3)
    ctl = lab.up(count=spare + 1)[spare]
    admit = ["{{ ansible_host }}/24", f"{ctl.address}/32"]
    timings: dict[str, float] = {}
    started = time.monotonic()
    rules = ""
    try:
        routes = lab.run(ctl.name, "ip -4 route; ip -6 route").stdout
        assert "default" not in routes and "via" not in routes, routes

        _carry_in(
            lab,
            ctl.name,
            [bundle_dir, inventory_dir, lab.key_path, lab.known_hosts_path],
            exclude=[inventory_dir / "runs"],
        )
        install = f"{shlex.quote(str(bundle_dir))}/controller/install.sh"
        t = time.monotonic()
        first = _inside(lab, ctl.name, install, timeout=1200)
        timings["install"] = time.monotonic() - t
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert "changed: Debian packages, virtualenv" in first.stdout, first.stdout
        t = time.monotonic()
        again = _inside(lab, ctl.name, install)
        timings["install again"] = time.monotonic() - t
        assert again.returncode == 0 and "changed: nothing" in again.stdout, again.stdout + again.stderr
        probe = lab.run(ctl.name, "provision --version; readlink /usr/local/bin/provision").stdout.split()
        assert probe == ["deepseek-node", __version__, "/opt/deepseek-node-controller/current/bin/provision"]
        # The bundle's repository was a temporary source: apt's own configuration is as it was.
        assert "deepseek" not in lab.run(ctl.name, "grep -rl deepseek /etc/apt || true").stdout

        # The two targets' own link; until the target's firewall admits the new controller, SSH is dropped.
        lab.link(ctl.name, target.name)
        reach = f"timeout 4 bash -c 'exec 3<>/dev/tcp/{target.address}/22' && echo open || echo dropped"
        assert lab.run(ctl.name, reach).stdout.strip() == "dropped"
        # Admitted for now by hand, as at the target's console; the inside run makes it the inventory's.
        rules = lab.run(target.name, f"cat {RULES}").stdout
        lab.run(target.name, f"nft add element inet deepseek_node admin_ipv4 '{{ {ctl.address} }}'")
        assert lab.run(ctl.name, reach).stdout.strip() == "open"

        # The inside inventory: the same files (pki/ with the CA the target trusts, secrets/), and the target's
        # admin networks naming this controller.
        host_vars = inventory_dir / "host_vars" / f"{target.name}.yml"
        text = "---\nfirewall_admin_networks: " + json.dumps(admit) + "\n"
        lab.run(ctl.name, f"mkdir -p {host_vars.parent} && printf %s {shlex.quote(text)} > {host_vars}")
        inventory = lab.inventory_path
        t = time.monotonic()
        one = _inside_run(lab, ctl.name, inventory, target.name)
        timings["inside run 1"] = time.monotonic() - t
        t = time.monotonic()
        two = _inside_run(lab, ctl.name, inventory, target.name)
        timings["inside run 2"] = time.monotonic() - t
        print(
            f"inside run 1: changed={one['hosts'][target.name]['changed']}, run 2: {two['hosts'][target.name]['changed']}"
        )
        # The first run changed only what the inside inventory changes: the firewall's admin networks.
        assert one["hosts"][target.name]["changed_tasks"] == FIREWALL_CHANGES, one["hosts"][target.name]
        assert f"{ctl.address}" in lab.run(target.name, f"cat {RULES}").stdout
        assert two["hosts"][target.name]["changed"] == 0, two["hosts"][target.name]["changed_tasks"]
        assert one["bundle_manifest_sha256"] == two["bundle_manifest_sha256"] is not None
        history = lab.run(ctl.name, "provision history").stdout
        assert target.name in history
    finally:
        lab.unlink(ctl.name, target.name)
        if rules:  # the target as site.yml leaves it, for the files after this one: its rules file, loaded
            lab.run(
                target.name,
                f"printf %s {shlex.quote(rules)} > {RULES} && systemctl reload deepseek-node-firewall",
            )
        lab.up(count=spare)
        timings["total"] = time.monotonic() - started
        print("offline controller:", ", ".join(f"{k} {v:.0f}s" for k, v in timings.items()))
    assert lab.run(target.name, f"cat {RULES}").stdout == rules
    assert ctl.address not in lab.run(target.name, "nft list table inet deepseek_node").stdout
