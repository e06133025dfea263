"""Role READMEs are generated from the argument specs (and stay so), hand-written notes after the part kept."""

from __future__ import annotations

import pytest

from deepseek_node.roles_doc import BEGIN, END, options_table, readme, render, stale_readmes
from tests.conftest import REPO

SPECS = {
    "main": {
        "short_description": "Do the thing.",
        "description": ["First paragraph.", "Second   paragraph."],
        "options": {
            "demo_mode": {
                "type": "str",
                "choices": ["a", "b"],
                "default": "a",
                "description": "Which | mode.",
            },
            "demo_items": {
                "type": "list",
                "elements": "dict",
                "required": True,
                "description": "Items.",
                "options": {"name": {"type": "str", "required": True, "description": "Item name."}},
            },
            "demo_key": {"no_log": True, "default": "", "description": ["A secret", "key."]},
        },
    },
    "check": {"short_description": "Check only.", "options": None},
}


def test_every_committed_readme_is_what_its_spec_generates() -> None:
    stale = stale_readmes(REPO / "roles")
    assert not stale, f"regenerate with `python -m deepseek_node.roles_doc`: {[str(p) for p in stale]}"


def test_every_role_has_a_readme() -> None:
    for role in (REPO / "roles").iterdir():
        if role.is_dir():
            assert (role / "README.md").read_text().startswith(BEGIN + f"\n# {role.name}\n")


def test_render_lists_every_option_with_its_spec() -> None:
    text = render("demo", SPECS)
    assert text.startswith(f"{BEGIN}\n# demo\n\nDo the thing.\n\nFirst paragraph.\n\nSecond paragraph.\n")
    assert "`ansible-doc -t role deepseek.node.demo`" in text
    assert "| `demo_mode` | str | `a` |  | `a`, `b` | Which \\| mode. |" in text
    assert "| `demo_items` | list of dict |  | yes |  | Items. |" in text
    assert "| `demo_items.name` | str |  | yes |  | Item name. |" in text
    assert '| `demo_key` | str (secret) | `""` |  |  | A secret key. |' in text
    assert "## Entry point `check` (`tasks_from: check`)\n\nCheck only.\n\nNo variables." in text
    assert text.endswith(f"\n{END}\n")


def test_an_entry_point_sharing_mains_options_says_so() -> None:
    specs = {
        "main": SPECS["main"],
        "validate": {"short_description": "V.", "options": SPECS["main"]["options"]},
    }
    assert "V.\n\nThe same variables as `main`." in render("demo", specs)


@pytest.mark.parametrize(
    ("current", "kept"),
    [
        (None, ""),
        ("old generated text\n", ""),
        (f"{BEGIN}\nold\n{END}\n\n## Notes\n\nBy hand.\n", "\n## Notes\n\nBy hand.\n"),
    ],
)
def test_readme_keeps_what_follows_the_generated_part(current: str | None, kept: str) -> None:
    generated = render("demo", SPECS)
    assert readme(generated, current) == generated + kept


def test_options_table_without_options() -> None:
    assert options_table({}) == "No variables."
