from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from portal.periods import add_months, period_containing


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


moments = st.datetimes(
    min_value=datetime(1990, 1, 1), max_value=datetime(2090, 1, 1), timezones=st.just(UTC)
)


@given(anchor=moments, moment=moments)
def test_the_period_containing_a_moment_contains_it(anchor: datetime, moment: datetime) -> None:
    period = period_containing(moment, anchor)
    assert period.start <= moment < period.end


@given(anchor=moments, moment=moments)
def test_periods_tile_time_without_gap_or_overlap(anchor: datetime, moment: datetime) -> None:
    period = period_containing(moment, anchor)
    # The next period starts exactly where this one ends, and the moment just
    # before the start belongs to the previous period.
    assert period_containing(period.end, anchor) == period.next()
    assert period.next().start == period.end
    assert period_containing(period.start - timedelta(microseconds=1), anchor).end == period.start
    assert timedelta(days=28) <= period.duration <= timedelta(days=31)


@given(anchor=moments, offset=st.integers(min_value=-240, max_value=240))
def test_every_period_starts_on_the_anchor_day_or_the_month_end(
    anchor: datetime, offset: int
) -> None:
    start = add_months(anchor, offset)
    assert start.day == anchor.day or (
        start.day < anchor.day and (start + timedelta(days=1)).day == 1
    )
    assert (start.hour, start.minute, start.second) == (anchor.hour, anchor.minute, anchor.second)


def test_month_end_anchor_is_clamped_then_restored() -> None:
    anchor = utc(2024, 1, 31, 9, 30)
    starts = [add_months(anchor, n) for n in range(4)]
    assert starts == [
        utc(2024, 1, 31, 9, 30),
        utc(2024, 2, 29, 9, 30),  # leap year
        utc(2024, 3, 31, 9, 30),
        utc(2024, 4, 30, 9, 30),
    ]
    assert add_months(utc(2025, 1, 31), 1) == utc(2025, 2, 28)


def test_event_at_period_end_belongs_to_next_period() -> None:
    anchor = utc(2026, 1, 15, 12)
    period = period_containing(utc(2026, 2, 1), anchor)
    assert (period.start, period.end) == (utc(2026, 1, 15, 12), utc(2026, 2, 15, 12))
    assert period_containing(period.end, anchor).start == period.end
    assert period_containing(period.end - timedelta(seconds=1), anchor) == period


def test_free_plan_uses_utc_calendar_months() -> None:
    period = period_containing(utc(2028, 2, 29, 23, 59, 59))
    assert (period.start, period.end) == (utc(2028, 2, 1), utc(2028, 3, 1))


def test_moments_in_other_time_zones_are_placed_by_their_utc_instant() -> None:
    from zoneinfo import ZoneInfo

    # 00:30 on March 1st in Berlin is still February in UTC.
    berlin = datetime(2026, 3, 1, 0, 30, tzinfo=ZoneInfo("Europe/Berlin"))
    assert period_containing(berlin).start == utc(2026, 2, 1)


def test_naive_datetimes_are_refused() -> None:
    with pytest.raises(ValueError, match="no time zone"):
        period_containing(datetime(2026, 1, 1))


def test_days_remaining_counts_part_days_and_never_goes_negative() -> None:
    period = period_containing(utc(2026, 3, 10), None)
    assert period.days_remaining(utc(2026, 3, 31, 12)) == 1
    assert period.days_remaining(utc(2026, 3, 1)) == 31
    assert period.days_remaining(utc(2026, 4, 2)) == 0


def test_stripes_current_period_wins_whatever_its_length() -> None:
    # A 14-day trial: Stripe's current period, then monthly from its end.
    trial = (utc(2026, 12, 4, 10), utc(2026, 12, 18, 10))
    anchor = trial[1]
    period = period_containing(utc(2026, 12, 10), anchor, trial)
    assert (period.start, period.end) == trial
    assert (period.next().start, period.next().end) == (trial[1], utc(2027, 1, 18, 10))
    before = period.previous()
    assert (before.start, before.end) == (utc(2026, 11, 18, 10), trial[0])  # cut at its start
    assert before.next() == period and period.shifted(-2).end == before.start


def test_a_period_restarted_mid_cycle_starts_its_own_months() -> None:
    # An upgrade with billing_cycle_anchor=now: the new period starts at once.
    upgraded = utc(2026, 3, 20, 15, 30)
    current = (upgraded, add_months(upgraded, 1))
    assert period_containing(upgraded, upgraded, current).start == upgraded
    assert period_containing(utc(2026, 3, 20, 15, 29), upgraded, current).end == upgraded
    assert period_containing(utc(2026, 5, 1), upgraded, current).start == utc(2026, 4, 20, 15, 30)
