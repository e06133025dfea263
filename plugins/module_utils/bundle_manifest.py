"""Bundle manifest: every file with its size and sha256; verification reports problems by name.

Standard library only, on purpose: the offline_repo role runs this very file as a script, on the controller
and (copied) on targets with their system python3, to verify the bundle before anything is installed from
it. The controller's Python package imports it as deepseek_node.bundle.manifest.
Usage as a script:
  python3 bundle_manifest.py verify BUNDLE_DIR [--subset=PREFIX ...] [--json] [--manifest-stdin]
  python3 bundle_manifest.py prune BUNDLE_DIR [--subset=PREFIX ...]   (removes what the manifest does not list)
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import stat
import sys
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

MANIFEST = "manifest.json"
FORMAT = 1
_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")


class BundleError(Exception):
    """A bundle that cannot be used; the message names the problem and the fix."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def _walk(root: Path) -> tuple[list[str], list[str]]:
    """(regular files, everything else) below root as relative POSIX paths, the manifest itself left out.

    "Everything else" is what a bundle must never hold: symlinks (to files or directories, which could
    point outside the bundle) and special files (FIFOs, sockets, devices, which reading would hang on or
    misread). Symlinked directories are reported, never followed.
    """
    files: list[str] = []
    odd: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in list(dirnames):
            if (Path(dirpath) / name).is_symlink():
                dirnames.remove(name)
                odd.append((Path(dirpath) / name).relative_to(root).as_posix())
        for name in filenames:
            path = Path(dirpath) / name
            rel = path.relative_to(root).as_posix()
            if rel == MANIFEST:
                continue
            try:
                regular = stat.S_ISREG(path.lstat().st_mode)
            except OSError:
                regular = False
            (files if regular else odd).append(rel)
    return sorted(files), sorted(odd)


def list_files(root: Path) -> list[str]:
    """Relative POSIX paths of every regular file below root, except the manifest itself."""
    return _walk(root)[0]


def describe_files(root: Path) -> dict[str, dict[str, object]]:
    return {
        rel: {"size": (root / rel).stat().st_size, "sha256": sha256_file(root / rel)}
        for rel in list_files(root)
    }


def write_manifest(root: Path, meta: dict[str, object]) -> dict[str, object]:
    odd = _walk(root)[1]
    if odd:
        raise BundleError(
            f"{root} holds symlinks or special files ({', '.join(odd[:5])}): a bundle may hold only regular "
            "files; replace them with copies of their targets"
        )
    manifest = {"format": FORMAT, **meta, "files": describe_files(root)}
    tmp = root / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    tmp.replace(root / MANIFEST)
    return manifest


def _entry_ok(rel: object, entry: object) -> bool:
    """A manifest entry: a plain relative path inside the bundle, a byte size and a sha256."""
    if not isinstance(rel, str) or not rel or "\x00" in rel or rel.startswith("/"):
        return False
    if PurePosixPath(rel).as_posix() != rel or any(p in ("", ".", "..") for p in rel.split("/")):
        return False
    if not isinstance(entry, dict):
        return False
    size, digest = entry.get("size"), entry.get("sha256")
    return (
        isinstance(size, int)
        and not isinstance(size, bool)
        and size >= 0
        and isinstance(digest, str)
        and _SHA256.fullmatch(digest) is not None
    )


def load_manifest(root: Path) -> dict:
    path = Path(root) / MANIFEST
    if not Path(root).is_dir():
        raise BundleError(
            f"{root} is not a directory: pass the directory that `provision bundle build` wrote"
        )
    if not path.exists() and not path.is_symlink():
        raise BundleError(f"{path} is missing: this is not a bundle, or it is incomplete; rebuild it")
    if path.is_symlink() or not path.is_file():
        raise BundleError(f"{path} is not a regular file: the bundle is damaged; rebuild it or copy it again")
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BundleError(
            f"{path} cannot be read ({exc.strerror or exc}): fix its permissions or copy the bundle again"
        ) from exc
    except UnicodeDecodeError as exc:
        raise BundleError(
            f"{path} is not valid JSON ({exc}): the manifest is corrupt; rebuild the bundle"
        ) from exc
    return parse_manifest(text, str(path))


def parse_manifest(text: str, where: str) -> dict:
    """A manifest's JSON text checked for its format and every entry; `where` names it in errors."""
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise BundleError(
            f"{where} is not valid JSON ({exc}): the manifest is corrupt; rebuild the bundle"
        ) from exc
    fmt = data.get("format") if isinstance(data, dict) else None
    if (
        not isinstance(data, dict)
        or isinstance(fmt, bool)
        or fmt != FORMAT
        or not isinstance(data.get("files"), dict)
    ):
        raise BundleError(
            f"{where} is not a format-{FORMAT} bundle manifest: rebuild the bundle with this version"
        )
    for rel, entry in data["files"].items():
        if not _entry_ok(rel, entry):
            raise BundleError(
                f"{where}: entry {rel!r} is malformed (a file entry needs a plain relative path inside the "
                "bundle, a size and a sha256): the manifest is corrupt; rebuild the bundle"
            )
    return data


@dataclass
class VerifyReport:
    checked: int = 0
    missing: list[str] = field(default_factory=list)
    extra: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)
    # Symlinks and special files: never part of a bundle, whatever the manifest says.
    unsafe: list[str] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.extra or self.altered or self.unsafe or self.unreadable)

    def problems(self) -> list[str]:
        return (
            [f"missing: {p}" for p in self.missing]
            + [f"not in manifest: {p}" for p in self.extra]
            + [f"altered (size or sha256 differs): {p}" for p in self.altered]
            + [f"symlink or special file (a bundle holds only regular files): {p}" for p in self.unsafe]
            + [f"unreadable: {p}" for p in self.unreadable]
        )

    def summary(self) -> str:
        if self.ok:
            return f"bundle OK: {self.checked} files match the manifest"
        return (
            f"bundle FAILED verification ({len(self.problems())} problems); nothing may be installed from it. "
            "Rebuild it or copy it again from its source:\n  " + "\n  ".join(self.problems())
        )


def verify_bundle(root: Path, subsets: tuple[str, ...] = (), manifest: dict | None = None) -> VerifyReport:
    """Compare the tree with its manifest (or with `manifest`, e.g. the controller's for a tree that holds an
    older bundle); `subsets` restricts the check to path prefixes (e.g. 'apt/')."""
    root = Path(root)
    if manifest is None:
        manifest = load_manifest(root)
    expected: dict[str, dict] = manifest["files"]

    def wanted(rel: str) -> bool:
        return not subsets or any(rel.startswith(s) for s in subsets)

    if subsets and not any(wanted(rel) for rel in expected):
        raise BundleError(
            f"the manifest lists no files under {', '.join(subsets)}: the bundle is incomplete; rebuild it"
        )
    report = VerifyReport()
    files, odd = _walk(root)
    present = {rel for rel in files if wanted(rel)}
    report.unsafe = [rel for rel in odd if wanted(rel)]
    for rel in sorted(rel for rel in expected if wanted(rel)):
        if rel not in present:
            if rel not in report.unsafe:
                report.missing.append(rel)
            continue
        path = root / rel
        entry = expected[rel]
        try:
            same = path.stat().st_size == entry["size"] and sha256_file(path) == entry["sha256"]
        except OSError:
            report.unreadable.append(rel)
            continue
        report.checked += 1
        if not same:
            report.altered.append(rel)
    report.extra = sorted(present - set(expected))
    return report


def prune_bundle(root: Path, subsets: tuple[str, ...]) -> list[str]:
    """Remove every file, symlink or special file under `subsets` that the manifest does not list (what a
    previous bundle left behind); returns the relative paths removed. One process for the whole tree: a
    module call per file costs about a second each, and a bundle change can leave hundreds."""
    root = Path(root)
    if not subsets:
        raise BundleError("prune needs at least one --subset: it never touches the whole tree")
    expected = load_manifest(root)["files"]
    files, odd = _walk(root)
    removed = []
    for rel in sorted({*files, *odd}):
        if any(rel.startswith(s) for s in subsets) and (rel not in expected or rel in odd):
            (root / rel).unlink()  # a symlinked directory is unlinked as the link, never followed
            removed.append(rel)
    return removed


def _main(argv: list[str]) -> int:
    if len(argv) < 2 or argv[0] not in ("verify", "prune"):
        print(
            "usage: bundle_manifest.py verify BUNDLE_DIR [--subset=PREFIX ...] [--json] [--manifest-stdin]\n"
            "       bundle_manifest.py prune BUNDLE_DIR --subset=PREFIX [--subset=PREFIX ...]",
            file=sys.stderr,
        )
        return 2
    subsets = tuple(a.split("=", 1)[1] for a in argv[2:] if a.startswith("--subset="))
    try:
        if argv[0] == "prune":
            print(json.dumps({"removed": prune_bundle(Path(argv[1]), subsets)}))
            return 0
        # --manifest-stdin: the manifest to compare with comes on stdin (the controller's, before it is
        # copied: what --check must compare the target's files with).
        given = (
            parse_manifest(sys.stdin.read(), "the manifest on stdin")
            if "--manifest-stdin" in argv[2:]
            else None
        )
        report = verify_bundle(Path(argv[1]), subsets, given)
    except (BundleError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if "--json" in argv[2:]:
        # For the role: --check predicts the transfer from these lists.
        print(json.dumps({"ok": report.ok, **{k: v for k, v in vars(report).items()}}))
    print(report.summary(), file=sys.stdout if report.ok and "--json" not in argv[2:] else sys.stderr)
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
