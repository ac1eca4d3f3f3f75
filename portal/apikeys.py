"""Service API keys: created once, stored only as a hash, revocable by name."""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass, replace
from datetime import datetime, timedelta

from sqlalchemy import bindparam, select, update
from sqlalchemy.orm import Session

from portal.database import lone_statement
from portal.models import ApiKey

KEY_PREFIX = "usk_"
"""Marks our keys, so a leaked one is recognisable in code and logs."""
KEY_PATTERN = re.compile(r"^usk_[A-Za-z0-9_-]{43}$")
NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}$")
LAST_USED_RESOLUTION = timedelta(minutes=1)
"""``last_used_at`` is refreshed at most this often, not written on every call."""


class ApiKeyError(ValueError):
    """A key cannot be created or revoked as asked."""


@dataclass(frozen=True)
class ApiKeyInfo:
    id: int
    name: str
    prefix: str
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


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
    return _info(row)


def list_api_keys(session: Session) -> list[ApiKeyInfo]:
    return [_info(row) for row in session.scalars(select(ApiKey).order_by(ApiKey.created_at))]


_LIVE_KEY_BY_HASH = select(
    ApiKey.id, ApiKey.name, ApiKey.prefix, ApiKey.created_at, ApiKey.last_used_at
).where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))
_NOTE_USE = (
    update(ApiKey).where(ApiKey.id == bindparam("key_id")).values(last_used_at=bindparam("now"))
)


def authenticate(session: Session, key: str, now: datetime) -> ApiKeyInfo | None:
    """The live key matching ``key``, or ``None`` for a malformed, unknown or revoked one.

    Every API call starts here: one lookup by the key's hash, as a lone
    statement. ``last_used_at`` is written at most once a minute, so a busy
    key's row is not a hot spot.
    """
    if not KEY_PATTERN.match(key):
        return None
    with lone_statement(session) as connection:
        row = connection.execute(_LIVE_KEY_BY_HASH, {"key_hash": hash_key(key)}).one_or_none()
        if row is None:
            return None
        info = ApiKeyInfo(row.id, row.name, row.prefix, row.created_at, row.last_used_at, None)
        if info.last_used_at is None or now - info.last_used_at >= LAST_USED_RESOLUTION:
            connection.execute(_NOTE_USE, {"key_id": info.id, "now": now})
            info = replace(info, last_used_at=now)
    return info


def _info(row: ApiKey) -> ApiKeyInfo:
    return ApiKeyInfo(
        row.id, row.name, row.prefix, row.created_at, row.last_used_at, row.revoked_at
    )
