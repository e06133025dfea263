"""The bundle's wheelhouse: this project's own wheel plus every wheel its `daemon` extra needs.

Versions are pinned to what the controller itself runs (its tested set), so a target gets exactly the
versions the project was tested with; targets install with `pip --no-index --find-links`.
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from importlib import metadata
from pathlib import Path

from deepseek_node import __version__
from deepseek_node.bundle.manifest import BundleError

PROJECT = "deepseek-node"


def controller_pins() -> list[str]:
    """`name==version` for every distribution installed beside the controller, except this project."""
    pins = {}
    for dist in metadata.distributions():
        name = dist.metadata["Name"]
        if name and name.lower().replace("_", "-") != PROJECT:
            pins[name.lower()] = f"{name}=={dist.version}"
    return sorted(pins.values())


def _pip(args: list[str], what: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-10:]
        raise BundleError(f"{what} failed (exit {proc.returncode}):\n  " + "\n  ".join(tail))


def build_wheelhouse(project_root: Path, dest: Path, extra: str = "daemon") -> str:
    """Fill `dest` with wheels; returns the requirement string targets install."""
    dest.mkdir(parents=True, exist_ok=True)
    _pip(
        ["wheel", "--quiet", "--no-deps", "--wheel-dir", str(dest), str(project_root)],
        "building the project wheel",
    )
    requirement = f"{PROJECT}[{extra}]=={__version__}"
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("\n".join(controller_pins()) + "\n")
        constraints = fh.name
    try:
        _pip(
            [
                "download", "--quiet", "--only-binary=:all:", "--dest", str(dest),
                "--find-links", str(dest), "--constraint", constraints, requirement,
            ],
            f"downloading wheels for {requirement}",
        )  # fmt: skip
    finally:
        Path(constraints).unlink(missing_ok=True)
    (dest / "requirements.txt").write_text(requirement + "\n")
    return requirement
