"""The portal's one rate limiter, in each process's memory and in Redis."""

from __future__ import annotations

import socket
import uuid

import pytest

from portal.ratelimit import Limit, RateLimits

REDIS_URL = "redis://127.0.0.1:6379/15"


def redis_is_running() -> bool:
    try:
        socket.create_connection(("127.0.0.1", 6379), timeout=1).close()
    except OSError:
        return False
    return True


STORAGES = [
    "memory://",
    pytest.param(
        REDIS_URL,
        marks=pytest.mark.skipif(not redis_is_running(), reason="no Redis at 127.0.0.1:6379"),
    ),
]


@pytest.mark.parametrize("storage", STORAGES)
@pytest.mark.parametrize("moving", [True, False])
def test_a_caller_gets_its_allowance_then_waits(storage: str, moving: bool) -> None:
    limits = RateLimits(storage)
    limit = Limit.parse(f"test-{uuid.uuid4()}", "3 per hour", moving=moving)
    assert [limits.hit(limit, "caller") for _ in range(3)] == [None, None, None]
    wait = limits.hit(limit, "caller")
    assert wait is not None and 0 < wait <= 3600
    assert limits.exceeded(limit, "caller") is not None
    # Every caller has an allowance of its own.
    assert limits.hit(limit, "another caller") is None


@pytest.mark.parametrize("storage", STORAGES)
def test_checking_a_limit_counts_nothing(storage: str) -> None:
    limits = RateLimits(storage)
    limit = Limit.parse(f"test-{uuid.uuid4()}", "2 per hour")
    assert [limits.exceeded(limit, "caller") for _ in range(5)] == [None] * 5
    assert [limits.hit(limit, "caller") for _ in range(3)][:2] == [None, None]


def test_every_rate_of_a_combined_setting_applies() -> None:
    limits = RateLimits("memory://")
    limit = Limit.parse(f"test-{uuid.uuid4()}", "5 per hour; 2 per minute")
    answers = [limits.hit(limit, "caller") for _ in range(3)]
    assert answers[:2] == [None, None]
    assert answers[2] is not None and answers[2] <= 60  # the minute's rate ran out first


def test_an_unparseable_setting_is_refused() -> None:
    with pytest.raises(ValueError):
        Limit.parse("test", "lots")
