"""Decisions of the disk_encryption role, as pure functions: format or refuse a device, which clevis
bindings to keep, add or remove, and the crypttab options. Pure so that they are unit tested."""

from __future__ import annotations

import json
import re
import shlex
from typing import Any

_SLOT_RE = re.compile(r"^\s*(\d+):\s+(\S+)\s+(.*)$")
_LUKS_TYPES = {"crypto_LUKS"}


def _signatures(wipefs: Any) -> list[dict[str, Any]]:
    """Signatures from `wipefs --no-act --json DEV` (text or parsed); empty output means none."""
    if isinstance(wipefs, str):
        wipefs = json.loads(wipefs) if wipefs.strip() else {}
    return list((wipefs or {}).get("signatures") or [])


def luks_probe_decision(wipefs: Any, key_opens: bool, force: bool, device: str) -> dict[str, Any]:
    """format | keep | refuse for a device, from what wipefs finds on it and whether this host's escrowed
    keyfile opens a LUKS header there. A header this role's keyfile opens is never formatted again, even
    with force."""
    sigs = _signatures(wipefs)
    types = sorted({str(s.get("type") or "unknown") for s in sigs})
    is_luks = bool(set(types) & _LUKS_TYPES)
    if is_luks and key_opens:
        return {"action": "keep", "wipe": False, "reason": f"{device} is already this role's LUKS volume"}
    if not sigs:
        return {"action": "format", "wipe": False, "reason": f"{device} holds no signature: formatting it"}
    found = ", ".join(
        f"{s.get('type') or 'unknown'} at offset {s.get('offset', '?')}"
        + (f" (label {s['label']})" if s.get("label") else "")
        for s in sigs
    )
    if force:
        return {
            "action": "format",
            "wipe": True,
            "reason": f"{device} holds {found}: disk_encryption_force_format is true, wiping and formatting it",
        }
    what = (
        "a LUKS header this host's escrowed keyfile does not open (made elsewhere, or escrowed keys "
        "that are not the ones it was formatted with)"
        if is_luks
        else (
            "a partition table"
            if any(t in ("gpt", "dos", "PMBR") for t in types)
            else "a filesystem or other data"
        )
    )
    return {
        "action": "refuse",
        "wipe": False,
        "reason": (
            f"refusing to format {device}: it holds {what} ({found}). Point disk_encryption_device at an "
            "empty device, or set disk_encryption_force_format: true to destroy what is on it."
        ),
    }


def clevis_slots(list_stdout: str) -> list[dict[str, Any]]:
    """Bindings from `clevis luks list -d DEV`: lines like `1: sss '{"t":1,"pins":{...}}'`."""
    slots = []
    for line in (list_stdout or "").splitlines():
        m = _SLOT_RE.match(line)
        if not m:
            continue
        raw = m.group(3).strip()
        try:
            parts = shlex.split(raw)
            config = json.loads(parts[0]) if parts else {}
        except ValueError:
            config = {}
        slots.append({"slot": int(m.group(1)), "pin": m.group(2), "config": config})
    return slots


def clevis_desired(
    unlock: str, servers: list[dict[str, Any]], threshold: int, pcr_bank: str = "sha256", pcr_ids: str = "7"
) -> dict[str, Any] | None:
    """The binding unlock asks for (None for `none`): pin and the config clevis lists it with."""
    if unlock == "tang":
        urls = [s["url"] for s in servers]
        return {"pin": "sss", "threshold": int(threshold), "urls": sorted(urls)}
    if unlock == "tpm2":
        return {"pin": "tpm2", "pcr_bank": pcr_bank, "pcr_ids": str(pcr_ids)}
    if unlock == "none":
        return None
    raise ValueError(f"unknown unlock method {unlock!r}: use tang, tpm2 or none")


def _matches(slot: dict[str, Any], desired: dict[str, Any]) -> bool:
    cfg = slot.get("config") or {}
    if desired["pin"] == "sss":
        if slot.get("pin") != "sss" or int(cfg.get("t", 0)) != desired["threshold"]:
            return False
        pins = cfg.get("pins") or {}
        if set(pins) != {"tang"}:
            return False
        tang = pins["tang"] if isinstance(pins["tang"], list) else [pins["tang"]]
        return sorted(str(t.get("url", "")) for t in tang) == desired["urls"]
    return (
        slot.get("pin") == "tpm2"
        and str(cfg.get("pcr_ids", "")) == desired["pcr_ids"]
        and cfg.get("pcr_bank", "sha256") == desired["pcr_bank"]
    )


def clevis_plan(
    slots: list[dict[str, Any]], desired: dict[str, Any] | None, rotated: list[int]
) -> dict[str, Any]:
    """Keep one binding that matches and whose Tang keys are still advertised; bind a new one first when
    none does, then remove the others (the volume is never left without a binding it had)."""
    keep = None
    if desired is not None:
        for s in slots:
            if s["slot"] not in rotated and _matches(s, desired):
                keep = s["slot"]
                break
    unbind = [s["slot"] for s in slots if s["slot"] != keep]
    reasons = []
    for s in slots:
        if s["slot"] == keep:
            continue
        if s["slot"] in rotated:
            reasons.append(f"slot {s['slot']}: the Tang keys it was bound to are no longer advertised")
        else:
            reasons.append(f"slot {s['slot']}: binding differs from the configured unlock")
    return {"bind": desired is not None and keep is None, "unbind": unbind, "keep": keep, "reasons": reasons}


def tang_servers(servers: list[Any] | None) -> list[dict[str, str]]:
    """Servers as [{url, thp}] with thp '' where none is given."""
    return [{"url": str(s["url"]), "thp": str(s.get("thp") or "")} for s in servers or []]


def _advs(advs: Any) -> dict[str, Any]:
    """url -> advertisement, from a dict or from the registered results of the role's uri loop."""
    if isinstance(advs, dict) and "results" in advs:
        advs = advs["results"]
    if isinstance(advs, list):
        return {r["item"]["url"]: r["content"] for r in advs if not r.get("skipped") and "content" in r}
    return dict(advs or {})


def clevis_bind_config(desired: dict[str, Any], servers: list[dict[str, Any]], advs: Any = None) -> str:
    """The JSON config for `clevis luks bind`: a server with a thumbprint is trusted by it, one without is
    pinned to the advertisement fetched for it (advs: url -> advertisement, or the uri loop's results)."""
    advs = _advs(advs)
    if desired["pin"] == "tpm2":
        return json.dumps({"pcr_bank": desired["pcr_bank"], "pcr_ids": desired["pcr_ids"]}, sort_keys=True)
    tang = []
    for s in servers:
        if s.get("thp"):
            tang.append({"url": s["url"], "thp": s["thp"]})
        else:
            adv = advs.get(s["url"])
            if adv is None:
                raise ValueError(f"no advertisement fetched for {s['url']}")
            tang.append({"url": s["url"], "adv": json.loads(adv) if isinstance(adv, str) else adv})
    return json.dumps({"t": int(desired["threshold"]), "pins": {"tang": tang}}, sort_keys=True)


def _boot_opts(first: str, unlock: str, extra: list[str] | None) -> str:
    opts = [first, *(["_netdev"] if unlock == "tang" else ["noauto"] if unlock == "none" else [])]
    opts += [o for o in dict.fromkeys(extra or []) if o not in opts]
    return ",".join(opts)


def luks_crypttab_opts(unlock: str, extra: list[str] | None = None) -> str:
    """crypttab options: Tang needs the network up first (`_netdev`), or boot waits for a prompt; with no
    unattended unlock the volume is not opened at boot (`noauto`) but by an operator."""
    return _boot_opts("luks", unlock, extra)


def luks_mount_opts(unlock: str, extra: list[str] | None = None) -> str:
    """fstab options for the opened volume; `_netdev` orders the mount after the network with Tang."""
    return _boot_opts("defaults", unlock, extra)


class FilterModule:
    def filters(self) -> dict[str, Any]:
        return {
            "deepseek_luks_probe_decision": luks_probe_decision,
            "deepseek_clevis_slots": clevis_slots,
            "deepseek_clevis_desired": clevis_desired,
            "deepseek_clevis_plan": clevis_plan,
            "deepseek_clevis_bind_config": clevis_bind_config,
            "deepseek_tang_servers": tang_servers,
            "deepseek_luks_crypttab_opts": luks_crypttab_opts,
            "deepseek_luks_mount_opts": luks_mount_opts,
        }
