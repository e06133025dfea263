"""API-key authentication: keys live in the config only as SHA-256 hashes; each carries scopes and models.

A presented key is hashed and compared against every stored hash with `hmac.compare_digest`, so neither
the comparison nor the loop's early exit tells a caller how close a guess was.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from deepseek_node.daemon.config import AuthConfig, Scope

__all__ = ["KeyStore", "Principal", "generate_key", "hash_key"]

# Longer than any real key; hashing megabytes of header on every request would be a cheap DoS.
_MAX_KEY_LEN = 512


def hash_key(key: str) -> str:
    """The value to put in `auth.api_keys[].sha256` for `key` (same as `printf %s KEY | sha256sum`)."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def generate_key() -> str:
    """A new random API key (256 bits), prefixed so it is recognisable in a secret scanner."""
    return "dsn-" + secrets.token_urlsafe(32)


@dataclass(frozen=True)
class Principal:
    key_id: str
    scopes: frozenset[Scope]
    models: frozenset[str]  # empty: every served model

    def has(self, scope: Scope) -> bool:
        return scope in self.scopes

    def may_use(self, model: str) -> bool:
        return not self.models or model in self.models


class KeyStore:
    def __init__(self, config: AuthConfig) -> None:
        self._entries = [
            (bytes.fromhex(k.sha256), Principal(k.id, frozenset(k.scopes), frozenset(k.models)))
            for k in config.api_keys
        ]

    def authenticate(self, authorization: str | None) -> Principal | None:
        """The principal for an `Authorization: Bearer KEY` header value, or None."""
        if not authorization or len(authorization) > _MAX_KEY_LEN + 16:
            return None
        scheme, _, key = authorization.strip().partition(" ")
        key = key.strip()
        if scheme.lower() != "bearer" or not key:
            return None
        try:
            digest = hashlib.sha256(key.encode("utf-8")).digest()
        except UnicodeEncodeError:  # lone surrogates cannot come from a real key
            return None
        found: Principal | None = None
        for stored, principal in self._entries:
            # No early break: every request costs the same number of comparisons.
            if hmac.compare_digest(stored, digest):
                found = principal
        return found
