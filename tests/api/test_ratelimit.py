"""The API's per-key rate limit, in memory and in Redis."""

from __future__ import annotations

import socket
import uuid

import pytest

from portal.api.ratelimit import ApiRateLimit

REDIS_URL = "redis://127.0.0.1:6379/15"


def redis_is_running() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        return False
    return True


def storages() -> list[object]:
    redis = pytest.param(
        REDIS_URL,
        marks=pytest.mark.skipif(
            not redis_is_running(), reason="no Redis server at 127.0.0.1:6379"
        ),
    )
    return ["memory://", redis]


@pytest.mark.parametrize("storage", storages())
def test_a_bucket_gets_its_allowance_then_waits_for_the_next_window(storage: str) -> None:
    limit = ApiRateLimit("3 per minute", storage)
    bucket, other = f"key:{uuid.uuid4()}", f"key:{uuid.uuid4()}"
    start = 1_800_000_000.0  # 10:00:00 UTC on a minute boundary
    assert [limit.retry_after(bucket, start + 1) for _ in range(3)] == [None, None, None]
    if storage == "memory://":
        assert limit.retry_after(bucket, start + 20) == 40  # the window ends at start + 60
    else:
        assert limit.retry_after(bucket, start + 20) is not None  # Redis keeps its own clock
    assert limit.retry_after(other, start + 20) is None  # every key has its own allowance


def test_a_new_window_restores_the_allowance() -> None:
    limit = ApiRateLimit("2 per second", "memory://")
    assert [limit.retry_after("k", 100.1) for _ in range(3)] == [None, None, 1]
    assert limit.retry_after("k", 101.0) is None


def test_every_limit_of_a_combined_setting_applies() -> None:
    limit = ApiRateLimit("2 per second; 3 per minute", "memory://")
    answers = [limit.retry_after("k", moment) for moment in (60.0, 60.1, 61.0, 62.0, 63.0)]
    # Two in the first second; the third in a new second; then the minute is used up.
    assert answers == [None, None, None, 58, 57]
