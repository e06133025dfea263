"""Assemble an offline bundle: apt repo + wheelhouse + model + manifest, written atomically.

What goes in comes from one description point: each role's `defaults/main.yml` declares the apt packages
it installs as `<role>_bundle_apt_packages`, and the build reads exactly those lists.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from deepseek_node import __version__
from deepseek_node.bundle.apt import AptSource, PrivateApt, build_flat_repo
from deepseek_node.bundle.manifest import MANIFEST, BundleError, write_manifest
from deepseek_node.bundle.wheels import build_wheelhouse

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


def role_apt_packages(project_root: Path, skip_roles: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """{role: [packages]} from every role's `<role>_bundle_apt_packages` default."""
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
        pkgs = data.get(f"{role}_bundle_apt_packages") or []
        if not isinstance(pkgs, list) or not all(isinstance(p, str) for p in pkgs):
            raise BundleError(f"{defaults}: {role}_bundle_apt_packages must be a list of package names")
        if pkgs:
            out[role] = pkgs
    return out


def _check_model_dir(model_dir: Path) -> None:
    if not (model_dir / "config.json").is_file():
        raise BundleError(
            f"{model_dir} has no config.json: pass a Hugging Face model directory "
            "(config.json, *.safetensors, tokenizer files) to --model-dir"
        )
    if not list(model_dir.glob("*.safetensors")):
        raise BundleError(
            f"{model_dir} has no *.safetensors weights: convert the checkpoint to safetensors first"
        )


def build_bundle(spec: BundleSpec, progress: Progress = print) -> dict:
    """Build into a sibling temp dir and rename into place: a failed build never leaves a half bundle."""
    _check_model_dir(spec.model_dir)
    if spec.out.exists() and any(spec.out.iterdir()) and not (spec.out / MANIFEST).is_file():
        raise BundleError(f"{spec.out} exists and is not a bundle: choose an empty or new --out directory")
    staging = spec.out.with_name(spec.out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    started = time.monotonic()
    try:
        packages = role_apt_packages(spec.project_root, spec.skip_roles)
        wanted = sorted({p for pkgs in packages.values() for p in pkgs} | set(spec.extra_apt_packages))
        progress(f"apt: resolving {len(wanted)} packages and their dependencies ({spec.apt_source.suite})")
        apt = PrivateApt(spec.cache / "apt-root", spec.apt_source)
        apt.update()
        debs = apt.download_closure(wanted, staging / "apt")
        build_flat_repo(staging / "apt", spec.apt_source.suite, spec.cache / "gnupg", staging / APT_KEY)
        progress(f"apt: {len(debs)} packages, signed flat repository")

        progress("wheels: project wheel and the daemon's dependencies")
        requirement = build_wheelhouse(spec.project_root, staging / "wheels")

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
                },
                "wheels": {"requirement": requirement},
                "model": {"name": spec.model_name, "path": f"models/{spec.model_name}"},
            },
        )
        if spec.out.exists():
            shutil.rmtree(spec.out)
        staging.rename(spec.out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
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
