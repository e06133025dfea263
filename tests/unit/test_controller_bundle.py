"""The bundle's controller part: package list, wheelhouse lock, Ansible tree, manifest entry, and install.sh's
refusals (run for real against fake bundles, before anything is installed)."""

from __future__ import annotations

import os
import platform
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepseek_node import __version__, paths
from deepseek_node.bundle import controller as c
from deepseek_node.bundle.build import BundleSpec, build_bundle
from deepseek_node.bundle.manifest import BundleError, sha256_file, verify_bundle, write_manifest
from deepseek_node.bundle.wheels import Pin
from deepseek_node.cli.main import app
from tests.unit.test_bundle_build import _report, _wheel

INSTALL_SH = Path(c.__file__).with_name("install_controller.sh")


def test_the_controller_gets_what_provision_and_ansible_need_on_a_minimal_debian() -> None:
    assert {"python3", "python3-venv", "openssh-client", "gnupg"} <= set(c.APT_PACKAGES)
    assert c.requirement() == f"deepseek-node[controller]=={__version__}"
    assert {"site.yml", "ansible.cfg", "roles", "playbooks", "plugins", "galaxy.yml", "meta"} <= set(c.TREE)
    assert "collections/ansible_collections/deepseek/node" in c.TREE  # the checkout's view of the collection


def test_controller_release_must_have_a_known_python() -> None:
    assert c.controller_target("bookworm").python_version == "3.11"
    with pytest.raises(BundleError, match="--controller-suite bookworm or trixie"):
        c.controller_target("jammy")


def _tree(root: Path) -> Path:
    for rel, text in {
        "ansible.cfg": "[defaults]\n",
        "site.yml": "---\n",
        "playbooks/x.yml": "---\n",
        "roles/r/tasks/main.yml": "---\n",
        "roles/r/files/real.py": "print('checker')\n",
        "plugins/filter/f.py": "X = 1\n",
        "galaxy.yml": "namespace: deepseek\n",
        "meta/runtime.yml": "---\n",
        "inventories/example/hosts.yml": "all: {}\n",
        "inventories/lab/hosts.yml": "not shipped\n",
    }.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "roles/r/files/link.py").symlink_to("real.py")
    view = root / "collections/ansible_collections/deepseek/node"
    view.mkdir(parents=True)
    (view / "roles").symlink_to("../../../../roles")
    (root / "plugins/filter/__pycache__").mkdir()
    (root / "plugins/filter/__pycache__/f.cpython-311.pyc").write_bytes(b"\0")
    return root


def test_tree_files_follow_links_and_leave_out_caches(tmp_path: Path) -> None:
    files = c.tree_files(_tree(tmp_path))
    assert "roles/r/files/link.py" in files and "inventories/example/hosts.yml" in files
    assert not [f for f in files if "__pycache__" in f or f.startswith("inventories/lab")]
    assert "collections/ansible_collections/deepseek/node/roles/r/tasks/main.yml" in files
    (tmp_path / "meta" / "runtime.yml").unlink()
    (tmp_path / "meta").rmdir()
    with pytest.raises(BundleError, match="meta is missing"):
        c.tree_files(tmp_path)


def test_controller_id_follows_the_lock_and_the_tree() -> None:
    base = c.controller_id("a==1 --hash=sha256:00\n", {"site.yml": "11"})
    assert base == c.controller_id("a==1 --hash=sha256:00\n", {"site.yml": "11"})
    assert len(base) == 16 and int(base, 16) >= 0
    assert base != c.controller_id("a==2 --hash=sha256:00\n", {"site.yml": "11"})
    assert base != c.controller_id("a==1 --hash=sha256:00\n", {"site.yml": "12"})


def test_env_file_holds_plain_values_only() -> None:
    target = {
        "distribution": "Debian",
        "release": "12",
        "suite": "bookworm",
        "arch": "amd64",
        "python": "3.11",
    }
    text = c.render_env(c.env_values(target, c.APT_PACKAGES, "0123456789abcdef", "keys/k.asc"))
    assert "DISTRIBUTION=debian\n" in text and "RELEASE=12\n" in text
    assert f"APT_PACKAGES={' '.join(c.APT_PACKAGES)}\n" in text
    for bad in ("$(reboot)", "a\nB=c", "'q'", "`x`", "a;b"):
        with pytest.raises(ValueError):
            c.render_env({"KEY": bad})
    with pytest.raises(ValueError):
        c.render_env({"lower": "x"})


def test_the_project_pin_is_told_apart() -> None:
    own = Pin("deepseek-node", "0.1.0", "file:///w/deepseek_node-0.1.0-py3-none-any.whl", None)
    dep = Pin("ansible-core", "2.19.14", "https://x/ansible_core-2.19.14-py3-none-any.whl", "aa")
    assert c.split_project([dep, own]) == (own, [dep])
    assert c.split_project([dep]) == (None, [dep])


class FakeApt:
    def download_closure(self, packages: list[str], dest: Path) -> list[Path]:
        dest.mkdir(parents=True, exist_ok=True)
        debs = [dest / f"{p}_1_amd64.deb" for p in packages]
        for deb in debs:
            deb.write_bytes(b"deb " + deb.name.encode())
        return debs


def _fake_flat_repo(repo: Path, suite: str, _home: Path, key: Path) -> None:
    (repo / "Release").write_text(f"Suite: {suite}\n")
    key.parent.mkdir(parents=True, exist_ok=True)
    key.write_text("KEY\n")


def test_build_writes_a_locked_wheelhouse_the_tree_and_the_installer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    index, built = tmp_path / "index", tmp_path / "built"
    index.mkdir()
    built.mkdir()
    dep = _wheel(index, "ansible_core", "2.19.14")
    own = _wheel(built, "deepseek_node", __version__)
    report = _report(
        ("deepseek-node", __version__, own.as_uri(), sha256_file(own)),
        ("ansible-core", "2.19.14", dep.as_uri(), sha256_file(dep)),
    )
    monkeypatch.setattr(c, "resolve_report", lambda *_a, **_k: report)
    monkeypatch.setattr(c, "build_flat_repo", _fake_flat_repo)
    staging = tmp_path / "bundle"
    entry = c.build_controller(
        staging,
        project_root=_tree(tmp_path / "project"),
        project_wheel=own,
        apt=FakeApt(),  # type: ignore[arg-type]
        suite="bookworm",
        arch="amd64",
        gnupg_home=tmp_path / "gnupg",
        key="keys/k.asc",
        cache=tmp_path / "cache",
        progress=lambda _m: None,
    )
    ctl = staging / "controller"
    assert entry["install"] == "controller/install.sh" and entry["wheels"] == 2
    assert entry["pins"] == ["ansible-core==2.19.14", f"deepseek-node=={__version__}"]
    assert entry["target"]["release"] == "12" and entry["debs"] == len(c.APT_PACKAGES)
    assert os.stat(ctl / "install.sh").st_mode & stat.S_IXUSR
    assert (ctl / "bundle_manifest.py").read_bytes() == Path(c.manifest_module.__file__).read_bytes()
    env = (ctl / "controller.env").read_text()
    assert f"CONTROLLER_ID={entry['id']}\n" in env and "KEY=keys/k.asc\n" in env
    assert (ctl / "ansible/roles/r/files/link.py").is_file() and not (
        ctl / "ansible/roles/r/files/link.py"
    ).is_symlink()
    assert not (ctl / "ansible/plugins/filter/__pycache__").exists()
    lock = (ctl / "wheels" / c.LOCK).read_text()
    assert f"ansible-core==2.19.14 --hash=sha256:{sha256_file(dep)}" in lock
    assert f"deepseek-node=={__version__} --hash=sha256:{sha256_file(own)}" in lock
    # What install.sh runs: no index, every hash required; an altered wheel is refused.
    pip = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--isolated",
        "--target",
        str(tmp_path / "site"),
    ]
    args = [*c.INSTALL_ARGS, "--find-links", str(ctl / "wheels"), "-r", str(ctl / "wheels" / c.LOCK)]
    subprocess.run([*pip, *args], check=True, capture_output=True)
    assert sorted(p.name for p in (tmp_path / "site").glob("*.dist-info")) == [
        "ansible_core-2.19.14.dist-info", f"deepseek_node-{__version__}.dist-info",
    ]  # fmt: skip
    _wheel(ctl / "wheels", "ansible_core", "2.19.14", body="ALTERED = True\n")
    bad = subprocess.run([*pip, "--upgrade", *args], capture_output=True, text=True)
    assert bad.returncode != 0 and "HASH" in bad.stderr.upper()


def test_an_unfit_controller_release_is_refused_before_anything(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "w.safetensors").write_bytes(b"x")
    (model / "tokenizer.json").write_text("{}")
    spec = BundleSpec(
        out=tmp_path / "out",
        project_root=paths.project_root(),
        model_dir=model,
        model_name="m",
        cache=tmp_path / "c",
        controller_suite="noble",
    )
    assert spec.controller_source.suite == "noble" and spec.controller_source.extra == ()
    assert BundleSpec(**{**spec.__dict__, "controller_suite": None}).controller_source.suite == "bookworm"
    with pytest.raises(BundleError, match="controller part"):
        build_bundle(spec, progress=lambda _m: None)
    assert not (tmp_path / "c").exists() and not (tmp_path / "out").exists()


# --- install.sh against fake bundles: each refusal comes before any change ---------------------------------


def _this_machine() -> dict[str, str]:
    info = dict(
        line.split("=", 1) for line in Path("/etc/os-release").read_text().splitlines() if "=" in line
    )
    arch = subprocess.run(["dpkg", "--print-architecture"], capture_output=True, text=True)
    return {
        "DISTRIBUTION": info.get("ID", "?").strip('"'),
        "RELEASE": info.get("VERSION_ID", "?").strip('"'),
        "ARCH": arch.stdout.strip() if arch.returncode == 0 else platform.machine(),
    }


@pytest.fixture
def fake_bundle(tmp_path: Path) -> Path:
    """A bundle with a controller part for this machine, whose every step would be a no-op (dpkg is installed)."""
    if not (Path("/usr/bin/python3").is_file() and Path("/etc/os-release").is_file()):
        pytest.skip("needs /usr/bin/python3 and /etc/os-release, as a Debian controller has")
    root = tmp_path / "bundle"
    ctl = root / "controller"
    (ctl / "apt").mkdir(parents=True)
    (ctl / "apt" / "dpkg_1_all.deb").write_bytes(b"deb")
    shutil.copyfile(INSTALL_SH, ctl / "install.sh")
    shutil.copyfile(Path(c.manifest_module.__file__), ctl / "bundle_manifest.py")
    env = {
        **c.env_values(
            {"distribution": "x", "release": "x", "suite": "bookworm", "arch": "x", "python": "3.11"},
            ("dpkg",),
            "0123456789abcdef",
            "keys/k.asc",
        ),
        **_this_machine(),
    }
    (ctl / "controller.env").write_text(c.render_env(env))
    (root / "keys").mkdir()
    (root / "keys" / "k.asc").write_text("KEY\n")
    write_manifest(root, {"controller": {"install": "controller/install.sh"}})
    return root


def _install(bundle: Path, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "DEEPSEEK_NODE_PREFIX": str(tmp_path / "opt"),
        "DEEPSEEK_NODE_BINDIR": str(tmp_path / "bin"),
    }
    return subprocess.run(
        ["bash", str(bundle / "controller" / "install.sh")],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )


def _nothing_installed(tmp_path: Path) -> bool:
    return not (tmp_path / "opt").exists() and not (tmp_path / "bin").exists()


def test_install_refuses_a_damaged_bundle_naming_the_file(fake_bundle: Path, tmp_path: Path) -> None:
    assert verify_bundle(fake_bundle).ok
    (fake_bundle / "controller" / "apt" / "dpkg_1_all.deb").write_bytes(b"altered")
    (fake_bundle / "controller" / "apt" / "extra.deb").write_bytes(b"smuggled")
    r = _install(fake_bundle, tmp_path)
    assert r.returncode == 1
    assert "altered (size or sha256 differs): controller/apt/dpkg_1_all.deb" in r.stderr
    assert "not in manifest: controller/apt/extra.deb" in r.stderr
    assert "nothing was installed" in r.stderr and "Copy it again" in r.stderr
    assert _nothing_installed(tmp_path)


def test_install_refuses_a_bundle_for_another_release(fake_bundle: Path, tmp_path: Path) -> None:
    env = fake_bundle / "controller" / "controller.env"
    env.write_text(env.read_text().replace("RELEASE=", "RELEASE=99"))
    r = _install(fake_bundle, tmp_path)
    assert r.returncode == 1
    assert "controller part is for" in r.stderr and " 99" in r.stderr and "this machine runs" in r.stderr
    assert "--controller-suite" in r.stderr
    assert _nothing_installed(tmp_path)


def test_install_refuses_a_bundle_without_a_controller_part(fake_bundle: Path, tmp_path: Path) -> None:
    (fake_bundle / "controller" / "controller.env").unlink()
    r = _install(fake_bundle, tmp_path)
    assert (
        r.returncode == 1 and "controller.env is missing" in r.stderr and "--without-controller" in r.stderr
    )
    assert _nothing_installed(tmp_path)


def test_install_refuses_a_link_it_does_not_own(fake_bundle: Path, tmp_path: Path) -> None:
    """Past the checks, as root: a `provision` on PATH that is not deepseek-node's is left alone."""
    if os.geteuid() != 0:
        pytest.skip("the install steps run as root")
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "provision").write_text("#!/bin/sh\n")
    ctl = fake_bundle / "controller"
    prefix = tmp_path / "opt" / "0123456789abcdef"
    # An install already in place (its `pip check` passes), its tree the bundle's: only checked.
    (ctl / "ansible").mkdir()
    (prefix / "share" / "deepseek-node").mkdir(parents=True)
    (prefix / ".installed").write_text("0123456789abcdef\n")
    (prefix / "bin").mkdir()
    (prefix / "bin" / "python").write_text("#!/bin/sh\nexit 0\n")
    (prefix / "bin" / "python").chmod(0o755)
    r = _install(fake_bundle, tmp_path)
    assert r.returncode == 1, r.stdout + r.stderr
    assert f"{tmp_path}/bin/provision exists and is not deepseek-node's link" in r.stderr
    assert "DEEPSEEK_NODE_BINDIR" in r.stderr
    assert (tmp_path / "bin" / "provision").read_text() == "#!/bin/sh\n"


def test_installed_tree_is_found_beside_the_virtualenv_and_keeps_runs_in_the_state_dir(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "prefix", str(tmp_path / "venv"))
    tree = paths.installed_tree()
    assert tree == tmp_path / "venv" / "share" / "deepseek-node"
    monkeypatch.setenv("DEEPSEEK_NODE_STATE", str(tmp_path / "state"))
    monkeypatch.setattr(paths, "project_root", lambda: tree)
    assert paths.artifacts_root() == tmp_path / "state" / "artifacts"
    monkeypatch.setattr(paths, "project_root", lambda: tmp_path / "checkout")
    assert paths.artifacts_root() == tmp_path / "checkout" / "artifacts"


def test_version_option() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.strip() == f"deepseek-node {__version__}"
