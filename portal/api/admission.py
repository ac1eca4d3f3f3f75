"""Who may call the API: a live bearer key, within its rate limit. Checked before any view runs.

Failed authentication is limited per client address, so guessing keys costs
the guesser, not the database; the throughput limit counts per key, however
the ``Authorization`` header spells it.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime

from sqlalchemy.orm import Session

from portal.api.errors import ApiError, rate_limited
from portal.apikeys import ApiKeyInfo, authenticate
from portal.ratelimit import API_AUTH_FAILURES_PER_ADDRESS, Limit, RateLimits

# RFC 6750: the scheme is case-insensitive; we also tolerate any run of
# spaces or tabs around the token.
BEARER = re.compile(r"^[ \t]*bearer[ \t]+(\S+)[ \t]*$", re.IGNORECASE)
AUTH_FAILURES = Limit.parse("api-auth-failures", API_AUTH_FAILURES_PER_ADDRESS)
TOO_MANY_FAILURES = (
    "Too many requests with a missing or invalid API key from this address; "
    "retry after the time in Retry-After."
)


def bearer_key(authorization: str) -> str | None:
    """The key of an ``Authorization: Bearer <key>`` header; ``None`` for any other header."""
    match = BEARER.match(authorization)
    return match.group(1) if match else None


def unauthorized() -> ApiError:
    return ApiError(
        401,
        "unauthorized",
        "Send a valid API key as 'Authorization: Bearer <key>'.",
        headers={"WWW-Authenticate": 'Bearer realm="usage-api"'},
    )


def admit(
    session: Session,
    rate_limits: RateLimits,
    per_key: Limit,
    authorization: str,
    address: str,
    at: datetime,
) -> ApiKeyInfo:
    """The request's live key, or the refusal it gets: 429 with ``Retry-After``, or 401."""
    wait = rate_limits.exceeded(AUTH_FAILURES, address)
    if wait is not None:
        raise rate_limited(wait, TOO_MANY_FAILURES)
    key = bearer_key(authorization)
    if key is not None:
        wait = rate_limits.hit(per_key, hashlib.sha256(key.encode()).hexdigest())
        if wait is not None:
            raise rate_limited(wait)
        info = authenticate(session, key, at)
        if info is not None:
            return info
    rate_limits.hit(AUTH_FAILURES, address)
    raise unauthorized()
