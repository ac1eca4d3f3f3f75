"""The usage API's per-key rate limit (``API_RATE_LIMIT``), in fixed windows.

Sign-in attempts go through Flask-Limiter; the API counts directly, because
Flask-Limiter's per-request machinery (and the ``limits`` library's memory
storage, which starts a timer thread to expire its counters) cost more CPU
than recording the usage itself. With ``RATE_LIMIT_STORAGE_URL`` set to Redis
the counters live there, shared by all workers, through the ``limits``
library; in memory (the default) they are per process, as Flask-Limiter's
are, held in the small table below.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

from limits import RateLimitItem, parse_many
from limits.storage import storage_from_string
from limits.strategies import FixedWindowRateLimiter

MAX_TRACKED_WINDOWS = 100_000
"""Counters kept in memory before ended windows are dropped."""


class _LocalWindows:
    """Fixed-window counters in this process: (limit, bucket) -> (window's end, hits)."""

    def __init__(self) -> None:
        self._counts: dict[tuple[str, str], tuple[float, int]] = {}
        self._lock = threading.Lock()

    def retry_after(self, limit: RateLimitItem, bucket: str, now: float) -> float | None:
        length = limit.get_expiry()
        window_end = (now // length + 1) * length
        key = (limit.key_for(), bucket)
        with self._lock:
            ends, hits = self._counts.get(key, (window_end, 0))
            if ends != window_end:
                hits = 0
            if hits >= limit.amount:
                return window_end - now
            self._counts[key] = (window_end, hits + 1)
            if len(self._counts) > MAX_TRACKED_WINDOWS:
                for ended in [k for k, (end, _) in self._counts.items() if end <= now]:
                    del self._counts[ended]
        return None


class ApiRateLimit:
    """Every limit in ``setting`` (e.g. ``"100 per second; 6000 per minute"``), per bucket."""

    def __init__(self, setting: str, storage_url: str) -> None:
        self.setting = setting
        self.limits: Sequence[RateLimitItem] = parse_many(setting)
        self._local = _LocalWindows() if storage_url.startswith("memory://") else None
        self._shared = (
            None if self._local else FixedWindowRateLimiter(storage_from_string(storage_url))
        )

    def retry_after(self, bucket: str, now: float) -> int | None:
        """Count one request for ``bucket``; seconds to wait if it is over a limit, else None."""
        for limit in self.limits:
            if self._local is not None:
                wait = self._local.retry_after(limit, bucket, now)
            else:
                assert self._shared is not None
                if self._shared.hit(limit, "api", bucket):
                    continue
                wait = self._shared.get_window_stats(limit, "api", bucket).reset_time - now
            if wait is not None:
                return max(1, math.ceil(wait))
        return None
