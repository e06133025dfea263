"""Serving groups roll as one unit, in a real ansible-playbook run with the rolling plays' own keywords."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
ROLLING = ("playbooks/inference.yml", "playbooks/gpu.yml", "playbooks/model_rollback.yml")

INVENTORY = {
    "all": {
        "children": {
            "inference_nodes": {"hosts": {h: {} for h in ("a", "w1", "b", "h1", "c")}},
            "serving_groups": {
                "children": {
                    "pair": {"hosts": {"h1": {}, "w1": {}}, "vars": {"deepseek_serving_group": "pair"}}
                }
            },
        }
    }
}


def _rolling_play(path: str) -> dict:
    plays = yaml.safe_load((ROOT / path).read_text())
    return next(p for p in plays if "serial" in p)


@pytest.mark.parametrize("path", ROLLING)
def test_every_rolling_play_keeps_groups_whole(path):
    plays = yaml.safe_load((ROOT / path).read_text())
    assert plays[0]["ansible.builtin.import_playbook"] == "roll_units.yml"
    play = _rolling_play(path)
    assert "deepseek_roll_order" in play["hosts"]
    assert "deepseek_roll_serial" in play["serial"]


def _run(tmp_path: Path, *args: str, inventory: dict | None = None) -> subprocess.CompletedProcess:
    play = _rolling_play("playbooks/inference.yml")
    (tmp_path / "playbooks/tasks").mkdir(parents=True, exist_ok=True)
    (tmp_path / "playbooks/roll_units.yml").write_text((ROOT / "playbooks/roll_units.yml").read_text())
    gate = (ROOT / "playbooks/tasks/canary_gate.yml").read_text()
    (tmp_path / "playbooks/tasks/canary_gate.yml").write_text(gate)
    batches = tmp_path / "batches.jsonl"
    book = [
        {"ansible.builtin.import_playbook": "roll_units.yml"},
        {
            "name": "batches",
            "hosts": play["hosts"],
            "serial": play["serial"],
            "gather_facts": False,
            "tasks": [
                {
                    "ansible.builtin.shell": f"echo '{{{{ ansible_play_batch | to_json }}}}' >> {batches}",
                    "run_once": True,
                    "changed_when": False,
                }
            ],
            "post_tasks": play["post_tasks"],
        },
    ]
    (tmp_path / "playbooks/book.yml").write_text(yaml.safe_dump(book, sort_keys=False))
    (tmp_path / "hosts.yml").write_text(yaml.safe_dump(inventory or INVENTORY, sort_keys=False))
    env = {
        **os.environ,
        "ANSIBLE_FILTER_PLUGINS": str(ROOT / "plugins/filter"),
        "ANSIBLE_CONFIG": str(tmp_path / "none.cfg"),
    }
    cmd = [
        str(Path(sys.executable).parent / "ansible-playbook"),
        "-i", str(tmp_path / "hosts.yml"), "-c", "local", "-e", "ansible_python_interpreter=" + sys.executable,
        str(tmp_path / "playbooks/book.yml"), *args,
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    proc.batches = [json.loads(line) for line in batches.read_text().splitlines()] if batches.exists() else []
    return proc


@pytest.mark.slow
def test_the_group_shares_a_batch_and_a_partial_limit_is_refused(tmp_path):
    proc = _run(tmp_path, "-e", '{"deepseek_serial": [1, 2]}')
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert [sorted(b) for b in proc.batches] == [["a"], ["h1", "w1"], ["b", "c"]]

    proc = _run(tmp_path, "--limit", "h1,c")
    assert proc.returncode != 0
    assert (
        "serving group pair" in proc.stdout
        and "leaves out w1" in proc.stdout
        and "--limit pair" in proc.stdout
    )
    assert proc.batches == [] or proc.batches[-1] != ["c"]  # nothing ran past the check


@pytest.mark.slow
def test_a_canary_batch_goes_first_and_the_roll_waits_for_the_go(tmp_path):
    inventory = json.loads(json.dumps(INVENTORY))
    inventory["all"]["children"]["canary"] = {"hosts": {"c": {}}}
    stopped = _run(tmp_path / "wait", "-e", '{"deepseek_serial": [2]}', inventory=inventory)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert stopped.batches == [["c"]]
    assert "Canary hosts c are changed" in stopped.stdout and "deepseek_canary_go=true" in stopped.stdout
    went = _run(
        tmp_path / "go", "-e", '{"deepseek_serial": [2], "deepseek_canary_go": true}', inventory=inventory
    )
    assert went.returncode == 0, went.stdout + went.stderr
    assert [sorted(b) for b in went.batches] == [["c"], ["a"], ["h1", "w1"], ["b"]]
