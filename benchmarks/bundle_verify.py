"""Bundle verification against `sha256sum`: the same files, hashed and compared, in the same run.

    .venv/bin/python benchmarks/bundle_verify.py                    # 2 x 512 MiB shards + 400 small files
    .venv/bin/python benchmarks/bundle_verify.py --size-mib 2048    # bigger shards
    .venv/bin/python benchmarks/bundle_verify.py --bundle DIR       # an existing bundle (left untouched)
    .venv/bin/python benchmarks/bundle_verify.py --json out.json    # keep the numbers

Without `--bundle` it builds a file set laid out like a bundle in a temp dir: `--shards` model-shard-like
files of `--size-mib` MiB each, plus `--small-files` wheel- and package-like files of 4-512 KiB, and writes
their manifest with the project's own `write_manifest`. Then, after one untimed pass of every column (so
all of them read from a warm page cache), it times each column `--rounds` times, interleaved, best of N:

| column | what runs |
| --- | --- |
| sha256sum | `sha256sum --check --strict --quiet LIST` in the bundle, LIST holding every manifest entry |
| verify_bundle | `deepseek_node.bundle.manifest.verify_bundle(DIR)` in this process |
| provision | `python -m deepseek_node.cli.main bundle verify DIR` (what `provision bundle verify` runs), end to end |
| target script | `python3 -I manifest.py verify DIR`: the copy the offline_repo role runs on targets |

Throughput is manifest bytes / wall seconds; each ratio is a column's throughput over sha256sum's.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from deepseek_node.bundle import manifest as m  # noqa: E402

MiB = 1 << 20
COLUMNS = ("sha256sum", "verify_bundle", "provision", "target_script")
TITLES = {
    "sha256sum": "sha256sum --check",
    "verify_bundle": "verify_bundle()",
    "provision": "provision bundle verify",
    "target_script": "manifest.py verify (targets)",
}


# ------------------------------------------------------------------------------------ file set


def small_sizes(count: int) -> list[int]:
    """Deterministic sizes from 4 KiB to 512 KiB, spread like a wheelhouse's and an apt pool's."""
    return [4096 * (1 + (i * 37) % 128) for i in range(count)]


def _write(path: Path, size: int, pattern: bytes, salt: int) -> None:
    """`size` bytes of `pattern`, salted at the start so that no two files have the same digest."""
    path.parent.mkdir(parents=True, exist_ok=True)
    head = salt.to_bytes(8, "little")
    with open(path, "wb") as fh:
        left = size
        first = True
        while left > 0:
            block = (head + pattern[8:]) if first else pattern
            fh.write(block[:left])
            left -= min(left, len(block))
            first = False


def build_file_set(root: Path, shards: int, shard_mib: int, small: int) -> None:
    pattern = os.urandom(8 * MiB)
    for i in range(shards):
        name = f"models/bench/1/model-{i + 1:05d}-of-{shards:05d}.safetensors"
        _write(root / name, shard_mib * MiB, pattern, i)
    for i, size in enumerate(small_sizes(small)):
        name = (
            f"wheels/daemon/pkg{i:04d}-1.0-py3-none-any.whl"
            if i % 2
            else f"apt/pool/pkg{i:04d}_1.0_amd64.deb"
        )
        _write(root / name, size, pattern[i * 4096 :], shards + i)
    m.write_manifest(root, {"model": {"name": "bench"}})


def write_checklist(root: Path, path: Path) -> tuple[int, int]:
    """A `sha256sum --check` list of every manifest entry: (files, bytes)."""
    files = m.load_manifest(root)["files"]
    bad = [rel for rel in files if "\n" in rel or "\\" in rel]
    if bad:
        raise SystemExit(f"file names sha256sum would escape, not supported here: {bad[:3]}")
    path.write_text("".join(f"{e['sha256']}  {rel}\n" for rel, e in sorted(files.items())))
    return len(files), sum(int(e["size"]) for e in files.values())


# -------------------------------------------------------------------------------------- columns


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None) -> None:
    done = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()[-500:]}")


def columns(root: Path, checklist: Path) -> dict[str, Callable[[], None]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's code, not an installed copy

    def in_process() -> None:
        report = m.verify_bundle(root)
        if not report.ok:
            raise SystemExit(report.summary())

    return {
        "sha256sum": lambda: _run(["sha256sum", "--check", "--strict", "--quiet", str(checklist)], root),
        "verify_bundle": in_process,
        "provision": lambda: _run(
            [sys.executable, "-m", "deepseek_node.cli.main", "bundle", "verify", str(root)], REPO, env
        ),
        "target_script": lambda: _run([sys.executable, "-I", m.__file__, "verify", str(root)], root),
    }


def timed(fn: Callable[[], None]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def measure(cols: dict[str, Callable[[], None]], rounds: int) -> dict[str, list[float]]:
    """Seconds per round per column, after one untimed pass; rounds interleave the columns."""
    for fn in cols.values():
        fn()
    runs: dict[str, list[float]] = {name: [] for name in cols}
    for r in range(rounds):
        order = list(cols) if r % 2 == 0 else list(cols)[::-1]  # load from elsewhere hits all alike
        for name in order:
            runs[name].append(timed(cols[name]))
    return runs


# --------------------------------------------------------------------------------------- report


def summarize(runs: dict[str, list[float]], total_bytes: int) -> dict[str, dict[str, float]]:
    base = total_bytes / MiB / min(runs["sha256sum"])
    out: dict[str, dict[str, float]] = {}
    for name, secs in runs.items():
        mibs = total_bytes / MiB / min(secs)
        out[name] = {"best_s": min(secs), "mib_per_s": mibs, "vs_sha256sum": mibs / base}
    return out


def report(summary: dict[str, dict[str, float]]) -> list[str]:
    lines = [f"{'column':<30} {'best s':>8} {'MiB/s':>8} {'vs sha256sum':>13}"]
    for name, row in summary.items():
        lines.append(
            f"{TITLES[name]:<30} {row['best_s']:>8.2f} {row['mib_per_s']:>8.0f} {row['vs_sha256sum']:>12.2f}x"
        )
    return lines


def tool_version() -> str:
    done = subprocess.run(["sha256sum", "--version"], capture_output=True, text=True)
    return done.stdout.splitlines()[0] if done.returncode == 0 else "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bundle", type=Path, help="an existing bundle directory (with manifest.json)")
    ap.add_argument("--shards", type=int, default=2, help="model-shard-like files to build")
    ap.add_argument("--size-mib", type=int, default=512, help="size of each shard, MiB")
    ap.add_argument("--small-files", type=int, default=400, help="wheel/package-like files of 4-512 KiB")
    ap.add_argument("--rounds", type=int, default=3, help="timed runs of each column; the best counts")
    ap.add_argument("--work-dir", type=Path, help="build the file set here and keep it (default: a temp dir)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)

    with contextlib.ExitStack() as stack:
        if args.work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="dsn-verify-")))
        else:
            work = args.work_dir.absolute()
            work.mkdir(parents=True, exist_ok=True)
        if args.bundle is not None:
            root = args.bundle.absolute()
        else:
            root = work / "bundle"
            if not (root / m.MANIFEST).exists():
                print(f"building the file set in {root}", flush=True)
                build_file_set(root, args.shards, args.size_mib, args.small_files)
        checklist = work / "sha256sums.txt"  # outside the bundle: it must not become an extra file
        try:
            files, total = write_checklist(root, checklist)
        except m.BundleError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(f"{files} files, {total / MiB:,.0f} MiB; {args.rounds} rounds after a warm-up pass", flush=True)
        load_start = os.getloadavg()
        runs = measure(columns(root, checklist), args.rounds)

    summary = summarize(runs, total)
    print("\n".join(report(summary)))
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu_count": os.cpu_count(),
        "load_average": load_start,
        "load_average_end": os.getloadavg(),
        "sha256sum": tool_version(),
        "python": sys.version.split()[0],
        "bundle": str(args.bundle) if args.bundle else None,
        "files": files,
        "bytes": total,
        "rounds": args.rounds,
        "seconds": runs,
        "summary": summary,
    }
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
