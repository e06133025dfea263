"""How bad a finding is, and the exit code a set of findings gives."""

from __future__ import annotations

from collections.abc import Iterable
from enum import StrEnum


class Severity(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"

    @property
    def rank(self) -> int:
        return {"ok": 0, "warn": 1, "fail": 2}[self.value]


def worst(severities: Iterable[Severity]) -> Severity:
    return max(severities, key=lambda s: s.rank, default=Severity.OK)


def exit_code(severities: Iterable[Severity]) -> int:
    """0: everything ok, 1: warnings only, 2: at least one failure."""
    return worst(severities).rank
