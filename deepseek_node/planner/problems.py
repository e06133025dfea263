"""A problem found in the planner's inputs: which key, what is wrong, how to fix it.

The inventory layer adds the host name; the CLI and the Ansible filter print the same text.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Problem:
    key: str
    message: str
    fix: str

    def describe(self, host: str | None = None) -> str:
        where = f"host {host}: " if host else ""
        return f"{where}{self.key}: {self.message}; fix: {self.fix}"


class PlannerInputError(ValueError):
    """Raised with every problem at once, so an operator fixes an inventory in one round."""

    def __init__(self, problems: list[Problem], host: str | None = None) -> None:
        self.problems = list(problems)
        self.host = host
        super().__init__("\n".join(p.describe(host) for p in self.problems))
