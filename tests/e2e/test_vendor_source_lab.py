"""A package from an extra signed apt repository goes into the bundle and installs on a target: a locally
built stand-in of NVIDIA's container toolkit repository, signed with its own key and served over HTTP on
this machine, as the connected side's mirror of NVIDIA's repositories would be."""

from __future__ import annotations

import functools
import http.server
import json
import shutil
import threading
from collections.abc import Iterator

import pytest

from deepseek_node.bundle.apt import AptSource, build_flat_repo, parse_extra_source
from tests.fixtures.standin_debs import build_deb, container_toolkit_debs

pytestmark = pytest.mark.lab


@pytest.fixture(scope="module")
def vendor_repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A flat repository of stand-in NVIDIA container toolkit packages, signed with its own key and served
    over HTTP on 127.0.0.1; yields its one-line apt source."""
    if shutil.which("apt-ftparchive") is None or shutil.which("gpg") is None:
        pytest.skip("needs apt-utils and gnupg (scripts/setup.sh installs them)")
    root = tmp_path_factory.mktemp("vendor")
    repo = root / "repo"
    for pkg in container_toolkit_debs():
        build_deb(pkg, repo)
    for leftover in repo.glob(".*.root"):
        shutil.rmtree(leftover)
    key = root / "vendor-keyring.asc"
    build_flat_repo(repo, "vendor", root / "gnupg", key)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(repo))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"deb [signed-by={key}] http://127.0.0.1:{server.server_address[1]}/ ./"
    finally:
        server.shutdown()


def test_a_package_from_a_signed_extra_source_goes_into_the_bundle_and_installs(
    vendor_repo: str, site: dict, lab, tmp_path_factory: pytest.TempPathFactory
) -> None:
    from deepseek_node.bundle.build import BundleSpec, build_bundle
    from deepseek_node.gpu import GPU_ROLES
    from deepseek_node.paths import cache_dir, project_root
    from deepseek_node.runner import RunConfig, run
    from deepseek_node.tiny_model import tiny_model_cached

    out = tmp_path_factory.mktemp("vendor-bundle") / "bundle"
    model = tmp_path_factory.mktemp("vendor-model") / "deepseek-tiny"
    shutil.copytree(tiny_model_cached(cache_dir()), model)
    build_bundle(
        BundleSpec(
            out=out,
            project_root=project_root(),
            model_dir=model,
            model_name="deepseek-tiny",
            cache=cache_dir() / "bundle",
            skip_roles=GPU_ROLES,
            apt_source=AptSource(extra=(parse_extra_source(vendor_repo),)),
            extra_apt_packages=("nvidia-container-toolkit",),
            controller=False,  # tested on its own (test_offline_controller_lab)
        ),
        progress=lambda _msg: None,
    )
    debs = {p.name.split("_")[0] for p in (out / "apt").glob("*.deb")}
    assert {"nvidia-container-toolkit", "nvidia-container-toolkit-base", "libnvidia-container1"} <= debs
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["apt"]["extra_sources"] == [parse_extra_source(vendor_repo).line("amd64")]
    # A host of its own (the session's first two are the end-to-end files' converged and bare hosts).
    host = lab.up(count=3)[2].name
    inventory_dir = site["inventory_dir"]
    try:
        result = run(
            RunConfig(
                inventory=lab.inventory_path,
                limit=host,
                tags=["preflight", "offline_repo"],
                extravars={"deepseek_bundle_dir": str(out)},
                artifacts_dir=inventory_dir / "runs",
            )
        )
        assert result.ok, result.failures
        lab.run(host, "DEBIAN_FRONTEND=noninteractive apt-get install -y -q nvidia-container-toolkit")
        status = lab.run(host, "dpkg-query -W -f '${Status} ${Version}' nvidia-container-toolkit").stdout
        assert status.startswith("install ok installed") and "+standin" in status
    finally:
        lab.run(host, "apt-get purge -y -q 'nvidia-container-toolkit*' 'libnvidia-container*'", check=False)
