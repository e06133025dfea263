"""Debian 13 for real: a trixie lab target converges from a trixie bundle with site.yml, and a Debian 12
bundle is refused by preflight before any change, naming both releases.

The target is a lab of its own (one host, its own prefix and subnet): the session's Debian 12 lab is not
booted for it. Its rootfs and bundle are mostly downloads: `prefetch` starts them in the background when
the session collects this file (tests/conftest.py), so they overlap the other lab tests. Timings are printed
(run with -s to see them)."""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from deepseek_node.demo import lab_bundle_spec, write_lab_group_vars
from deepseek_node.lab import Lab
from deepseek_node.lab.rootfs import ensure_rootfs
from deepseek_node.runner import RunConfig, RunResult, run
from tests.lab_fixtures import require_lab

pytestmark = [pytest.mark.lab, pytest.mark.slow]

SUITE = "trixie"
# Overridable like the session lab's; the defaults collide with neither it (dsnt, 10.78) nor the demo's.
PREFIX = os.environ.get("DEEPSEEK_NODE_TEST_TRIXIE_LAB_PREFIX", "dsnd")
SUBNET = os.environ.get("DEEPSEEK_NODE_TEST_TRIXIE_LAB_SUBNET", "10.79")
# What preflight must leave alone when it refuses a bundle: the published bundle and apt/pip's sources.
SNAPSHOT = "find /srv/deepseek-node /etc/apt /etc/pip.conf -printf '%p %s %T@ %m %u\\n' 2>/dev/null | sort | sha256sum"


def _timed(what: str, started: float) -> None:
    print(f"\n[trixie] {what}: {time.monotonic() - started:.1f} s")


@pytest.fixture(scope="module")
def trixie_lab(tmp_path_factory: pytest.TempPathFactory, trixie_bundle: Path) -> Iterator[Lab]:
    """One Debian 13 host (from the prefetched rootfs), booted for this module and always torn down."""
    require_lab()
    base = tmp_path_factory.mktemp("trixie-lab")
    inventory_dir = base / "inventory"
    inventory_dir.mkdir()
    lab = Lab(
        state_dir=base / "state", inventory_dir=inventory_dir, prefix=PREFIX, subnet=SUBNET, suite=SUITE
    )
    try:
        started = time.monotonic()
        lab.up(count=1)
        _timed("lab up", started)
        yield lab
    finally:
        lab.down()


def _build_bundle(out: Path) -> None:
    """A Debian 13 bundle like the session's `bundle_dir` (no GPU roles, no controller part); its debs and
    CPython 3.13 wheels are kept in the shared bundle cache, so only the first build downloads them."""
    from deepseek_node.bundle.apt import archive_source
    from deepseek_node.bundle.build import build_bundle

    spec = lab_bundle_spec(out, apt_source=archive_source(SUITE), controller=False)
    build_bundle(spec, progress=lambda _msg: None)


class _Prefetch(threading.Thread):
    """The trixie rootfs and bundle, built in the background; `result()` waits and re-raises."""

    def __init__(self) -> None:
        super().__init__(name="trixie-prefetch", daemon=True)
        self.out = Path(tempfile.mkdtemp(prefix="deepseek-node-trixie-")) / "bundle"
        self.error: BaseException | None = None
        self.seconds: dict[str, float] = {}

    def run(self) -> None:
        try:
            started = time.monotonic()
            ensure_rootfs(suite=SUITE)
            self.seconds["rootfs (cached after the first build)"] = time.monotonic() - started
            started = time.monotonic()
            _build_bundle(self.out)
            self.seconds["bundle build"] = time.monotonic() - started
        except BaseException as exc:  # re-raised in the test's thread
            self.error = exc

    def result(self) -> Path:
        self.join()
        for what, seconds in self.seconds.items():
            print(f"\n[trixie] {what} (in the background): {seconds:.1f} s")
        if self.error is not None:
            raise self.error
        return self.out


_prefetch: _Prefetch | None = None


def prefetch() -> None:
    """Start building the rootfs and bundle (once per session)."""
    global _prefetch
    if _prefetch is None:
        _prefetch = _Prefetch()
        _prefetch.start()


@pytest.fixture(scope="module")
def trixie_bundle() -> Iterator[Path]:
    prefetch()  # already running when the session collected this file
    assert _prefetch is not None
    out = _prefetch.result()
    yield out
    shutil.rmtree(out.parent, ignore_errors=True)


def _site(lab: Lab, **extravars: str) -> RunResult:
    inventory_dir = lab.inventory_path.parent
    return run(
        RunConfig(
            inventory=lab.inventory_path,
            limit=lab.names()[0],
            extravars=dict(extravars),
            artifacts_dir=inventory_dir / "runs",
        )
    )


@pytest.fixture(scope="module")
def converged(trixie_lab: Lab, trixie_bundle: Path) -> RunResult:
    write_lab_group_vars(trixie_lab.inventory_path.parent, trixie_bundle)
    started = time.monotonic()
    result = _site(trixie_lab)
    _timed(f"first converge (changed={result.changed})", started)
    return result


def _assert_ok(result: RunResult) -> None:
    assert result.ok, "site.yml failed:\n" + "\n".join(result.failures)


def test_a_debian_13_target_converges_from_a_debian_13_bundle(converged: RunResult, trixie_lab: Lab) -> None:
    _assert_ok(converged)
    assert converged.changed > 0
    host = trixie_lab.names()[0]
    out = trixie_lab.run(
        host,
        ". /etc/os-release; echo $VERSION_ID $VERSION_CODENAME; systemctl is-active deepseek-node; "
        "/opt/deepseek-node/venv/bin/python -c 'import sys; print(sys.version_info[:2])'",
    ).stdout.split("\n")
    assert out[0] == "13 trixie"
    assert out[1] == "active"
    assert out[2] == "(3, 13)"


def test_a_debian_12_bundle_is_refused_before_any_change(
    converged: RunResult, trixie_lab: Lab, bundle_dir: Path
) -> None:
    # After the converge, so that there is state to leave alone (refused whether or not it succeeded).
    host = trixie_lab.names()[0]
    before = trixie_lab.run(host, SNAPSHOT).stdout
    started = time.monotonic()
    result = _site(trixie_lab, deepseek_bundle_dir=str(bundle_dir))
    _timed("refusal run", started)
    assert not result.ok
    assert result.changed == 0
    why = next(f for f in result.failures if "the bundle is for" in f)
    assert "the bundle is for Debian 12 (amd64, Python 3.11)" in why
    assert "this host runs Debian 13" in why and "--suite trixie" in why
    assert trixie_lab.run(host, SNAPSHOT).stdout == before
