"""Every rate limit of the portal, one small service over the ``limits`` library.

Called explicitly where a limit applies (the sign-in form, the API's
admission), as warehouse does: no per-request hooks elsewhere. Counters live
in ``RATE_LIMIT_STORAGE_URL``: in each process's memory by default, or in
Redis, shared by every worker and machine.

Sign-in and failed authentication count in moving windows (a limit of five a
minute is five in any sixty seconds). The API's throughput limit per key
counts in fixed windows: a moving window remembers every request of the
window, too much at thousands a second.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter, MovingWindowRateLimiter

# Sign-in: failures only count, so the right password is never refused for
# someone else's mistakes; per account and address, per address, and a
# higher ceiling per account against guessing from many addresses.
SIGN_IN_FAILURES_PER_ACCOUNT_AND_ADDRESS = "5 per minute"
SIGN_IN_FAILURES_PER_ADDRESS = "20 per minute"
SIGN_IN_FAILURES_PER_ACCOUNT = "50 per hour"
API_AUTH_FAILURES_PER_ADDRESS = "30 per minute"
"""Requests with a missing, malformed, unknown or revoked API key, per client address."""


@dataclass(frozen=True)
class Limit:
    """A named limit: one or more rates (``"2 per second; 100 per minute"``) on a counter."""

    name: str
    rates: tuple[RateLimitItem, ...]
    moving: bool = True

    @classmethod
    def parse(cls, name: str, setting: str, *, moving: bool = True) -> Limit:
        return cls(name, tuple(parse_many(setting)), moving)


class RateLimits:
    """Counts hits against limits, per whatever identifies the caller."""

    def __init__(self, storage_url: str) -> None:
        storage = storage_from_string(storage_url)
        self._storage = storage
        self._moving = MovingWindowRateLimiter(storage)
        self._fixed = FixedWindowRateLimiter(storage)

    def hit(self, limit: Limit, *identifiers: str) -> int | None:
        """Count one hit; the seconds to wait if that took it over a rate, else ``None``."""
        strategy = self._moving if limit.moving else self._fixed
        for rate in limit.rates:
            if not strategy.hit(rate, limit.name, *identifiers):
                return self._wait(limit, rate, identifiers)
        return None

    def exceeded(self, limit: Limit, *identifiers: str) -> int | None:
        """The seconds to wait if the limit is used up, else ``None``; counts nothing."""
        strategy = self._moving if limit.moving else self._fixed
        for rate in limit.rates:
            if not strategy.test(rate, limit.name, *identifiers):
                return self._wait(limit, rate, identifiers)
        return None

    def reset(self) -> None:
        """Forget every count (an operator clearing a lock-out, a test between cases)."""
        self._storage.reset()

    def _wait(self, limit: Limit, rate: RateLimitItem, identifiers: tuple[str, ...]) -> int:
        strategy = self._moving if limit.moving else self._fixed
        reset = strategy.get_window_stats(rate, limit.name, *identifiers).reset_time
        return max(1, math.ceil(reset - time.time()))
