"""Each role's README.md from its meta/argument_specs.yml, so that what a README says is what the role checks.

`python -m deepseek_node.roles_doc` rewrites roles/*/README.md; `--check` only reports the stale ones (a unit
test does the same). The generated part sits between two markers; text after the end marker is written by
hand and kept as it is.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

BEGIN = (
    "<!-- Generated from meta/argument_specs.yml by `python -m deepseek_node.roles_doc`: "
    "edit the spec, not this part. -->"
)
END = "<!-- End of the generated part; what follows is kept as written. -->"
COLLECTION = "deepseek.node"


def _text(value: Any) -> str:
    """A description (a string or a list of paragraphs) as one paragraph per line."""
    parts = value if isinstance(value, list) else [value] if value else []
    return "\n\n".join(" ".join(str(p).split()) for p in parts)


def _cell(value: Any) -> str:
    """One markdown table cell: a single line, with pipes escaped."""
    return " ".join(_text(value).split()).replace("|", "\\|")


def _code(value: Any) -> str:
    text = value if isinstance(value, str) else json.dumps(value)
    return f"`{text}`" if text != "" else '`""`'


def _type(option: Mapping[str, Any]) -> str:
    kind = str(option.get("type", "str"))
    if kind == "list" and option.get("elements"):
        kind = f"list of {option['elements']}"
    return kind + (" (secret)" if option.get("no_log") else "")


def _rows(options: Mapping[str, Any], prefix: str = "") -> list[str]:
    rows = []
    for name, option in options.items():
        option = option or {}
        default = _code(option["default"]) if "default" in option else ""
        choices = ", ".join(_code(c) for c in option.get("choices") or [])
        rows.append(
            f"| `{prefix}{name}` | {_type(option)} | {default} | {'yes' if option.get('required') else ''} "
            f"| {choices} | {_cell(option.get('description'))} |"
        )
        # Suboptions of a dict (or of each dict in a list) as parent.child rows.
        rows += _rows(option.get("options") or {}, f"{prefix}{name}.")
    return rows


def options_table(options: Mapping[str, Any]) -> str:
    if not options:
        return "No variables."
    head = "| Variable | Type | Default | Required | Choices | Description |\n|---|---|---|---|---|---|"
    return "\n".join([head, *_rows(options)])


def render(role: str, specs: Mapping[str, Any]) -> str:
    """The generated part of a role's README (between the markers) from its argument_specs mapping."""
    main = specs.get("main") or {}
    out = [BEGIN, f"# {role}", "", _text(main.get("short_description"))]
    if main.get("description"):
        out += ["", _text(main["description"])]
    out += [
        "",
        f"In the collection: `{COLLECTION}.{role}`; `ansible-doc -t role {COLLECTION}.{role}` shows the same.",
    ]
    for entry, spec in specs.items():
        spec = spec or {}
        heading = "Variables" if entry == "main" else f"Entry point `{entry}` (`tasks_from: {entry}`)"
        out += ["", f"## {heading}", ""]
        if entry != "main":
            out += [_text(spec.get("short_description")), ""]
            if spec.get("description"):
                out += [_text(spec["description"]), ""]
        if entry != "main" and (spec.get("options") or {}) == (main.get("options") or {}):
            out.append("The same variables as `main`.")
        else:
            out.append(options_table(spec.get("options") or {}))
    out += ["", END]
    return "\n".join(out) + "\n"


def readme(generated: str, current: str | None) -> str:
    """The README to write: the generated part, then whatever hand-written text followed the end marker."""
    kept = current.split(END + "\n", 1)[1] if current and END + "\n" in current else ""
    return generated + kept


def role_readme(role_dir: Path) -> tuple[Path, str]:
    """(README path, what it should hold) for one role directory."""
    specs = yaml.safe_load((role_dir / "meta" / "argument_specs.yml").read_text())["argument_specs"]
    path = role_dir / "README.md"
    current = path.read_text() if path.is_file() else None
    return path, readme(render(role_dir.name, specs), current)


def stale_readmes(roles_dir: Path) -> list[Path]:
    """Role READMEs that differ from what their argument specs generate."""
    out = []
    for role_dir in sorted(p for p in roles_dir.iterdir() if (p / "meta" / "argument_specs.yml").is_file()):
        path, text = role_readme(role_dir)
        if not path.is_file() or path.read_text() != text:
            out.append(path)
    return out


def main(argv: list[str] | None = None) -> int:
    from deepseek_node.paths import project_root

    parser = argparse.ArgumentParser(prog="python -m deepseek_node.roles_doc", description=__doc__)
    parser.add_argument("--check", action="store_true", help="only list stale READMEs (exit 1 if any)")
    args = parser.parse_args(argv)
    roles_dir = project_root() / "roles"
    stale = stale_readmes(roles_dir)
    for path in stale:
        if args.check:
            print(f"stale: {path}", file=sys.stderr)
        else:
            path.write_text(role_readme(path.parent)[1])
            print(f"wrote {path}")
    return 1 if args.check and stale else 0


if __name__ == "__main__":
    sys.exit(main())
