"""Will the bundle, the model and the daemon's virtualenv fit on a host? Pure decisions for preflight.

The preflight probe measures, on the host, each destination's filesystem (device, free bytes) and what is
already there; these functions say what each destination needs (from the bundle's manifest) and whether the
filesystems can take it. Destinations on one filesystem add up: /srv and /var/lib are usually the same disk.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

GIB = 2**30
# Installed wheels take about this many times their compressed size (torch, the CUDA libraries).
VENV_EXPANSION = 3


def space_needs(
    manifest: dict[str, Any],
    bundle_dest: str,
    models_dir: str,
    venv_dir: str,
    venv_expansion: int = VENV_EXPANSION,
) -> list[dict[str, Any]]:
    """[{what, path, bytes}] for the bundle copy, the model copy and the virtualenv built from the wheels."""
    files: dict[str, dict[str, Any]] = manifest.get("files") or {}
    model = manifest.get("model") or {}
    model_prefix = f"{model.get('path', 'models/')}".rstrip("/") + "/"

    def size(prefix: str) -> int:
        return sum(int(e.get("size", 0)) for rel, e in files.items() if rel.startswith(prefix))

    total = sum(int(e.get("size", 0)) for e in files.values())
    staging = f"{bundle_dest.rstrip('/').rsplit('/', 1)[0] or '/'}/.staging"
    return [
        {"what": "the offline bundle", "path": bundle_dest, "bytes": total},
        {
            "what": "the model",
            # A new version goes beside the kept ones: only that version's directory counts as present.
            "path": "/".join(
                p for p in (models_dir.rstrip("/"), model.get("name", ""), model.get("version", "")) if p
            ),
            "bytes": size(model_prefix),
        },
        {"what": "the daemon's virtualenv", "path": venv_dir, "bytes": size("wheels/") * venv_expansion},
        # The repository and wheelhouse travel as one archive, staged beside the bundle while it is unpacked.
        {
            "what": "the transfer archive",
            "path": staging,
            "bytes": total - size(model_prefix),
            "unless_present": "the offline bundle",
        },
    ]


def space_problems(measured: list[dict[str, Any]], margin_bytes: int) -> list[str]:
    """Why the destinations do not fit, one line per filesystem short of space; [] when all fit.

    `measured`: the probe's rows, each {what, path, bytes, device, measured_at, free_bytes, present_bytes}.
    What a destination already holds (a previous run) is not needed again.
    """
    by_device: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    by_what = {row.get("what"): row for row in measured}
    for row in measured:
        # Transient room is needed only when what it serves is not in place yet.
        done = by_what.get(row.get("unless_present")) or {}
        if done and int(done.get("present_bytes") or 0) >= int(done.get("bytes") or 0):
            continue
        by_device[row.get("device")].append(row)
    problems = []
    for rows in by_device.values():
        free = rows[0].get("free_bytes")
        if free is None:
            paths = ", ".join(r["path"] for r in rows)
            problems.append(
                f"free space could not be measured for {paths}: check the paths exist or can be made"
            )
            continue
        more = sum(max(0, int(r["bytes"]) - int(r.get("present_bytes") or 0)) for r in rows)
        if more + margin_bytes > free:
            what = " and ".join(f"{r['what']} ({r['path']}, {_gib(r['bytes'])})" for r in rows)
            problems.append(
                f"the filesystem at {rows[0].get('measured_at')} has {_gib(free)} free but {what} need "
                f"{_gib(more)} more plus the {_gib(margin_bytes)} margin (preflight_min_free_gib): free space "
                "there or point offline_repo_dest / inference_daemon_models_dir / inference_daemon_venv at a "
                "larger filesystem"
            )
    return problems


def _gib(n: int | float) -> str:
    return f"{n / GIB:.1f} GiB"
