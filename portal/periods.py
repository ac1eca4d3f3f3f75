"""Billing periods: the one place that decides which period a moment falls in.

Periods are half-open UTC intervals ``[start, end)``: an event at exactly
``end`` belongs to the next period. Paid subscriptions renew monthly from their
billing anchor, the way Stripe does: when the anchor's day does not exist in a
month the period starts on that month's last day, and the month after returns
to the anchor day (Jan 31 -> Feb 29 -> Mar 31). Free plans use UTC calendar
months.
"""

from __future__ import annotations

import calendar
import functools
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

# Calendar months are monthly periods anchored at any first-of-month midnight.
CALENDAR_MONTH_ANCHOR = datetime(2000, 1, 1, tzinfo=UTC)


def as_utc(moment: datetime) -> datetime:
    """``moment`` in UTC; a naive datetime is refused rather than guessed."""
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValueError(f"datetime {moment.isoformat()} has no time zone")
    return moment.astimezone(UTC)


def add_months(anchor: datetime, months: int) -> datetime:
    """The anchor moved by whole months, its day clamped to the month's last day."""
    index = anchor.year * 12 + (anchor.month - 1) + months
    year, month0 = divmod(index, 12)
    last_day = calendar.monthrange(year, month0 + 1)[1]
    return anchor.replace(year=year, month=month0 + 1, day=min(anchor.day, last_day))


@dataclass(frozen=True, order=True)
class BillingPeriod:
    """One billing period ``[start, end)`` of a subscription with ``anchor``."""

    start: datetime
    end: datetime
    anchor: datetime
    index: int
    """Months since the anchor: 0 is the period starting at the anchor."""

    def __contains__(self, moment: datetime) -> bool:
        return self.start <= as_utc(moment) < self.end

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    def shifted(self, periods: int) -> BillingPeriod:
        """The period ``periods`` months later (earlier when negative)."""
        return _period_at(self.anchor, self.index + periods)

    def previous(self) -> BillingPeriod:
        return self.shifted(-1)

    def next(self) -> BillingPeriod:
        return self.shifted(1)

    def days_remaining(self, now: datetime) -> int:
        """Whole or part days left until the period resets, never negative."""
        seconds = (self.end - as_utc(now)).total_seconds()
        return max(0, -int(-seconds // 86400))

    def elapsed_fraction(self, now: datetime) -> float:
        """How much of the period has passed at ``now``, from 0.0 to 1.0."""
        elapsed = (as_utc(now) - self.start) / self.duration
        return min(1.0, max(0.0, elapsed))


def _period_at(anchor: datetime, index: int) -> BillingPeriod:
    return BillingPeriod(
        start=add_months(anchor, index),
        end=add_months(anchor, index + 1),
        anchor=anchor,
        index=index,
    )


@functools.lru_cache(maxsize=8192)
def period_containing(moment: datetime, anchor: datetime | None = None) -> BillingPeriod:
    """The billing period that contains ``moment``.

    ``anchor`` is the subscription's billing cycle anchor; ``None`` means UTC
    calendar months (the free plan). Moments before the anchor fall in the
    periods that would have preceded it, so history lines up with the
    subscription's own cycle.
    """
    anchor = as_utc(anchor) if anchor is not None else CALENDAR_MONTH_ANCHOR
    moment = as_utc(moment)
    index = (moment.year - anchor.year) * 12 + (moment.month - anchor.month)
    # The estimate is off by at most one either way (the anchor's day and time
    # may lie after the moment's within the month).
    while add_months(anchor, index) > moment:
        index -= 1
    while add_months(anchor, index + 1) <= moment:
        index += 1
    return _period_at(anchor, index)
