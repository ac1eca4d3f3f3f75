"""Who may call the API: the per-key rate limit and the bearer key, checked before anything else.

Shared by the Flask blueprint and the recording endpoint that runs in front
of Flask (``portal.api.record_event``), so both admit and refuse exactly alike.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from portal.api.errors import RATE_LIMITED, ApiError
from portal.api.ratelimit import ApiRateLimit
from portal.apikeys import ApiKeyInfo, authenticate, remembered_key


def rate_limit_bucket(authorization: str, remote_addr: str | None) -> str:
    """Whose allowance a request draws on.

    The limit applies before authentication, so it buckets by the presented
    credential itself (hashed); requests without one share their address's.
    """
    if authorization:
        return "key:" + hashlib.sha256(authorization.encode()).hexdigest()[:32]
    return "addr:" + (remote_addr or "unknown")


def bearer_key(authorization: str) -> str:
    """The key of an ``Authorization: Bearer <key>`` header; empty for any other header."""
    scheme, _, key = authorization.partition(" ")
    return key.strip() if scheme.lower() == "bearer" else ""


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        "Send a valid API key as 'Authorization: Bearer <key>'.",
        headers={"WWW-Authenticate": 'Bearer realm="usage-api"'},
    )


@dataclass
class Admission:
    """The live key a request presented, and whether it was looked up for this request."""

    key: ApiKeyInfo
    presented: str
    checked: bool
    """False for a remembered key (``remembered_key``): it may have been revoked since."""

    def refusal(self, session: Session, error: ApiError, at: datetime) -> ApiError:
        """What to answer instead of ``error``: 401 if the key turns out revoked meanwhile.

        A remembered key is checked by the recording statement; a request
        refused before that statement (bad input, unknown user) would
        otherwise answer a revoked key with something other than 401, and so
        tell it whether an email address has an account.
        """
        if error.status == 401 or self.checked:
            return error
        self.checked = True
        if authenticate(session, self.presented, at) is None:
            return unauthorized()
        session.commit()  # a refreshed last_used_at, if any
        return error


def admit(
    session: Session,
    rate_limit: ApiRateLimit,
    authorization: str,
    remote_addr: str | None,
    at: datetime,
    *,
    remembered: bool,
) -> Admission:
    """The request's live key, or the refusal (429 with Retry-After, 401) it gets.

    ``remembered``: a key this process authenticated a moment ago may go
    without a lookup (``remembered_key``); only for writes that check the key
    is still live in their own statement.
    """
    wait = rate_limit.retry_after(rate_limit_bucket(authorization, remote_addr), time.time())
    if wait is not None:
        raise ApiError(429, "rate_limited", RATE_LIMITED, headers={"Retry-After": str(wait)})
    key = bearer_key(authorization)
    info = remembered_key(key, at) if remembered else None
    if info is not None:
        return Admission(info, key, checked=False)
    info = authenticate(session, key, at)
    if info is None:
        raise unauthorized()
    if info.refreshed:
        session.commit()  # at most once a minute: keeps last_used_at
    return Admission(info, key, checked=True)
