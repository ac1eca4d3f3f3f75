"""Sign-in sessions the server can end.

A browser that signs in gets a random token in its signed session cookie;
the server keeps the token's SHA-256 in ``user_sessions``. Every request
checks that row (Flask-Login's user loader, with the token as the user's
id), so a session ends for good, wherever its cookie is replayed, when:

- its user signs out (that session only);
- an operator signs the user out (``flask sign-out-user``), disables the
  user, or sets a new password (all of the user's sessions);
- it was idle longer than ``SESSION_IDLE_HOURS`` or is older than
  ``SESSION_LIFETIME_DAYS``.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import bindparam, delete, select, update
from sqlalchemy.orm import Session

from portal.database import lone_statement
from portal.models import User, UserSession

DEFAULT_IDLE_TIMEOUT = timedelta(hours=12)
DEFAULT_LIFETIME = timedelta(days=14)
SEEN_RESOLUTION = timedelta(minutes=1)
"""``last_seen_at`` is written at most this often: a dashboard polls every few seconds."""


@dataclass(frozen=True)
class SessionPolicy:
    """How long a session may last: idle, and at most."""

    idle_timeout: timedelta = DEFAULT_IDLE_TIMEOUT
    lifetime: timedelta = DEFAULT_LIFETIME


@dataclass(frozen=True)
class SignedIn:
    """The user behind a live session."""

    user_id: int
    email: str
    token: str
    """What the browser's cookie carries (never stored)."""


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def start_session(session: Session, user: User, now: datetime) -> SignedIn:
    """A new session for ``user``; the caller commits and puts the token in the cookie."""
    token = secrets.token_urlsafe(32)
    session.add(
        UserSession(token_hash=_hash(token), user_id=user.id, created_at=now, last_seen_at=now)
    )
    session.flush()
    return SignedIn(user.id, user.email, token)


_LIVE = (
    select(User.id, User.email, UserSession.id.label("session_id"), UserSession.last_seen_at)
    .join(User, User.id == UserSession.user_id)
    .where(
        UserSession.token_hash == bindparam("token_hash"),
        UserSession.created_at > bindparam("born_after"),
        UserSession.last_seen_at > bindparam("seen_after"),
        User.disabled_at.is_(None),
    )
)
_SEEN = (
    update(UserSession)
    .where(UserSession.id == bindparam("session_id"))
    .values(last_seen_at=bindparam("now"))
)


def live_session(
    session: Session, token: str, now: datetime, policy: SessionPolicy
) -> SignedIn | None:
    """The user of the session with this token, or ``None`` when it has ended.

    Read on every request, in one statement; seeing the session moves its
    idle timeout on, written at most once a minute.
    """
    parameters = {
        "token_hash": _hash(token),
        "born_after": now - policy.lifetime,
        "seen_after": now - policy.idle_timeout,
    }
    with lone_statement(session) as connection:
        row = connection.execute(_LIVE, parameters).one_or_none()
        if row is None:
            return None
        if now - row.last_seen_at >= SEEN_RESOLUTION:
            connection.execute(_SEEN, {"session_id": row.session_id, "now": now})
    return SignedIn(row.id, row.email, token)


def end_session(session: Session, token: str) -> None:
    """End the session with this token (signing out); the caller commits."""
    session.execute(delete(UserSession).where(UserSession.token_hash == _hash(token)))


def end_sessions_of(session: Session, user_id: int) -> int:
    """End every session of the user; how many there were. The caller commits."""
    result = session.execute(delete(UserSession).where(UserSession.user_id == user_id))
    return int(result.rowcount)  # type: ignore[attr-defined]
