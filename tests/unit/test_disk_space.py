"""Preflight's disk-space decision: destinations on one filesystem add up; what is there counts as done."""

from __future__ import annotations

import os
from pathlib import Path

from deepseek_node.disk_space import GIB, space_needs, space_problems
from deepseek_node.gpu.probe import measure_space

MANIFEST = {
    "model": {"name": "m", "path": "models/m"},
    "files": {
        "apt/a.deb": {"size": 1 * GIB, "sha256": "0" * 64},
        "wheels/torch.whl": {"size": 2 * GIB, "sha256": "0" * 64},
        "models/m/model.safetensors": {"size": 10 * GIB, "sha256": "0" * 64},
        "models/m/sub/extra.json": {"size": 1024, "sha256": "0" * 64},
    },
}


def _needs() -> list[dict]:
    return space_needs(MANIFEST, "/srv/b", "/var/lib/models", "/opt/venv")


def test_needs_come_from_the_manifest() -> None:
    by_what = {n["what"]: n for n in _needs()}
    assert by_what["the offline bundle"]["bytes"] == 13 * GIB + 1024
    assert by_what["the model"] == {
        "what": "the model",
        "path": "/var/lib/models/m",
        "bytes": 10 * GIB + 1024,
    }
    assert by_what["the daemon's virtualenv"]["bytes"] == 6 * GIB  # wheels expand about 3x


def _rows(free: int, present: int = 0, devices: tuple[int, ...] = (1, 1, 1, 1)) -> list[dict]:
    return [
        {**n, "device": d, "measured_at": "/", "free_bytes": free, "present_bytes": present if i == 1 else 0}
        for i, (n, d) in enumerate(zip(_needs(), devices, strict=True))
    ]


def test_one_filesystem_must_hold_everything_plus_the_margin() -> None:
    total = 13 * GIB + 1024 + 10 * GIB + 1024 + 6 * GIB + 3 * GIB  # + the transfer archive
    assert space_problems(_rows(total + 2 * GIB), 2 * GIB) == []
    (problem,) = space_problems(_rows(total + GIB), 2 * GIB)
    assert "the model (/var/lib/models/m" in problem and "preflight_min_free_gib" in problem
    assert "inference_daemon_models_dir" in problem  # the fix is named


def test_what_a_previous_run_left_is_not_needed_again() -> None:
    total = 13 * GIB + 1024 + 6 * GIB + 3 * GIB  # the model is already there in full
    assert space_problems(_rows(total + 2 * GIB, present=10 * GIB + 1024), 2 * GIB) == []


def test_separate_filesystems_are_judged_separately() -> None:
    rows = _rows(8 * GIB, devices=(1, 2, 3, 1))
    rows[0]["free_bytes"] = 100 * GIB  # the bundle's disk is big; the model's 8 GiB disk is not
    problems = space_problems(rows, 2 * GIB)
    assert len(problems) == 1 and "the model" in problems[0]  # the venv's 6 GiB + 2 GiB margin just fit
    assert not any("the offline bundle" in p for p in problems)


def test_the_transfer_archive_needs_room_beside_the_bundle_until_the_bundle_is_there() -> None:
    by_what = {n["what"]: n for n in _needs()}
    assert by_what["the transfer archive"]["path"] == "/srv/.staging"
    assert by_what["the transfer archive"]["bytes"] == 3 * GIB  # the repository and wheels, not the model
    rows = _rows(13 * GIB + 1024 + 3 * GIB + 2 * GIB, devices=(1, 2, 3, 1))
    rows[1]["free_bytes"] = rows[2]["free_bytes"] = 100 * GIB
    assert space_problems(rows, 2 * GIB) == []
    rows[0]["free_bytes"] -= GIB
    assert "the transfer archive" in space_problems(rows, 2 * GIB)[0]
    rows[0]["present_bytes"] = rows[0]["bytes"]  # the bundle is in place: no transfer, no archive
    assert space_problems(rows, 2 * GIB) == []


def test_a_new_model_version_needs_its_own_room() -> None:
    versioned = {**MANIFEST, "model": {**MANIFEST["model"], "version": "abc123"}}
    (model,) = [
        n
        for n in space_needs(versioned, "/srv/b", "/var/lib/models", "/opt/venv")
        if n["what"] == "the model"
    ]
    assert model["path"] == "/var/lib/models/m/abc123"


def test_unmeasurable_space_is_a_problem_not_a_pass() -> None:
    rows = _rows(0)
    for r in rows:
        r["free_bytes"] = None
    assert "could not be measured" in space_problems(rows, 0)[0]


def test_probe_measures_the_nearest_existing_parent_and_what_is_present(tmp_path: Path) -> None:
    (tmp_path / "models" / "m").mkdir(parents=True)
    (tmp_path / "models" / "m" / "w.bin").write_bytes(b"x" * 4096)
    rows = measure_space(
        [
            {"what": "model", "path": str(tmp_path / "models" / "m"), "bytes": 8192},
            {"what": "venv", "path": str(tmp_path / "not" / "yet"), "bytes": 1},
        ]
    )
    assert rows[0]["present_bytes"] == 4096 and rows[1]["present_bytes"] == 0
    assert rows[1]["measured_at"] == str(tmp_path)
    assert rows[0]["device"] == rows[1]["device"] == os.stat(tmp_path).st_dev
    assert rows[0]["free_bytes"] > 0
