"""Turning a growing list of token ids into text deltas, and cutting at stop sequences.

Decoding each new token on its own breaks multi-byte characters that span tokens (byte-level BPE), and
decoding the whole sequence every step is quadratic; the two-offset scheme used by vLLM and TGI decodes a
short window and emits only what became stable. Stop sequences can straddle deltas, so text that might be
the start of a stop sequence is held back until it is known not to be one.
"""

from __future__ import annotations

from typing import Any

__all__ = ["IncrementalDetokenizer", "StopMatcher"]

# Prompt tokens decoded as context before the first generated token, so its leading space comes out right.
_CONTEXT_TOKENS = 6


class IncrementalDetokenizer:
    def __init__(self, tokenizer: Any, prompt_tail: list[int] | None = None) -> None:
        self._tok = tokenizer
        # Seeding with the prompt's last tokens makes the first generated word decode with its leading
        # space as it would in the full text.
        self._ids: list[int] = list(prompt_tail or [])[-_CONTEXT_TOKENS:]
        self._prefix = 0
        self._read = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    def push(self, token_ids: list[int]) -> str:
        """Add tokens; return the newly stable text (possibly empty)."""
        self._ids.extend(token_ids)
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        # A trailing U+FFFD means an incomplete UTF-8 sequence: wait for the next token.
        if len(new_text) > len(prefix_text) and not new_text.endswith("\ufffd"):
            delta = new_text[len(prefix_text) :]
            self._prefix, self._read = self._read, len(self._ids)
            return delta
        return ""

    def flush(self) -> str:
        """The text still held back (an incomplete character at the very end), at the end of generation."""
        prefix_text = self._decode(self._ids[self._prefix : self._read])
        new_text = self._decode(self._ids[self._prefix :])
        self._read = len(self._ids)
        return new_text[len(prefix_text) :] if len(new_text) > len(prefix_text) else ""


class StopMatcher:
    """Accumulates generated text, releases what is safe to send, and finds the first stop sequence."""

    def __init__(self, stops: list[str]) -> None:
        self._stops = [s for s in stops if s]
        self.text = ""
        self._sent = 0
        self.stopped = False

    def feed(self, delta: str) -> str:
        """Add text; return what can be released now. Sets `stopped` when a stop sequence appeared."""
        if self.stopped:
            return ""
        start = max(0, self._sent - max((len(s) for s in self._stops), default=0))
        self.text += delta
        if self._stops:
            hits = [i for i in (self.text.find(s, start) for s in self._stops) if i >= 0]
            if hits:
                self.text = self.text[: min(hits)]
                self.stopped = True
                return self._release(len(self.text))
            return self._release(len(self.text) - self._held_back())
        return self._release(len(self.text))

    def finish(self) -> str:
        """Release everything left (generation ended without a stop sequence)."""
        return self._release(len(self.text))

    def _held_back(self) -> int:
        # Longest suffix of the text that is a proper prefix of some stop sequence.
        best = 0
        for s in self._stops:
            for k in range(min(len(s) - 1, len(self.text)), best, -1):
                if self.text.endswith(s[:k]):
                    best = k
                    break
        return best

    def _release(self, upto: int) -> str:
        upto = max(upto, self._sent)
        out = self.text[self._sent : upto]
        self._sent = upto
        return out
