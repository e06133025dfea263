"""No-change `site.yml` re-run on one lab host against the same run on N hosts (run as root).

    .venv/bin/python benchmarks/fleet_rerun.py                 # 4 hosts, lab prefix dsnb, 10.96.x.x
    .venv/bin/python benchmarks/fleet_rerun.py --hosts 3 --keep
    .venv/bin/python benchmarks/fleet_rerun.py --json out.json

Boots its own throwaway lab (`--prefix`/`--subnet` keep it apart from the operator's and the tests'),
builds a bundle with the tiny model, converges every host once (untimed), then times a no-change re-run on
the first host and on all N, each checked to change nothing. The ratio N-hosts / one-host says how well
forks spread the fleet: 1.0 is perfect, N is no parallelism at all. On a small machine the targets and the
controller share its cores, so the ratio says as much about the machine as about the playbooks.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deepseek_node.bundle.build import build_bundle  # noqa: E402
from deepseek_node.demo import lab_bundle_spec, write_lab_group_vars  # noqa: E402
from deepseek_node.lab import Lab  # noqa: E402
from deepseek_node.runner import RunConfig, RunResult, run  # noqa: E402


def _site(lab: Lab, limit: str, runs: Path) -> RunResult:
    result = run(RunConfig(inventory=lab.inventory_path, limit=limit, artifacts_dir=runs))
    if not result.ok:
        sys.exit("site.yml failed:\n" + "\n".join(result.failures))
    return result


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hosts", type=int, default=4, help="fleet size (default 4)")
    ap.add_argument("--prefix", default="dsnb", help="lab host name prefix (default dsnb)")
    ap.add_argument("--subnet", default="10.96", help="lab subnet's first two octets (default 10.96)")
    ap.add_argument("--keep", action="store_true", help="leave the lab running afterwards")
    ap.add_argument("--json", type=Path, help="also write the numbers here")
    args = ap.parse_args(argv)
    if args.hosts < 2:
        ap.error("--hosts must be at least 2: the point is one host against several")

    work = Path(tempfile.mkdtemp(prefix="fleet-rerun-"))
    inventory_dir = work / "inventory"
    inventory_dir.mkdir()
    lab = Lab(state_dir=work / "state", inventory_dir=inventory_dir, prefix=args.prefix, subnet=args.subnet)
    try:
        hosts = lab.up(count=args.hosts)
        bundle = work / "bundle"
        build_bundle(
            lab_bundle_spec(bundle, controller=False),
            progress=lambda msg: print(f"  {msg}", file=sys.stderr),
        )
        write_lab_group_vars(inventory_dir, bundle)
        names = [h.name for h in hosts]
        runs = inventory_dir / "runs"
        print(f"converging {len(names)} hosts (untimed)...", file=sys.stderr)
        _site(lab, ",".join(names), runs)
        one = _site(lab, names[0], runs)
        many = _site(lab, ",".join(names), runs)
        if one.changed or many.changed:
            sys.exit(f"a re-run changed something: one host {one.changed}, {len(names)} hosts {many.changed}")
        numbers = {
            "hosts": len(names),
            "one_host_s": round(one.seconds, 1),
            "all_hosts_s": round(many.seconds, 1),
            "ratio": round(many.seconds / one.seconds, 2),
        }
        print(f"no-change re-run: 1 host {numbers['one_host_s']} s, {len(names)} hosts "
              f"{numbers['all_hosts_s']} s, ratio {numbers['ratio']} (1.0 = perfectly parallel)")  # fmt: skip
        if args.json:
            args.json.write_text(json.dumps(numbers, indent=2) + "\n")
    finally:
        if not args.keep:
            lab.down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
