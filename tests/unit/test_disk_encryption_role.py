"""The disk_encryption role's decisions and refusals: the format/refuse probe, which clevis bindings are
kept, added or removed, the crypttab/fstab options, the controller-side escrow, and bad variables failing
before anything changes (ansible-playbook on localhost)."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from ansible.errors import AnsibleActionFail
from ansible.parsing.vault import VaultLib, VaultSecret

from tests.conftest import REPO

sys.path.insert(0, str(REPO / "plugins" / "filter"))
import deepseek_luks as luks

_spec = importlib.util.spec_from_file_location(
    "deepseek_luks_escrow", REPO / "plugins/action/deepseek_luks_escrow.py"
)
assert _spec and _spec.loader
escrow_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(escrow_mod)

DEV = "/dev/nvme1n1"
EXT4 = {"signatures": [{"device": DEV, "offset": "0x438", "type": "ext4", "uuid": "u", "label": None}]}
LUKS = {"signatures": [{"device": DEV, "offset": "0x0", "type": "crypto_LUKS", "label": "deepseek-data"}]}
GPT = {"signatures": [{"device": DEV, "offset": "0x200", "type": "gpt"}, {"offset": "0x1fe", "type": "PMBR"}]}


# --- safe mode: format, keep or refuse ---------------------------------------------------------------


def test_empty_device_is_formatted() -> None:
    d = luks.luks_probe_decision('{\n   "signatures": [\n\n   ]\n}', False, False, DEV)
    assert d["action"] == "format" and not d["wipe"]
    assert luks.luks_probe_decision("", False, False, DEV)["action"] == "format"


def test_filesystem_is_refused_with_the_fix_named() -> None:
    d = luks.luks_probe_decision(json.dumps(EXT4), False, False, DEV)
    assert d["action"] == "refuse"
    assert "ext4 at offset 0x438" in d["reason"] and "disk_encryption_force_format: true" in d["reason"]


def test_partition_table_is_refused() -> None:
    d = luks.luks_probe_decision(GPT, False, False, DEV)
    assert d["action"] == "refuse" and "partition table" in d["reason"]


def test_foreign_luks_header_is_refused() -> None:
    d = luks.luks_probe_decision(LUKS, False, False, DEV)
    assert d["action"] == "refuse" and "does not open" in d["reason"]


def test_force_wipes_then_formats() -> None:
    for sigs in (EXT4, GPT, LUKS):
        d = luks.luks_probe_decision(sigs, False, True, DEV)
        assert d["action"] == "format" and d["wipe"]


def test_own_volume_is_kept_even_with_force() -> None:
    for force in (False, True):
        d = luks.luks_probe_decision(LUKS, True, force, DEV)
        assert d["action"] == "keep" and not d["wipe"]


# --- clevis bindings ---------------------------------------------------------------------------------

LIST_ONE = '1: sss \'{"t":1,"pins":{"tang":[{"url":"http://10.82.1.1:7500"}]}}\'\n'
LIST_TWO = LIST_ONE + '3: tpm2 \'{"hash":"sha256","key":"ecc","pcr_bank":"sha256","pcr_ids":"7"}\'\n'
SERVERS = luks.tang_servers([{"url": "http://10.82.1.1:7500"}])


def test_clevis_list_is_parsed() -> None:
    slots = luks.clevis_slots(LIST_TWO)
    assert [(s["slot"], s["pin"]) for s in slots] == [(1, "sss"), (3, "tpm2")]
    assert slots[0]["config"]["pins"]["tang"][0]["url"] == "http://10.82.1.1:7500"
    assert slots[1]["config"]["pcr_ids"] == "7"
    assert luks.clevis_slots("") == []


def test_matching_binding_is_kept() -> None:
    desired = luks.clevis_desired("tang", SERVERS, 1)
    plan = luks.clevis_plan(luks.clevis_slots(LIST_ONE), desired, rotated=[])
    assert plan == {"bind": False, "unbind": [], "keep": 1, "reasons": []}


def test_rotated_keys_rebind_then_unbind() -> None:
    desired = luks.clevis_desired("tang", SERVERS, 1)
    plan = luks.clevis_plan(luks.clevis_slots(LIST_ONE), desired, rotated=[1])
    assert plan["bind"] and plan["unbind"] == [1] and plan["keep"] is None
    assert "no longer advertised" in plan["reasons"][0]


def test_changed_servers_or_threshold_rebind() -> None:
    two = luks.tang_servers([{"url": "http://10.82.1.1:7500"}, {"url": "http://tang2:7500"}])
    for desired in (luks.clevis_desired("tang", two, 1), luks.clevis_desired("tang", two, 2)):
        plan = luks.clevis_plan(luks.clevis_slots(LIST_ONE), desired, rotated=[])
        assert plan["bind"] and plan["unbind"] == [1] and "differs" in plan["reasons"][0]


def test_unlock_none_removes_bindings_and_tpm2_keeps_its_own() -> None:
    slots = luks.clevis_slots(LIST_TWO)
    plan = luks.clevis_plan(slots, luks.clevis_desired("none", [], 1), rotated=[])
    assert not plan["bind"] and plan["unbind"] == [1, 3]
    plan = luks.clevis_plan(slots, luks.clevis_desired("tpm2", [], 1, "sha256", "7"), rotated=[])
    assert not plan["bind"] and plan["keep"] == 3 and plan["unbind"] == [1]
    plan = luks.clevis_plan(slots, luks.clevis_desired("tpm2", [], 1, "sha256", "0,7"), rotated=[])
    assert plan["bind"] and plan["unbind"] == [1, 3]


def test_bind_config_pins_thumbprint_or_advertisement() -> None:
    servers = luks.tang_servers(
        [{"url": "http://a:7500", "thp": "abcDEF0123456789_-xyz"}, {"url": "http://b"}]
    )
    desired = luks.clevis_desired("tang", servers, 2)
    adv = {"payload": "eyJr", "signatures": []}
    results = [
        {"item": servers[1], "content": json.dumps(adv), "status": 200},
        {"item": servers[0], "skipped": True},
    ]
    cfg = json.loads(luks.clevis_bind_config(desired, servers, results))
    assert cfg["t"] == 2
    assert cfg["pins"]["tang"][0] == {"url": "http://a:7500", "thp": "abcDEF0123456789_-xyz"}
    assert cfg["pins"]["tang"][1] == {"url": "http://b", "adv": adv}
    with pytest.raises(ValueError, match="no advertisement"):
        luks.clevis_bind_config(desired, servers, {})
    tpm = luks.clevis_bind_config(luks.clevis_desired("tpm2", [], 1, "sha256", "7"), [], None)
    assert json.loads(tpm) == {"pcr_bank": "sha256", "pcr_ids": "7"}


# --- crypttab / fstab options ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("unlock", "extra", "crypttab", "fstab"),
    [
        ("tang", [], "luks,_netdev", "defaults,_netdev"),
        ("tpm2", [], "luks", "defaults"),
        ("none", [], "luks,noauto", "defaults,noauto"),
        ("tang", ["nofail", "_netdev"], "luks,_netdev,nofail", "defaults,_netdev,nofail"),
    ],
)
def test_crypttab_and_fstab_options(unlock: str, extra: list[str], crypttab: str, fstab: str) -> None:
    assert luks.luks_crypttab_opts(unlock, extra) == crypttab
    assert luks.luks_mount_opts(unlock, extra) == fstab


def test_crypttab_line_as_the_module_writes_it(tmp_path: Path) -> None:
    """community.general.crypttab renders name, UUID=, none, options: systemd-cryptsetup reads 4 fields."""
    from ansible_collections.community.general.plugins.modules.crypttab import Line

    line = str(Line(None, "deepseek-data", "UUID=1234", "none", luks.luks_crypttab_opts("tang")))
    assert line.split() == ["deepseek-data", "UUID=1234", "none", "luks,_netdev"]


# --- escrow on the controller ------------------------------------------------------------------------


def _vault(password: str = "lab-vault-password") -> VaultLib:
    return VaultLib([("default", VaultSecret(password.encode()))])


def test_escrow_refuses_plain_files_without_allow(tmp_path: Path) -> None:
    with pytest.raises(AnsibleActionFail, match="disk_encryption_allow_plain_escrow"):
        escrow_mod.escrow(tmp_path / "h1", VaultLib([]), allow_plain=False)
    assert not (tmp_path / "h1").exists()


def test_escrow_plain_when_allowed(tmp_path: Path) -> None:
    keys, changed, _ = escrow_mod.escrow(tmp_path / "h1", None, allow_plain=True)
    assert changed and len(keys["keyfile"]) == 64 and keys["recovery"].count("-") == 7
    d = tmp_path / "h1"
    assert stat.S_IMODE(d.stat().st_mode) == 0o700
    for name in ("keyfile", "recovery-passphrase"):
        assert stat.S_IMODE((d / name).stat().st_mode) == 0o600
    again, changed, _ = escrow_mod.escrow(d, None, allow_plain=True)
    assert again == keys and not changed


def test_escrow_under_vault(tmp_path: Path) -> None:
    d = tmp_path / "h1"
    keys, changed, _ = escrow_mod.escrow(d, _vault(), allow_plain=False)
    assert changed
    raw = (d / "keyfile").read_bytes()
    assert raw.startswith(b"$ANSIBLE_VAULT;1.1;AES256") and keys["keyfile"].encode() not in raw
    assert _vault().decrypt(raw).decode() == keys["keyfile"]
    assert escrow_mod.escrow(d, _vault(), allow_plain=False)[:2] == (keys, False)
    with pytest.raises(AnsibleActionFail, match="cannot be decrypted"):
        escrow_mod.preflight(d, _vault("another-password"), allow_plain=False)


def test_plain_escrow_is_encrypted_once_a_vault_secret_exists(tmp_path: Path) -> None:
    d = tmp_path / "h1"
    keys, _, _ = escrow_mod.escrow(d, None, allow_plain=True)
    again, changed, notes = escrow_mod.escrow(d, _vault(), allow_plain=False)
    assert again == keys and changed and len(notes) == 2
    assert (d / "recovery-passphrase").read_bytes().startswith(b"$ANSIBLE_VAULT")


def test_check_mode_escrow_writes_nothing(tmp_path: Path) -> None:
    _, changed, _ = escrow_mod.escrow(tmp_path / "h1", None, allow_plain=True, check_mode=True)
    assert changed and not (tmp_path / "h1").exists()


# --- bad variables fail before any change ------------------------------------------------------------

GOOD = {
    "disk_encryption_device": "/dev/nvme1n1",
    "disk_encryption_unlock": "tang",
    "disk_encryption_tang_servers": [{"url": "http://tang1.example:7500"}],
    "disk_encryption_tang_threshold": 1,
}


BAD = {
    "no_servers": ({"disk_encryption_tang_servers": []}, "disk_encryption_tang_servers is empty"),
    "threshold": ({"disk_encryption_tang_threshold": 2}, "must be between 1 and the number of servers"),
    "bad_url": ({"disk_encryption_tang_servers": [{"url": "tang1:7500"}]}, "Tang server URLs are not valid"),
    "trailing_slash": (
        {"disk_encryption_tang_servers": [{"url": "http://tang1/"}]},
        "without a trailing slash",
    ),
    "bad_thp": ({"disk_encryption_tang_servers": [{"url": "http://t", "thp": "x y"}]}, "not a base64url key"),
    "relative_device": ({"disk_encryption_device": "nvme1n1"}, "is not an absolute path"),
    "unknown_unlock": ({"disk_encryption_unlock": "clevis"}, "disk_encryption_unlock"),
    "server_without_url": ({"disk_encryption_tang_servers": [{"thp": "abc"}]}, "url"),
}


@pytest.fixture(scope="module")
def role_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, int]:
    """One ansible-playbook run over one local host per case (each with its own variables): bad ones
    must fail on their own message, and `off` (no device) must do nothing."""
    tmp = tmp_path_factory.mktemp("role")
    hosts = {
        name: {**GOOD, **override, "disk_encryption_escrow_dir": str(tmp / "esc")}
        for name, (override, _) in BAD.items()
    }
    hosts["off"] = {"disk_encryption_tang_servers": [], "disk_encryption_escrow_dir": str(tmp / "esc")}
    for h in hosts.values():
        h.update(ansible_connection="local", ansible_python_interpreter=sys.executable)
    (tmp / "inventory.json").write_text(json.dumps({"all": {"hosts": hosts}}))
    play = tmp / "play.yml"
    play.write_text("- hosts: all\n  gather_facts: false\n  roles:\n    - role: disk_encryption\n")
    env = {
        **os.environ,
        "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"),
        "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
        "ANSIBLE_FILTER_PLUGINS": str(REPO / "plugins" / "filter"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_INVENTORY_ENABLED": "yaml",
    }
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(tmp / "inventory.json"), str(play)],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    return tmp, proc.stdout + proc.stderr, proc.returncode


def _host_lines(out: str, host: str) -> str:
    """The failure lines that name this host (ansible prints `[ERROR]: Task failed ... ` under `host`)."""
    blocks = [b for b in out.split("\n\n") if f"[{host}]" in b or f"{host}:" in b or f"{host} " in b]
    return "\n".join(blocks)


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_variables_are_refused_before_any_change(role_run: tuple[Path, str, int], case: str) -> None:
    tmp, out, rc = role_run
    assert rc != 0, out
    recap = re.search(rf"^{case}\s*:.*$", out, re.M)
    assert recap and "changed=0" in recap.group(0) and "failed=1" in recap.group(0), out
    assert BAD[case][1] in _host_lines(out, case), out
    assert not (tmp / "esc").exists()


@pytest.mark.slow
def test_role_is_off_without_a_device(role_run: tuple[Path, str, int]) -> None:
    _, out, _ = role_run
    recap = re.search(r"^off\s*:.*$", out, re.M)
    assert recap and "changed=0" in recap.group(0) and "failed=0" in recap.group(0), out
