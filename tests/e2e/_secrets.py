"""Find generated secrets where they must never be: logs, run artifacts, the full Ansible output.

Shared by the end-to-end files so every lab run is searched the same way."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

# A PEM body line is 64 base64 characters: any one of them appearing elsewhere is a leak of the key.
_PEM_LINE = re.compile(r"^[A-Za-z0-9+/]{64}$")


def pem_needles(pem: str) -> list[str]:
    """Full base64 lines of a PEM private key (each unique enough to identify the key)."""
    return [line for line in pem.splitlines() if _PEM_LINE.match(line)]


def find_in_files(roots: Iterable[Path], needles: dict[str, list[str]]) -> list[str]:
    """'<file>: <secret name>' for every file under `roots` that holds one of the needles."""
    hits: list[str] = []
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file()):
            try:
                text = path.read_text(errors="replace")
            except OSError:
                continue
            hits += [f"{path}: {name}" for name, ns in needles.items() if any(n in text for n in ns)]
    return hits
