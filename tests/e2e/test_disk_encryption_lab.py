"""disk_encryption for real on the converged lab host: a file-backed device formatted as LUKS2, a recovery
keyslot, a clevis binding to a Tang server on the controller, crypttab/fstab entries, idempotence, safe
mode (a device holding a filesystem is refused and left untouched) and a rebind after Tang key rotation.

The lab's containers have no device-mapper, so the role runs with disk_encryption_open: false: nothing
is opened or mounted. Everything else runs for real. The host is put back as site.yml leaves it."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepseek_node.runner import RunConfig, RunResult, run

pytestmark = [pytest.mark.lab, pytest.mark.slow]

TANGD = Path("/usr/libexec/tangd")
TANG_KEYGEN = Path("/usr/libexec/tangd-keygen")
TANG_PORT = 7571
DEVICE = "/var/lib/deepseek-node-luks-test/volume.img"
FS_DEVICE = "/var/lib/deepseek-node-luks-test/holds-ext4.img"
VAULT_PASSWORD = "lab-vault-password-for-luks-escrow"


def _wait_port(address: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((address, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"tang did not listen on {address}:{port}")


@pytest.fixture(scope="module")
def tang(site: dict, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """Debian's tangd on the controller's lab address, socket-activated per connection, own key dir."""
    if not TANGD.exists() or shutil.which("systemd-socket-activate") is None:
        msg = "the Tang server is missing: apt-get install -y tang (scripts/setup.sh installs it)"
        if os.environ.get("CI"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)
    keys = tmp_path_factory.mktemp("tang") / "db"
    keys.mkdir()
    subprocess.run([str(TANG_KEYGEN), str(keys)], check=True)
    address = site["hosts"][0].controller_address
    with socket.socket() as probe:
        if probe.connect_ex((address, TANG_PORT)) == 0:
            pytest.fail(
                f"{address}:{TANG_PORT} is already taken: another Tang server would answer", pytrace=False
            )
    proc = subprocess.Popen(
        [
            "systemd-socket-activate",
            "--accept",
            "--inetd",
            "-l",
            f"{address}:{TANG_PORT}",
            str(TANGD),
            str(keys),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_port(address, TANG_PORT)
        assert proc.poll() is None, "the Tang server exited (its address is taken?)"
        yield {"url": f"http://{address}:{TANG_PORT}", "keys": keys}
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.fixture(scope="module")
def host(site: dict, lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict]:
    """The converged host with two test devices; afterwards its files, packages and boot entries are put
    back as site.yml left them and the escrowed keys are removed."""
    assert site["first"].ok, "site.yml failed:\n" + "\n".join(site["first"].failures)
    name = site["hosts"][0].name
    vault_file = tmp_path_factory.mktemp("vault") / "password"
    vault_file.write_text(VAULT_PASSWORD + "\n")
    vault_file.chmod(0o600)
    before = lab.run(
        name,
        "dpkg-query -W -f='${Package}\\n' | sort > /root/.luks-test-packages; "
        "for f in /etc/crypttab /etc/fstab; do [ -e $f ] && cp -a $f $f.luks-test; done; "
        "[ -d /etc/ansible/facts.d ] && echo facts-dir-existed; "
        f"mkdir -p {Path(DEVICE).parent} && truncate -s 64M {DEVICE} && truncate -s 16M {FS_DEVICE} "
        f"&& mkfs.ext4 -q -F {FS_DEVICE}",
    ).stdout
    try:
        yield {"name": name, "vault_file": vault_file, "inventory_dir": site["inventory_dir"]}
    finally:
        restore = (
            "for f in /etc/crypttab /etc/fstab; do if [ -e $f.luks-test ]; then mv $f.luks-test $f; "
            "else rm -f $f; fi; done; rm -f /etc/ansible/facts.d/disk_encryption.fact; "
            + (
                ""
                if "facts-dir-existed" in before
                else "rmdir /etc/ansible/facts.d /etc/ansible 2>/dev/null; "
            )
            + f"rm -rf {Path(DEVICE).parent}; "
            "new=$(dpkg-query -W -f='${Package}\\n' | sort | comm -13 /root/.luks-test-packages -); "
            '[ -z "$new" ] || DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq $new >/dev/null; '
            "rm -f /root/.luks-test-packages; systemctl daemon-reload"
        )
        lab.run(name, restore, timeout=300)
        shutil.rmtree(site["inventory_dir"] / "secrets" / "luks", ignore_errors=True)


def _vars(tang: dict, device: str = DEVICE, **extra: object) -> dict:
    return {
        "disk_encryption_device": device,
        "disk_encryption_unlock": "tang",
        "disk_encryption_tang_servers": [{"url": tang["url"]}],
        "disk_encryption_tang_threshold": 1,
        # The lab's containers have no device-mapper: stop before opening and mounting.
        "disk_encryption_open": False,
        # Cheaper key derivation for a test volume on a 2-core machine (still argon2id).
        "disk_encryption_pbkdf_iter_time_ms": 200,
        "disk_encryption_pbkdf_memory_kib": 65536,
        **extra,
    }


def _run(lab, host: dict, extravars: dict, vault: bool = True) -> RunResult:
    env_key = "ANSIBLE_VAULT_PASSWORD_FILE"
    saved = os.environ.pop(env_key, None)
    if vault:
        os.environ[env_key] = str(host["vault_file"])
    try:
        return run(
            RunConfig(
                inventory=lab.inventory_path,
                limit=host["name"],
                tags=["disk_encryption"],
                extravars=extravars,
                artifacts_dir=host["inventory_dir"] / "runs",
            )
        )
    finally:
        os.environ.pop(env_key, None)
        if saved is not None:
            os.environ[env_key] = saved


def _sha(lab, host: dict, path: str) -> str:
    return lab.run(host["name"], f"sha256sum {path}").stdout.split()[0]


def test_plain_escrow_is_refused_without_a_vault_secret(lab, host: dict, tang: dict) -> None:
    before = _sha(lab, host, DEVICE)
    result = _run(lab, host, _vars(tang, disk_encryption_allow_plain_escrow=False), vault=False)
    assert not result.ok
    assert any("no ansible-vault secret is configured" in f for f in result.failures), result.failures
    assert not (host["inventory_dir"] / "secrets" / "luks").exists()
    assert _sha(lab, host, DEVICE) == before


def test_format_keyslots_binding_and_boot_entries(lab, host: dict, tang: dict) -> None:
    t0 = time.monotonic()
    first = _run(lab, host, _vars(tang))
    assert first.ok, "\n".join(first.failures)
    assert first.changed > 0
    print(f"first run: {time.monotonic() - t0:.0f} s, {first.changed} changed")
    name = host["name"]

    dump = lab.run(name, f"cryptsetup luksDump {DEVICE}").stdout
    assert re.search(r"^Version:\s+2$", dump, re.M), dump
    assert re.search(r"^\s+cipher: aes-xts-plain64$", dump, re.M), dump
    assert re.search(r"^Label:\s+deepseek-data$", dump, re.M), dump
    keyslots = dump.split("Keyslots:")[1].split("Tokens:")[0]
    assert keyslots.count("Key:        512 bits") == 3, keyslots  # keyfile, recovery passphrase, clevis
    assert keyslots.count("PBKDF:      argon2id") == 2, keyslots  # clevis's own slot is pbkdf2 (random key)
    assert "clevis" in dump.split("Tokens:")[1]

    bindings = lab.run(name, f"clevis luks list -d {DEVICE}").stdout
    assert bindings.count("\n") == 1 and f'"url":"{tang["url"]}"' in bindings and " sss " in bindings

    esc = host["inventory_dir"] / "secrets" / "luks" / name
    assert oct(esc.stat().st_mode & 0o777) == "0o700"
    for f in ("keyfile", "recovery-passphrase"):
        assert oct((esc / f).stat().st_mode & 0o777) == "0o600"
        assert (esc / f).read_bytes().startswith(b"$ANSIBLE_VAULT;1.1;AES256")
    # The escrowed recovery passphrase (decrypted with the vault password) opens the volume.
    from ansible.parsing.vault import VaultLib, VaultSecret

    vault = VaultLib([("default", VaultSecret(VAULT_PASSWORD.encode()))])
    recovery = vault.decrypt((esc / "recovery-passphrase").read_bytes()).decode()
    probe = subprocess.run(
        [*lab.ssh_argv(name), f"cryptsetup open --test-passphrase --key-file=- {DEVICE}"],
        input=recovery,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert probe.returncode == 0, probe.stderr
    for text in (recovery, vault.decrypt((esc / "keyfile").read_bytes()).decode()):
        leaked = subprocess.run(
            ["grep", "-rlF", text, str(host["inventory_dir"] / "runs")], capture_output=True
        )
        assert leaked.returncode == 1, f"key material in run artifacts: {leaked.stdout!r}"

    uuid = lab.run(name, f"cryptsetup luksUUID {DEVICE}").stdout.strip()
    crypttab = lab.run(name, "cat /etc/crypttab").stdout.split()
    assert crypttab[-4:] == ["deepseek-data", f"UUID={uuid}", "none", "luks,_netdev"]
    fstab = lab.run(name, "cat /etc/fstab").stdout
    assert "/dev/mapper/deepseek-data /var/lib/deepseek-node ext4 defaults,_netdev 0 0" in fstab
    assert "/var/lib/deepseek-node/log /var/log/deepseek-node none bind," in fstab
    # Entries only: nothing was opened or mounted (no device-mapper here).
    assert "/var/lib/deepseek-node " not in lab.run(name, "cat /proc/mounts").stdout

    t0 = time.monotonic()
    again = _run(lab, host, _vars(tang))
    assert again.ok, "\n".join(again.failures)
    assert again.changed == 0, f"second run changed {again.changed} tasks: {again.artifacts}"
    print(f"second run: {time.monotonic() - t0:.0f} s")


def test_device_holding_a_filesystem_is_refused_and_untouched(lab, host: dict, tang: dict) -> None:
    before = _sha(lab, host, FS_DEVICE)
    result = _run(lab, host, _vars(tang, device=FS_DEVICE))
    assert not result.ok
    assert any(f"refusing to format {FS_DEVICE}" in f and "ext4" in f for f in result.failures), (
        result.failures
    )
    assert _sha(lab, host, FS_DEVICE) == before
    assert "ext4" in lab.run(host["name"], f"blkid -p -o value -s TYPE {FS_DEVICE}").stdout


def test_tang_key_rotation_rebinds(lab, host: dict, tang: dict) -> None:
    name = host["name"]
    old = sorted(p.name for p in tang["keys"].glob("*.jwk"))
    for p in tang["keys"].glob("*.jwk"):
        p.rename(p.with_name("." + p.name))  # hidden: still serve recovery, no longer advertised
    subprocess.run([str(TANG_KEYGEN), str(tang["keys"])], check=True)
    slot_before = lab.run(name, f"clevis luks list -d {DEVICE}").stdout.split(":")[0]
    assert lab.run(name, f"clevis luks report -q -d {DEVICE} -s {slot_before}", check=False).returncode == 1

    result = _run(lab, host, _vars(tang))
    assert result.ok, "\n".join(result.failures)
    assert result.changed > 0
    bindings = lab.run(name, f"clevis luks list -d {DEVICE}").stdout
    assert bindings.count("\n") == 1 and tang["url"] in bindings
    slot = bindings.split(":")[0]
    report = lab.run(name, f"clevis luks report -q -d {DEVICE} -s {slot}", check=False)
    assert report.returncode == 0, report.stdout + report.stderr
    assert not any(k.removesuffix(".jwk") in report.stdout for k in old)

    again = _run(lab, host, _vars(tang))
    assert again.ok and again.changed == 0, f"run after the rebind changed {again.changed}: {again.artifacts}"
