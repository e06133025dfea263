"""Per-host LUKS key material, made and escrowed on the controller (it runs there, never on the target).

A random keyfile and a recovery passphrase per host live in one directory (0700, files 0600), encrypted
with the run's ansible-vault secret when one is configured (`--vault-password-file`, `--ask-vault-pass`,
ANSIBLE_VAULT_PASSWORD_FILE, vault ids). Without a vault secret it refuses, unless `allow_plain` is set.
Existing files are read back (decrypted) and never replaced; plain ones are encrypted in place once a
vault secret is configured. The material is returned to the task (which must be no_log) and nothing else.
"""

from __future__ import annotations

import os
import secrets
import string
from pathlib import Path
from typing import Any

from ansible import constants as C
from ansible.errors import AnsibleActionFail
from ansible.module_utils.parsing.convert_bool import boolean
from ansible.parsing.vault import VaultLib, is_encrypted, match_encrypt_secret
from ansible.plugins.action import ActionBase

KEYFILE = "keyfile"
RECOVERY = "recovery-passphrase"
# Unambiguous characters for a passphrase a person types at a console.
_RECOVERY_ALPHABET = "".join(c for c in string.ascii_lowercase + string.digits if c not in "l1o0")


def new_keyfile() -> str:
    """64 random characters from [A-Za-z0-9] (~381 bits); text, so it can be piped to cryptsetup."""
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(64))


def new_recovery_passphrase() -> str:
    """8 groups of 6 characters (~236 bits) separated by dashes."""
    return "-".join("".join(secrets.choice(_RECOVERY_ALPHABET) for _ in range(6)) for _ in range(8))


def _write_private(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)


def _encrypt_secret(vault: VaultLib | None) -> tuple[str, Any] | None:
    secrets_ = getattr(vault, "secrets", None) or []
    return (
        match_encrypt_secret(secrets_, encrypt_vault_id=C.DEFAULT_VAULT_ENCRYPT_IDENTITY)
        if secrets_
        else None
    )


def preflight(directory: Path, vault: VaultLib | None, allow_plain: bool) -> bool:
    """Refuse before anything is made: no vault secret without allow_plain, or escrowed files this run
    cannot decrypt. Reads no secret into the result. Returns whether a vault secret is configured."""
    enc = _encrypt_secret(vault)
    if enc is None and not allow_plain:
        raise AnsibleActionFail(
            "no ansible-vault secret is configured, so the LUKS keyfile and recovery passphrase for this host "
            f"would be escrowed in plain text under {directory}: run with --vault-password-file (or "
            "--ask-vault-pass, or ANSIBLE_VAULT_PASSWORD_FILE), or set disk_encryption_allow_plain_escrow: "
            "true to accept plain files (0600)."
        )
    for name in (KEYFILE, RECOVERY):
        path = directory / name
        if not path.is_file():
            continue
        data = path.read_bytes()
        if not data.strip():
            raise AnsibleActionFail(f"{path} is empty: restore it from a backup, or remove it to start over")
        if is_encrypted(data):
            if enc is None:
                raise AnsibleActionFail(
                    f"{path} is vault-encrypted but no vault secret is configured: run with the vault "
                    "password it was encrypted with."
                )
            try:
                vault.decrypt(data)  # type: ignore[union-attr]
            except Exception as exc:  # AnsibleVaultError and friends: the message names no secret
                raise AnsibleActionFail(
                    f"{path} cannot be decrypted with the configured vault secret ({exc}): run with the vault "
                    "password it was encrypted with."
                ) from None
    return enc is not None


def escrow(
    directory: Path, vault: VaultLib | None, allow_plain: bool, check_mode: bool = False
) -> tuple[dict[str, str], bool, list[str]]:
    """({keyfile, recovery}, changed, notes) for one host's directory; raises AnsibleActionFail on refusal."""
    preflight(directory, vault, allow_plain)
    enc = _encrypt_secret(vault)
    changed = False
    notes: list[str] = []
    out: dict[str, str] = {}
    if not directory.is_dir():
        changed = True
        if not check_mode:
            directory.mkdir(mode=0o700, parents=True)
    if directory.is_dir() and not check_mode and (directory.stat().st_mode & 0o777) != 0o700:
        directory.chmod(0o700)
        changed = True
    for name, make in ((KEYFILE, new_keyfile), (RECOVERY, new_recovery_passphrase)):
        path = directory / name
        if path.is_file():
            data = path.read_bytes()
            if is_encrypted(data):
                plain = vault.decrypt(data).decode()  # type: ignore[union-attr]
            else:
                plain = data.decode()
                if enc is not None:
                    changed = True
                    notes.append(f"{path}: encrypted with the vault secret")
                    if not check_mode:
                        _write_private(path, vault.encrypt(plain, secret=enc[1], vault_id=enc[0]))  # type: ignore[union-attr]
            if not check_mode and (path.stat().st_mode & 0o777) != 0o600:
                path.chmod(0o600)
                changed = True
            out[name] = plain.strip()
            continue
        plain = make()
        changed = True
        notes.append(f"{path}: created" + (" (vault-encrypted)" if enc else " (plain, 0600)"))
        if not check_mode:
            payload = vault.encrypt(plain, secret=enc[1], vault_id=enc[0]) if enc else plain.encode()  # type: ignore[union-attr]
            _write_private(path, payload)
        out[name] = plain
    return {"keyfile": out[KEYFILE], "recovery": out[RECOVERY]}, changed, notes


class ActionModule(ActionBase):
    TRANSFERS_FILES = False
    _VALID_ARGS = frozenset(("path", "allow_plain", "preflight"))

    def run(self, tmp: Any = None, task_vars: dict[str, Any] | None = None) -> dict[str, Any]:
        result = super().run(tmp, task_vars)
        args = self._task.args
        if not args.get("path"):
            raise AnsibleActionFail("path is required: the controller directory for this host's key material")
        directory = Path(os.path.expanduser(str(args["path"])))
        allow_plain = boolean(args.get("allow_plain", False), strict=True)
        if boolean(args.get("preflight", False), strict=True):
            vaulted = preflight(directory, self._loader._vault, allow_plain)
            result.update(changed=False, vault=vaulted, path=str(directory))
            return result
        keys, changed, notes = escrow(
            directory, self._loader._vault, allow_plain, check_mode=bool(self._task.check_mode)
        )
        result.update(changed=changed, material=keys, notes=notes, path=str(directory))
        return result
