#!/usr/bin/python
"""The versioned model store on a host: <models_dir>/<name>/<version>/ with a `current` symlink.

A module rather than `ansible.builtin.file state=link`: that module replaces a link by unlink + symlink,
so for a moment there is no `current` and a daemon (re)starting then finds no model. Here the new link is
made under a temporary name and renamed over `current` (rename(2) is atomic), the activation history that
rollback needs is kept beside it, and pruning, rollback and adopting an in-place model dir from earlier
releases are decided in one tested place.
"""

from __future__ import annotations

import os
import re
import shutil

DOCUMENTATION = r"""
module: deepseek_model_store
short_description: Versioned model directories with an atomically switched current link
description:
  - Manages C(ROOT/VERSION/) model directories, a C(ROOT/current) symlink and the activation history
    in C(ROOT/.history). A version counts as kept once its C(.verified) marker exists.
options:
  root:
    description: The model's directory, C(<models_dir>/<name>).
    type: path
    required: true
  state:
    description:
      - C(info) reports; C(adopted) moves a model synced in place by an earlier release (files directly
        in I(root)) into I(root)/I(version) without copying; C(current) points C(current) at I(version);
        C(rollback) points it at I(version) or the previous version; C(pruned) removes versions beyond
        I(keep), never the current or the previous one.
    type: str
    choices: [info, adopted, current, rollback, pruned]
    default: info
  version:
    description: The version to report on, adopt as, switch to or roll back to.
    type: str
  digest:
    description: With I(state=current), the marker content the version must carry to be switched to.
    type: str
  keep:
    description: With I(state=pruned), how many versions to keep (at least 2).
    type: int
    default: 3
"""

RETURN = r"""
current: {description: The version current points at after the task, type: str}
previous: {description: The version that was current before it, type: str}
versions: {description: Kept and unverified versions, most recently active first, type: list}
verified: {description: The I(version)'s marker content (null without a marker), type: str}
pruned: {description: Versions removed, type: list}
switched: {description: Whether current moved to another version (restart what serves it), type: bool}
"""

try:
    from ansible.module_utils.basic import AnsibleModule
except ImportError:  # imported by the unit tests without Ansible's module machinery
    AnsibleModule = None

CURRENT = "current"
HISTORY = ".history"
MARKER = ".verified"
VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


class StoreError(Exception):
    """A request that cannot be carried out; nothing was changed."""


def check_version(version):
    if not isinstance(version, str) or not VERSION_RE.fullmatch(version) or version == CURRENT:
        raise StoreError(
            f"model version {version!r} is invalid: use 1-64 letters, digits, '.', '_' or '-' "
            f"(not {CURRENT!r}); set it with `provision bundle build --model-version`"
        )


def versions_on_disk(root):
    """Version directories (not the link, not dot-names), whatever their state."""
    if not os.path.isdir(root):
        return []
    return sorted(
        n
        for n in os.listdir(root)
        if n != CURRENT
        and not n.startswith(".")
        and os.path.isdir(os.path.join(root, n))
        and not os.path.islink(os.path.join(root, n))
    )


def marker(root, version):
    try:
        with open(os.path.join(root, version, MARKER), encoding="utf-8") as fh:
            return fh.read().strip()
    except OSError:
        return None


def current_version(root):
    link = os.path.join(root, CURRENT)
    if not os.path.islink(link):
        return None
    return os.path.basename(os.readlink(link).rstrip("/")) or None


def read_history(root):
    try:
        with open(os.path.join(root, HISTORY), encoding="utf-8") as fh:
            return [line.strip() for line in fh if line.strip()]
    except OSError:
        return []


def with_activation(history, version):
    """History (oldest first, each version once) after `version` became current."""
    return [v for v in history if v != version] + [version]


def previous_version(history, current, kept):
    """The most recently active kept version other than the current one."""
    for v in reversed(history):
        if v != current and v in kept:
            return v
    return None


def ranked(history, on_disk, mtimes):
    """Versions on disk, most recently active first; never-activated ones after, newest first."""
    active = [v for v in reversed(history) if v in on_disk]
    rest = sorted((v for v in on_disk if v not in active), key=lambda v: mtimes.get(v, 0), reverse=True)
    return active + rest


def plan_prune(order, current, previous, keep):
    """Versions to remove so that `keep` remain; the current and previous ones always stay."""
    if keep < 2:
        raise StoreError(
            f"inference_daemon_model_keep_versions is {keep}: keep at least 2 (the current version and "
            "the previous one, for rollback)"
        )
    protected = [v for v in (current, previous) if v]
    kept = list(protected)
    for v in order:
        if len(kept) >= keep:
            break
        if v not in kept:
            kept.append(v)
    return [v for v in order if v not in kept]


def looks_in_place(root):
    """An earlier release's layout: the model's own files directly in ROOT and no `current` link."""
    if os.path.islink(os.path.join(root, CURRENT)) or not os.path.isdir(root):
        return False
    return os.path.isfile(os.path.join(root, "config.json"))


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_history(root, history):
    tmp = os.path.join(root, HISTORY + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write("".join(v + "\n" for v in history))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, os.path.join(root, HISTORY))


def switch(root, version):
    """Point ROOT/current at VERSION atomically (relative link, renamed over the old one)."""
    tmp = os.path.join(root, f".{CURRENT}.{os.getpid()}")
    if os.path.lexists(tmp):
        os.unlink(tmp)
    os.symlink(version, tmp)
    os.replace(tmp, os.path.join(root, CURRENT))
    _write_history(root, with_activation(read_history(root), version))
    _fsync_dir(root)


def adopt(root, version):
    """Move an in-place model dir to ROOT/VERSION by renames only (no byte is copied)."""
    parent, name = os.path.split(root.rstrip("/"))
    aside = os.path.join(parent, f".{name}.adopting")
    if os.path.lexists(aside):
        raise StoreError(f"{aside} exists from an interrupted adoption: move it back to {root} and run again")
    os.rename(root, aside)
    os.mkdir(root, 0o755)
    os.rename(aside, os.path.join(root, version))
    _fsync_dir(parent)


def describe(root, version=None):
    on_disk = versions_on_disk(root)
    history = read_history(root)
    current = current_version(root)
    kept = {v for v in on_disk if marker(root, v) is not None}
    mtimes = {v: os.stat(os.path.join(root, v)).st_mtime for v in on_disk}
    return {
        "current": current,
        "previous": previous_version(history, current, kept),
        "versions": ranked(history, on_disk, mtimes),
        "kept": sorted(kept),
        "verified": marker(root, version) if version else None,
        "history": history,
    }


def run(params, check_mode):
    """The module's logic without AnsibleModule (unit tested). Returns the result dict."""
    root, state, version = params["root"], params["state"], params.get("version")
    if version:
        check_version(version)
    info = describe(root, version)
    result = {"changed": False, "pruned": [], **info}
    if state == "info":
        return result
    if state == "adopted":
        if not version:
            raise StoreError("state=adopted needs the version to adopt the model as")
        if looks_in_place(root):
            result["changed"] = True
            result["adopted"] = version
            if not check_mode:
                adopt(root, version)
        return result
    if state in ("current", "rollback"):
        current = info["current"]
        if state == "rollback":
            target = version or info["previous"]
            if not target:
                raise StoreError(
                    f"no previous version of {os.path.basename(root)} is kept on this host (current: "
                    f"{current or 'none'}; kept: {', '.join(info['kept']) or 'none'}): nothing to roll back "
                    "to; nothing was changed"
                )
            if target not in info["kept"]:
                raise StoreError(
                    f"version {target} of {os.path.basename(root)} is not kept on this host (kept: "
                    f"{', '.join(info['kept']) or 'none'}): pick one of those with --to; nothing was changed"
                )
        else:
            if not version:
                raise StoreError("state=current needs the version to switch to")
            target = version
            want = params.get("digest")
            have = marker(root, target)
            # A --check preview may reach here before the version was transferred.
            if (have is None or (want and have != want)) and not check_mode:
                raise StoreError(
                    f"version {target} of {os.path.basename(root)} is not verified against the bundle's "
                    "manifest: current was not switched"
                )
        result["target"] = target
        result["switched"] = target != current
        if target != current:
            result["changed"] = True
            result["previous"] = current
            result["current"] = target
            if not check_mode:
                switch(root, target)
        return result
    if state == "pruned":
        doomed = plan_prune(info["versions"], info["current"], info["previous"], params.get("keep", 3))
        result["pruned"] = doomed
        result["changed"] = bool(doomed)
        if not check_mode:
            for v in doomed:
                shutil.rmtree(os.path.join(root, v))
        return result
    raise StoreError(f"unknown state {state!r}")


def main():
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "required": True},
            "state": {
                "type": "str",
                "default": "info",
                "choices": ["info", "adopted", "current", "rollback", "pruned"],
            },
            "version": {"type": "str"},
            "digest": {"type": "str"},
            "keep": {"type": "int", "default": 3},
        },
        supports_check_mode=True,
    )
    try:
        result = run(module.params, module.check_mode)
    except StoreError as exc:
        module.fail_json(msg=str(exc))
    except OSError as exc:
        module.fail_json(msg=f"{exc.filename or module.params['root']}: {exc.strerror or exc}")
    module.exit_json(**result)


if __name__ == "__main__":
    main()
