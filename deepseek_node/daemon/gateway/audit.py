"""The audit log: one JSON line per request, to stdout (the journal) or a file.

Who (key id, client address), what (route, model, token counts), outcome (status, finish reason) and how
long. Prompts and completions are logged only when `audit.log_content` is on, and then by default with
e-mail addresses, phone numbers and ID-like numbers replaced by placeholders: an audit trail must not
become the place where personal data leaks.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from pathlib import Path
from typing import Any, TextIO

from deepseek_node.daemon.config import AuditConfig

__all__ = ["AuditLog", "redact"]

_EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}")
# ID-like numbers: IBANs, payment cards (4-digit groups), US SSNs, and any run of 9+ digits (national IDs,
# passport and account numbers). Applied before the phone rules so a card number is not called a phone.
_IBAN = re.compile(r"\b[A-Z]{2}\d{2}(?:[ ]?[A-Z0-9]{4}){2,7}(?:[ ]?[A-Z0-9]{1,4})?\b")
_CARD = re.compile(r"\b\d{4}(?:[ -]?\d{4}){2,3}\b")
_SSN = re.compile(r"\b\d{3}-\d{2}-\d{4}\b")
_LONG_ID = re.compile(r"\b\d{9,}\b")
# Phone numbers: international (+CC ...), North American (555) 123-4567 / 555-123-4567, and other
# dash/dot-grouped numbers of 7+ digits. Plain space-separated small numbers ("10 100 1000") are not.
_PHONE_INTL = re.compile(r"(?<![\w+])\+\d{1,3}(?:[ .-]?\(?\d{1,5}\)?){2,6}(?!\w)")
_PHONE_NA = re.compile(r"(?:\(\d{3}\)\s?|\b\d{3}[-. ])\d{3}[-. ]\d{4}\b")
_PHONE_GROUPED = re.compile(r"\b\d{2,4}(?:[-.]\d{2,4}){2,4}\b")
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}|\d{2}[-.]\d{2}[-.]\d{4}")


def _phone(m: re.Match[str]) -> str:
    s = m.group(0)
    digits = sum(c.isdigit() for c in s)
    # Dates, versions (1.2.3) and short numbers are not phone numbers.
    if digits < 7 or _DATE.fullmatch(s):
        return s
    return "[PHONE]"


def redact(text: str) -> str:
    text = _EMAIL.sub("[EMAIL]", text)
    text = _IBAN.sub("[ID]", text)
    text = _CARD.sub("[ID]", text)
    text = _SSN.sub("[ID]", text)
    text = _PHONE_INTL.sub(_phone, text)
    text = _PHONE_NA.sub("[PHONE]", text)
    text = _PHONE_GROUPED.sub(_phone, text)
    text = _LONG_ID.sub("[ID]", text)
    return text


class AuditLog:
    def __init__(self, config: AuditConfig, stream: TextIO | None = None) -> None:
        self.config = config
        self._lock = threading.Lock()
        self._owned: TextIO | None = None
        if stream is not None:
            self._out = stream
        elif config.path is None:
            self._out = sys.stdout
        else:
            path = Path(config.path)
            path.parent.mkdir(parents=True, exist_ok=True)
            # Line-buffered append: each record reaches the file whole, even if the process dies next.
            self._owned = open(path, "a", buffering=1, encoding="utf-8")  # noqa: SIM115 - closed in close()
            self._out = self._owned

    def content(self, text: str | None) -> str | None:
        """What to log for a prompt/completion: nothing, the text, or the redacted text."""
        if not self.config.log_content or text is None:
            return None
        return redact(text) if self.config.redact else text

    def write(self, record: dict[str, Any]) -> None:
        record = {"ts": round(time.time(), 3), "type": "request", **record}
        if not self.config.log_content:
            record.pop("prompt", None)
            record.pop("completion", None)
        line = json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str)
        with self._lock:
            try:
                self._out.write(line + "\n")
                self._out.flush()
            except (OSError, ValueError):  # closed/full stream must not fail the request
                pass

    def close(self) -> None:
        if self._owned is not None:
            self._owned.close()
            self._owned = None
