"""Pieces of the daemon that need no model: keys, redaction, detokenization, sampling."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch

from deepseek_node.daemon.config import AuditConfig, AuthConfig, Scope
from deepseek_node.daemon.engines.builtin.detok import IncrementalDetokenizer, StopMatcher
from deepseek_node.daemon.engines.builtin.sampling import GREEDY, apply_top_p, sample, step_seed
from deepseek_node.daemon.gateway.audit import AuditLog, redact
from deepseek_node.daemon.gateway.auth import KeyStore, generate_key, hash_key


def test_keys_are_stored_as_hashes_and_carry_scopes() -> None:
    key = generate_key()
    assert key.startswith("dsn-") and len(key) > 40
    store = KeyStore(
        AuthConfig.model_validate(
            {
                "api_keys": [
                    {"id": "ops", "sha256": hash_key(key), "scopes": ["inference", "admin"], "models": ["m"]},
                    {"id": "mon", "sha256": hash_key("other"), "scopes": ["metrics"]},
                ]
            }
        )
    )
    p = store.authenticate(f"Bearer {key}")
    assert p is not None and p.key_id == "ops" and p.has(Scope.ADMIN) and not p.has(Scope.METRICS)
    assert p.may_use("m") and not p.may_use("n")
    assert store.authenticate("bearer other").key_id == "mon"  # scheme is case-insensitive
    for bad in [
        None,
        "",
        "Bearer",
        f"Basic {key}",
        key,
        f"Bearer {key}x",
        "Bearer \ud800",
        "Bearer " + "a" * 10000,
    ]:
        assert store.authenticate(bad) is None
    assert hash_key("test") == "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("write to jane.doe+x@mail.example.org now", "write to [EMAIL] now"),
        ("call +1 (555) 123-4567 or 555-123-4567", "call [PHONE] or [PHONE]"),
        ("tel +44 20 7946 0958", "tel [PHONE]"),
        ("SSN 123-45-6789, card 4111 1111 1111 1111", "SSN [ID], card [ID]"),
        ("IBAN DE89 3704 0044 0532 0130 00 ok", "IBAN [ID] ok"),
        ("passport 123456789", "passport [ID]"),
        (
            "on 2024-01-31 at 10:30, 42 apples, v1.2.3, 10 100 1000",
            "on 2024-01-31 at 10:30, 42 apples, v1.2.3, 10 100 1000",
        ),
    ],
)
def test_redaction(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_audit_writes_one_json_line_and_hides_content_unless_enabled(tmp_path: Path) -> None:
    buf = io.StringIO()
    AuditLog(AuditConfig(), stream=buf).write({"request_id": "r", "prompt": "secret", "completion": "x"})
    rec = json.loads(buf.getvalue())
    assert rec["request_id"] == "r" and "prompt" not in rec and "ts" in rec
    log = AuditLog(
        AuditConfig.model_validate({"path": str(tmp_path / "a" / "audit.jsonl"), "log_content": True})
    )
    log.write({"request_id": "r2", "prompt": log.content("mail a@b.io"), "completion": log.content("ok")})
    log.close()
    rec = json.loads((tmp_path / "a" / "audit.jsonl").read_text())
    assert rec["prompt"] == "mail [EMAIL]" and rec["completion"] == "ok"
    raw = AuditLog(AuditConfig.model_validate({"log_content": True, "redact": False}), stream=io.StringIO())
    assert raw.content("mail a@b.io") == "mail a@b.io"


class _ByteTok:
    """A byte-level tokenizer: each id is one UTF-8 byte, so characters span tokens."""

    def decode(self, ids: list[int], **_: object) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_incremental_detokenizer_waits_for_whole_characters() -> None:
    text = "añb北京✓"
    d = IncrementalDetokenizer(_ByteTok())
    deltas = [d.push([b]) for b in text.encode()]
    assert "".join(deltas) + d.flush() == text
    assert all("\ufffd" not in x for x in deltas)
    d2 = IncrementalDetokenizer(_ByteTok())
    assert d2.push(list("北".encode())[:2]) == "" and d2.flush() == "\ufffd"  # a cut character at the end


def test_stop_matcher_across_deltas_and_hold_back() -> None:
    m = StopMatcher(["END", "\n\n"])
    out = m.feed("Hello E") + m.feed("N") + m.feed("xt and E")
    assert out == "Hello ENxt and " and not m.stopped
    assert m.feed("ND trailing") == "" and m.stopped and m.text == "Hello ENxt and "
    assert StopMatcher([]).feed("anything") == "anything"


def test_sampling_matches_the_distribution_and_top_p() -> None:
    torch.manual_seed(0)
    logits = torch.randn(1, 6) * 2
    n = 20000
    seeds = torch.tensor([step_seed(7, i) for i in range(n)])
    out = sample(logits.expand(n, 6), torch.ones(n), None, seeds)
    freq = torch.bincount(out, minlength=6).float() / n
    assert torch.allclose(freq, logits.softmax(-1)[0], atol=0.02)
    low_t = sample(logits.expand(n, 6), torch.full((n,), 0.05), None, seeds)
    assert (low_t == logits.argmax()).float().mean() > 0.99
    filtered = apply_top_p(logits, torch.tensor([0.01]))
    assert torch.isfinite(filtered).sum() == 1  # only the most likely token survives
    greedy = sample(logits, torch.zeros(1), torch.ones(1), torch.tensor([GREEDY]))
    assert greedy.item() == logits.argmax().item()
    assert step_seed(1, 0) != step_seed(1, 1) != step_seed(2, 1)
    assert step_seed(-5, 3) >= 0 and step_seed(1 << 70, 3) >= 0
