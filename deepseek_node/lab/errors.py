"""Errors the lab reports to its callers."""

from __future__ import annotations


class LabError(RuntimeError):
    """A lab operation failed; the message says what and how to recover."""


class UnknownHostError(LabError):
    def __init__(self, name: str, valid: list[str]) -> None:
        self.name = name
        self.valid = valid
        known = ", ".join(valid) if valid else "none (run `provision lab up` first)"
        super().__init__(f"no lab host named {name!r}; lab hosts: {known}")
