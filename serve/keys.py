"""API keys with scopes and a tenant, stored as sha256 digests (never in clear).

A keys file (``--keys F`` / ``ADRISK_KEYS_FILE``; YAML or JSON)::

    keys:
      - id: shop-frontend          # recorded with every decision and feedback row it sends
        sha256: 9f86d081...        # printf %s "$KEY" | sha256sum
        scopes: [classify]         # classify, feedback, admin
        tenant: shop               # the policy's per-tenant overrides apply to it

Keys in ``ADRISK_API_KEYS`` (comma-separated, in clear; the older form) keep working: each has every
scope and the tenant ``default``. With neither, auth is off and every request acts as that key.
Scopes: ``classify`` (``/v1/classify``, ``/v1/model``, statements, opening appeals), ``feedback``
(``/v1/feedback``: training labels), ``admin`` (resolving appeals, ``/v1/policy``).
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

SCOPES = ("classify", "feedback", "admin")
Scope = Literal["classify", "feedback", "admin"]
DEFAULT_TENANT = "default"
_NAME = r"^[A-Za-z0-9][A-Za-z0-9._:@+-]{0,63}$"


class KeysError(ValueError):
    """A keys file that cannot be used (one line)."""


class KeyEntry(BaseModel):
    """One API key of a keys file."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=_NAME, description="key id, recorded with what the key sends")
    sha256: str = Field(description="hex sha256 of the key")
    scopes: tuple[Scope, ...] = Field(min_length=1)
    tenant: str = Field(DEFAULT_TENANT, pattern=_NAME)

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        v = v.strip().lower()
        if len(v) != 64 or any(c not in "0123456789abcdef" for c in v):
            raise ValueError('expected the key\'s sha256 as 64 hex digits (printf %s "$KEY" | sha256sum)')
        return v


class KeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: tuple[KeyEntry, ...] = Field(min_length=1)


@dataclass(frozen=True)
class Principal:
    """Who sent a request: ``key_id`` (None with auth off), its ``scopes`` and ``tenant``."""

    key_id: str | None
    scopes: frozenset[str]
    tenant: str


ANONYMOUS = Principal(None, frozenset(SCOPES), DEFAULT_TENANT)


def legacy_key_id(key: str) -> str:
    """The id of an ``ADRISK_API_KEYS`` key: ``key-`` and the first 8 hex digits of its sha256."""
    return "key-" + hashlib.sha256(key.encode("utf-8")).hexdigest()[:8]


class Keyring:
    """The server's keys as ``(sha256 digest, Principal)``; ``authenticate`` compares in constant time.

    Args:
        entries: keys from a keys file.
        legacy_keys: keys in clear from ``ADRISK_API_KEYS`` (every scope, tenant ``default``).

    Raises:
        KeysError: two keys with one id or one digest.
    """

    def __init__(self, entries: Iterable[KeyEntry] = (), legacy_keys: Iterable[str] = ()):
        self._keys: list[tuple[bytes, Principal]] = []
        for e in entries:
            self._keys.append((bytes.fromhex(e.sha256), Principal(e.id, frozenset(e.scopes), e.tenant)))
        for k in legacy_keys:
            digest = hashlib.sha256(k.encode("utf-8")).digest()
            self._keys.append((digest, Principal(legacy_key_id(k), frozenset(SCOPES), DEFAULT_TENANT)))
        ids = [p.key_id for _, p in self._keys]
        digests = [d for d, _ in self._keys]
        if len(set(ids)) != len(ids):
            raise KeysError(f"key id {next(i for i in ids if ids.count(i) > 1)!r} is used twice")
        if len(set(digests)) != len(digests):
            raise KeysError("two keys have the same sha256 (one key listed twice)")

    @property
    def enabled(self) -> bool:
        """Whether auth is on (any key configured)."""
        return bool(self._keys)

    def tenants(self) -> set[str]:
        """The tenants requests can carry (``default`` alone with auth off)."""
        return {p.tenant for _, p in self._keys} if self._keys else {DEFAULT_TENANT}

    def authenticate(self, given: bytes) -> Principal | None:
        """The principal of the key whose sha256 is ``sha256(given)``, or None. Every digest is
        compared (``hmac.compare_digest``, no early exit): the time taken does not depend on which
        key matched."""
        digest = hashlib.sha256(given).digest()
        found = None
        for d, principal in self._keys:
            if hmac.compare_digest(digest, d):
                found = principal
        return found


def load_keys_file(path: str | Path) -> tuple[KeyEntry, ...]:
    """Read a keys file.

    Raises:
        KeysError: unreadable, not YAML, or invalid; one line naming the entry and the rule.
    """
    p = Path(path)
    try:
        data = yaml.safe_load(p.read_text(encoding="utf-8"))
    except OSError as e:
        raise KeysError(f"keys file {p}: cannot read ({e.strerror or type(e).__name__})") from None
    except (yaml.YAMLError, UnicodeDecodeError):
        raise KeysError(f"keys file {p}: not valid YAML") from None
    try:
        return KeysFile.model_validate(data).keys
    except ValidationError as e:
        err = e.errors()[0]
        loc = ""
        for part in err.get("loc", ()):
            loc += f"[{part}]" if isinstance(part, int) else (f".{part}" if loc else str(part))
        msg = str(err.get("msg", "invalid")).removeprefix("Value error, ")
        raise KeysError(f"keys file {p}: {loc or 'body'}: {msg}") from None


def build_keyring(keys_file: str | None, api_keys: Iterable[str]) -> Keyring:
    """The keyring of a server's settings (``keys_file`` entries and ``ADRISK_API_KEYS`` keys).

    Raises:
        KeysError: a bad keys file, or a key listed twice.
    """
    entries = load_keys_file(keys_file) if keys_file else ()
    try:
        return Keyring(entries, api_keys)
    except KeysError as e:
        raise KeysError(f"keys: {e}") from None
