"""The vertical slice, for real: lab targets → offline bundle → site.yml → the daemon answering the
official openai client over TLS; a second run changes nothing; a tampered bundle installs nothing."""

from __future__ import annotations

import shutil
import ssl
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from deepseek_node.demo import chat, endpoint_for
from deepseek_node.runner import RunConfig, RunResult, run

pytestmark = pytest.mark.lab


def _assert_ok(result: RunResult) -> None:
    assert result.ok, "site.yml failed:\n" + "\n".join(result.failures)


def test_site_converges(site: dict) -> None:
    _assert_ok(site["first"])
    assert site["first"].changed > 0


def test_openai_client_chat_over_tls(site: dict) -> None:
    _assert_ok(site["first"])
    ep = endpoint_for(site["hosts"][0].address, site["inventory_dir"])
    text = chat(ep, "Hello, how are you today?")
    assert isinstance(text, str) and text.strip()
    streamed = chat(ep, "Write a short poem about the sea.", stream=True)
    assert streamed.strip()


def test_api_refuses_requests_without_key_and_untrusted_tls(site: dict) -> None:
    _assert_ok(site["first"])
    ep = endpoint_for(site["hosts"][0].address, site["inventory_dir"])
    ctx = ssl.create_default_context(cafile=str(ep.ca_cert))
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(ep.base_url + "/models", context=ctx, timeout=30)
    assert err.value.code == 401
    live = urllib.request.urlopen(ep.base_url.removesuffix("/v1") + "/health/live", context=ctx, timeout=30)
    assert live.status == 200
    # Without the lab CA the certificate is not trusted: the client refuses before sending anything.
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(ep.base_url + "/models", context=ssl.create_default_context(), timeout=30)


def test_host_state_is_hardened(site: dict, lab) -> None:
    _assert_ok(site["first"])
    name = site["hosts"][0].name
    out = lab.run(
        name,
        "stat -c '%a %U' /etc/deepseek-node/tls/server.key /etc/deepseek-node/daemon.yaml; "
        "systemctl show -p User -p ActiveState deepseek-node; ip route; "
        "grep -h '^[^#]' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true",
    ).stdout
    assert "600 root" in out and "640 root" in out
    assert "User=deepseek" in out and "ActiveState=active" in out
    assert "default" not in out  # no route out of the lab
    assert "deb.debian.org" not in out and "file:/srv/deepseek-node/bundle/apt" in out
    nested = lab.run(name, "find /var/lib/deepseek-node/models -path '*/figures/README.md'").stdout
    assert nested.strip(), "a nested model file was not synced"
    cfg = lab.run(name, "cat /etc/deepseek-node/daemon.yaml").stdout
    key = (site["inventory_dir"] / "secrets" / "api_key").read_text().strip()
    assert key not in cfg and "sha256" in cfg


def test_second_run_changes_nothing(site: dict, lab) -> None:
    _assert_ok(site["first"])
    inv = site["inventory_dir"]
    again = run(
        RunConfig(inventory=lab.inventory_path, limit=site["hosts"][0].name, artifacts_dir=inv / "runs")
    )
    _assert_ok(again)
    assert again.changed == 0, f"second run changed {again.changed} tasks: {again.artifacts}"
    print(f"second run: {again.seconds:.1f}s, changed=0")


def test_check_mode_on_a_converged_host_predicts_no_change(site: dict, lab) -> None:
    _assert_ok(site["first"])
    inv = site["inventory_dir"]
    preview = run(
        RunConfig(
            inventory=lab.inventory_path,
            limit=site["hosts"][0].name,
            check=True,
            diff=True,
            artifacts_dir=inv / "runs",
        )
    )
    _assert_ok(preview)
    assert preview.changed == 0, f"--check predicted {preview.changed} changes: {preview.artifacts}"


def test_tampered_bundle_fails_before_anything_is_installed(
    site: dict, lab, bundle_dir: Path, tmp_path: Path
) -> None:
    tampered = tmp_path / "tampered"
    shutil.copytree(bundle_dir, tampered)
    deb = sorted((tampered / "apt").glob("*.deb"))[0]
    deb.write_bytes(deb.read_bytes()[:-1] + b"\0")
    bare = site["hosts"][1].name
    result = run(
        RunConfig(
            inventory=lab.inventory_path,
            limit=bare,
            extravars={"deepseek_bundle_dir": str(tampered)},
            artifacts_dir=site["inventory_dir"] / "runs",
        )
    )
    assert not result.ok
    assert any("Verify the bundle on the controller" in f for f in result.failures), result.failures
    assert any(deb.name in f for f in result.failures)
    probe = lab.run(
        bare, "test -e /srv/deepseek-node || echo clean; dpkg -s python3-venv >/dev/null 2>&1 || echo none"
    )
    assert "clean" in probe.stdout and "none" in probe.stdout


def test_preflight_refuses_a_host_without_room_before_any_change(site: dict, lab) -> None:
    bare = site["hosts"][1].name
    result = run(
        RunConfig(
            inventory=lab.inventory_path,
            limit=bare,
            extravars={"preflight_min_free_gib": 10_000_000},  # 10 PiB left free: no disk has that
            artifacts_dir=site["inventory_dir"] / "runs",
        )
    )
    assert not result.ok
    failure = next(f for f in result.failures if "cannot be provisioned" in f)
    assert "the offline bundle" in failure and "the model" in failure and "preflight_min_free_gib" in failure
    probe = lab.run(
        bare, "test -e /srv/deepseek-node || echo clean; dpkg -s python3-venv >/dev/null 2>&1 || echo none"
    )
    assert "clean" in probe.stdout and "none" in probe.stdout


def test_check_mode_on_a_new_host_previews_and_changes_nothing(site: dict, lab) -> None:
    """--check on a bare host predicts the first changes and stops its preview, with the reason, where the
    rest depends on what is not installed yet; after the bundle is published it previews further."""
    bare = site["hosts"][1].name

    def preview() -> RunResult:
        result = run(
            RunConfig(
                inventory=lab.inventory_path,
                limit=bare,
                check=True,
                artifacts_dir=site["inventory_dir"] / "runs",
            )
        )
        _assert_ok(result)
        assert result.changed > 0
        return result

    preview()
    probe = lab.run(
        bare,
        "test -e /srv/deepseek-node || echo clean; test -e /etc/apt/keyrings/deepseek-node-offline.asc || echo nokey",
    )
    assert "clean" in probe.stdout and "nokey" in probe.stdout
    published = run(
        RunConfig(
            inventory=lab.inventory_path,
            limit=bare,
            tags=["preflight", "offline_repo"],
            artifacts_dir=site["inventory_dir"] / "runs",
        )
    )
    _assert_ok(published)
    preview()  # now past the repository, up to the roles whose foundation is not installed yet
    probe = lab.run(
        bare, "dpkg -s python3-cryptography >/dev/null 2>&1 || echo none; id deepseek || echo nouser"
    )
    assert "none" in probe.stdout and "nouser" in probe.stdout


def test_certificate_reissued_by_a_tls_only_run_is_served_at_once(site: dict, lab) -> None:
    """`--tags tls` leaves the inference play out: the tls role itself reloads the running daemon."""
    _assert_ok(site["first"])
    host = site["hosts"][0]
    lab.run(host.name, "rm /etc/deepseek-node/tls/server.crt")
    result = run(
        RunConfig(
            inventory=lab.inventory_path,
            limit=host.name,
            tags=["tls"],
            artifacts_dir=site["inventory_dir"] / "runs",
        )
    )
    _assert_ok(result)
    assert result.changed >= 2  # the certificate and the reload
    on_disk = lab.run(host.name, "cat /etc/deepseek-node/tls/server.crt").stdout
    ep = endpoint_for(host.address, site["inventory_dir"])
    deadline = time.monotonic() + 120
    while True:  # the restarted daemon listens again once its model is loaded
        try:
            served = ssl.get_server_certificate((host.address, 8443), timeout=5)
            if ssl.PEM_cert_to_DER_cert(served) == ssl.PEM_cert_to_DER_cert(on_disk):
                break
        except OSError:
            pass
        assert time.monotonic() < deadline, "the daemon does not serve the re-issued certificate"
        time.sleep(1)
    ctx = ssl.create_default_context(cafile=str(ep.ca_cert))
    ready = urllib.request.Request(
        ep.base_url.removesuffix("/v1") + "/health/ready", headers={"Authorization": f"Bearer {ep.api_key}"}
    )
    while True:  # it listens (and answers 503) while the model loads
        try:
            if urllib.request.urlopen(ready, context=ctx, timeout=10).status == 200:
                break
        except (urllib.error.URLError, OSError):
            pass
        assert time.monotonic() < deadline, "the restarted daemon never became ready"
        time.sleep(1)
    assert chat(ep, "Hello again").strip()
