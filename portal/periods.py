"""Billing periods: the one place that decides which period a moment falls in.

Periods are half-open UTC intervals ``[start, end)``: an event at exactly
``end`` belongs to the next period. Paid subscriptions renew monthly from their
billing anchor, the way Stripe does: when the anchor's day does not exist in a
month the period starts on that month's last day, and the month after returns
to the anchor day (Jan 31 -> Feb 29 -> Mar 31). Free plans use UTC calendar
months. When Stripe names a subscription's current period, that period wins
whatever its length (a trial of 14 days, say): the monthly periods around it
stop at its start and begin at its end.
"""

from __future__ import annotations

import calendar
import functools
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

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


def last_day(start: datetime, end: datetime) -> date:
    """The last UTC day a person counts as in the period ``[start, end)``: the day before
    the one it ends on. A period Nov 7 – Dec 7 (exclusive) reads "Nov 7 – Dec 6"; each day
    names one period, the one it starts in. The exact ``end`` stays in the API."""
    return max(start.date(), (end - timedelta(days=1)).date())


@dataclass(frozen=True, order=True)
class BillingPeriod:
    """One billing period ``[start, end)``; it knows its neighbours."""

    start: datetime
    end: datetime
    anchor: datetime = field(compare=False)
    """The billing cycle anchor the monthly periods around this one follow."""
    current: tuple[datetime, datetime] | None = field(default=None, compare=False)
    """Stripe's current period of the subscription, when it named one."""

    def __contains__(self, moment: datetime) -> bool:
        return self.start <= as_utc(moment) < self.end

    @property
    def duration(self) -> timedelta:
        return self.end - self.start

    @property
    def first_day(self) -> date:
        return self.start.date()

    @property
    def last_day(self) -> date:
        return last_day(self.start, self.end)

    @property
    def days(self) -> list[date]:
        """Every UTC day the period has moments in, first to last.

        A period that starts and ends mid-day (an anchor at 14:30) shares its first and
        last day with its neighbours: usage on the morning of the day it ends on still
        counts in it, so a day-by-day chart needs that day too, though ``last_day`` (the
        label) leaves it to the next period.
        """
        first, final = self.first_day, (self.end - RESOLUTION).date()
        return [first + timedelta(days=n) for n in range((final - first).days + 1)]

    def shifted(self, periods: int) -> BillingPeriod:
        """The period ``periods`` periods later (earlier when negative)."""
        period = self
        for _ in range(abs(periods)):
            period = period.next() if periods > 0 else period.previous()
        return period

    def previous(self) -> BillingPeriod:
        return period_containing(self.start - RESOLUTION, self.anchor, self.current)

    def next(self) -> BillingPeriod:
        return period_containing(self.end, self.anchor, self.current)

    def days_remaining(self, now: datetime) -> int:
        """Whole or part days left until the period resets, never negative."""
        seconds = (self.end - as_utc(now)).total_seconds()
        return max(0, -int(-seconds // 86400))

    def elapsed_fraction(self, now: datetime) -> float:
        """How much of the period has passed at ``now``, from 0.0 to 1.0."""
        elapsed = (as_utc(now) - self.start) / self.duration
        return min(1.0, max(0.0, elapsed))


RESOLUTION = timedelta(microseconds=1)
"""The smallest step between two moments: a period ends a step before the next starts."""


@functools.lru_cache(maxsize=8192)
def period_containing(
    moment: datetime,
    anchor: datetime | None = None,
    current: tuple[datetime, datetime] | None = None,
) -> BillingPeriod:
    """The billing period that contains ``moment``.

    ``anchor`` is the subscription's billing cycle anchor; ``None`` means UTC
    calendar months (the free plan). Moments before the anchor fall in the
    periods that would have preceded it, so history lines up with the
    subscription's own cycle. ``current`` is Stripe's current period of the
    subscription, if known: it is a period of its own, and the monthly
    periods that would overlap it are cut at its edges.
    """
    anchor = as_utc(anchor) if anchor is not None else CALENDAR_MONTH_ANCHOR
    moment = as_utc(moment)
    if current is not None:
        current = (as_utc(current[0]), as_utc(current[1]))
        if current[0] <= moment < current[1]:
            return BillingPeriod(current[0], current[1], anchor, current)
    index = (moment.year - anchor.year) * 12 + (moment.month - anchor.month)
    # The estimate is off by at most one either way (the anchor's day and time
    # may lie after the moment's within the month).
    while add_months(anchor, index) > moment:
        index -= 1
    while add_months(anchor, index + 1) <= moment:
        index += 1
    start, end = add_months(anchor, index), add_months(anchor, index + 1)
    if current is not None and start < current[1] and end > current[0]:
        start, end = (start, current[0]) if moment < current[0] else (current[1], end)
    return BillingPeriod(start, end, anchor, current)
