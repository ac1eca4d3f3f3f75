"""Service API keys: created once, stored only as a hash, revocable by name."""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
import threading
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from portal.models import ApiKey
from portal.periods import as_utc
from portal.precompiled import PrecompiledSelect, fetch_rows, lone_statement_connection, precompile

KEY_PREFIX = "usk_"
"""Marks our keys, so a leaked one is recognisable in code and logs."""
KEY_PATTERN = re.compile(r"^usk_[A-Za-z0-9_-]{43}$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")
LAST_USED_RESOLUTION = timedelta(minutes=1)
"""``last_used_at`` is refreshed at most this often, not written on every call."""


class ApiKeyError(ValueError):
    """A key cannot be created or revoked as asked."""


class ApiKeyRevoked(RuntimeError):
    """The key was revoked before the write it authorized; nothing was written."""


@dataclass(frozen=True)
class ApiKeyInfo:
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None
    refreshed: bool = False
    """True when ``authenticate`` just wrote ``last_used_at`` (the caller commits it)."""


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is enough: there is nothing
    # to brute-force, unlike a password.
    return hashlib.sha256(key.encode()).hexdigest()


def create_api_key(session: Session, name: str, now: datetime) -> tuple[ApiKeyInfo, str]:
    """A new key named ``name``; the key itself is returned once and never stored."""
    name = name.strip()
    if not NAME_PATTERN.match(name):
        raise ApiKeyError("name must be 1-100 letters, digits, spaces, dots, dashes or underscores")
    if session.scalar(select(ApiKey.id).where(ApiKey.name == name)) is not None:
        raise ApiKeyError(f"an API key named {name!r} already exists")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    row = ApiKey(name=name, key_hash=hash_key(key), prefix=key[:10], created_at=now)
    session.add(row)
    session.flush()
    return _info(row), key


def revoke_api_key(session: Session, name: str, now: datetime) -> ApiKeyInfo:
    row = session.scalar(select(ApiKey).where(ApiKey.name == name))
    if row is None:
        raise ApiKeyError(f"no API key named {name!r}")
    if row.revoked_at is None:
        row.revoked_at = now
        session.flush()
    forget_key(row.key_hash)
    return _info(row)


def list_api_keys(session: Session) -> list[ApiKeyInfo]:
    return [_info(row) for row in session.scalars(select(ApiKey).order_by(ApiKey.created_at))]


@functools.cache
def _key_by_hash() -> PrecompiledSelect:
    query = select(
        ApiKey.id,
        ApiKey.name,
        ApiKey.prefix,
        ApiKey.created_at,
        ApiKey.last_used_at,
        ApiKey.revoked_at,
    ).where(ApiKey.key_hash == bindparam("key_hash"))
    return precompile(query, ["key_hash"])


def authenticate(session: Session, key: str, now: datetime) -> ApiKeyInfo | None:
    """The live key matching ``key``, or ``None`` for a malformed, unknown or revoked one."""
    if not KEY_PATTERN.match(key):
        return None
    key_hash = hash_key(key)
    # Every API call starts here, so the lookup takes the fast path, and leaves
    # the session without a transaction for the recording that follows.
    with lone_statement_connection(session) as connection:
        rows = fetch_rows(connection, _key_by_hash(), {"key_hash": key_hash}, alone=True)
    if not rows or rows[0][5] is not None:
        forget_key(key_hash)
        return None
    key_id, name, prefix, created_at, last_used_at, _revoked_at = rows[0]
    info = ApiKeyInfo(
        key_id,
        name,
        prefix,
        as_utc(created_at),
        as_utc(last_used_at) if last_used_at else None,
        None,
    )
    if info.last_used_at is None or now - info.last_used_at >= LAST_USED_RESOLUTION:
        session.execute(update(ApiKey).where(ApiKey.id == key_id).values(last_used_at=now))
        info = replace(info, last_used_at=now, refreshed=True)
    _remember(key_hash, info)
    return info


REMEMBERED_KEYS = 1_000
"""How many keys each process remembers between lookups."""
_remembered: dict[str, ApiKeyInfo] = {}
_remembered_lock = threading.Lock()


def remembered_key(key: str, now: datetime) -> ApiKeyInfo | None:
    """``key`` as this process last authenticated it, without a lookup; else ``None``.

    Remembered only until its ``last_used_at`` is due for a refresh (a
    minute), so ``authenticate`` still keeps that up to date. The key may
    have been revoked since: use it only to authorize a write that checks
    the key is still live in the same statement (``record_request``'s
    ``api_key_id``), which then raises ``ApiKeyRevoked`` and writes nothing.
    Recording a suggestion then costs one round trip instead of two.
    """
    if not KEY_PATTERN.match(key):
        return None
    info = _remembered.get(hash_key(key))
    if info is None or info.last_used_at is None:
        return None
    if now - info.last_used_at >= LAST_USED_RESOLUTION:
        return None
    return info


def forget_key(key_hash: str) -> None:
    """Drop a key this process remembers (it was revoked, or is unknown)."""
    with _remembered_lock:
        _remembered.pop(key_hash, None)


def _remember(key_hash: str, info: ApiKeyInfo) -> None:
    with _remembered_lock:
        _remembered.pop(key_hash, None)
        if len(_remembered) >= REMEMBERED_KEYS:
            del _remembered[next(iter(_remembered))]  # the oldest
        _remembered[key_hash] = replace(info, refreshed=False)


def _info(row: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(
        row.id, row.name, row.prefix, row.created_at, row.last_used_at, row.revoked_at
    )
