"""A billing subject's usage day by day in one billing period: the daily chart's figures.

Days are UTC calendar days, as periods are. Each day carries its own
suggestions and the period's running total at its end, because the included
amount is a period total: a running total is what compares with it. The
projection is the status's own (``status.projected_used``), so the chart's
dashed line ends where the dashboard's "Projected by" figure says.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

from sqlalchemy import ARRAY, Date, Select, String, any_, bindparam, cast, func, literal, select
from sqlalchemy.orm import Session

from portal.database import lone_statement
from portal.models import Organization, UsageEvent, UTCDateTime
from portal.periods import RESOLUTION, BillingPeriod, as_utc
from portal.plans import QUOTA_EVENT_TYPES, Plan, get_plan
from portal.usage.organizations import organization_period
from portal.usage.status import projected_used
from portal.usage.subjects import BillingSubject, SubjectKind, organization_subject


@dataclass(frozen=True)
class UsageDay:
    """One UTC day of a billing period."""

    day: date
    suggestions: int
    """Suggestions used that day."""
    running_total: int
    """The period's suggestions up to the end of that day (up to now, today)."""


@dataclass(frozen=True)
class DailyUsage:
    """A subject's period day by day so far, against what the period includes."""

    plan: Plan
    period: BillingPeriod
    days: tuple[UsageDay, ...]
    """The period's first day to today (to its last day once it is over), days without
    usage included with 0."""
    included: int
    projected_used: int | None
    """The period's total projected at its end by the status's rule; ``None`` once it is
    over (nothing left to project)."""

    @property
    def used(self) -> int:
        """The period's suggestions so far: the last running total."""
        return self.days[-1].running_total if self.days else 0


@functools.cache
def _suggestions_per_day(kind: SubjectKind, member: bool) -> Select[Any]:
    """Suggestions per UTC day of a subject's period, one row per day with usage.

    ``ix_usage_events_pool_day`` (a pool, or one member of it) and
    ``ix_usage_events_user_day`` (an individual) find the subject's period.
    """
    events = UsageEvent.__table__
    start = bindparam("start", type_=UTCDateTime())
    now = bindparam("now", type_=UTCDateTime())
    counted = literal(list(QUOTA_EVENT_TYPES), ARRAY(String))
    # Every event of the period is on one of its days, so the last running total is
    # the period's total: one dated a few minutes ahead (a caller's clock running
    # fast) counts today, and one a plan change left in a period that then ended
    # before it occurred (billing.refile moves only unclaimed events) counts on its
    # last day.
    last_moment = bindparam("last_moment", type_=UTCDateTime())
    moment = func.least(func.greatest(events.c.occurred_at, start), now, last_moment)
    conditions = [events.c.period_start == start, events.c.event_type == any_(counted)]
    if kind is SubjectKind.ORGANIZATION:
        conditions.append(events.c.organization_id == bindparam("subject_id"))
        if member:
            conditions.append(events.c.user_id == bindparam("member_id"))
    else:
        if member:
            raise ValueError("only an organization's pool has members")
        conditions += [
            events.c.user_id == bindparam("subject_id"),
            events.c.organization_id.is_(None),
        ]
    dated = (
        select(cast(func.timezone("UTC", moment), Date).label("day"), events.c.quantity)
        .where(*conditions)
        .subquery("dated")
    )
    return select(dated.c.day, func.sum(dated.c.quantity).label("suggestions")).group_by(
        dated.c.day
    )


def daily_usage(
    session: Session,
    subject: BillingSubject,
    period: BillingPeriod,
    now: datetime,
    *,
    plan: Plan,
    included: int,
    member_id: int | None = None,
) -> DailyUsage:
    """``subject``'s usage in ``period`` per UTC day up to ``now``, in one statement.

    With ``member_id``, only that member's part of an organization's pool.
    ``plan`` and ``included`` are what the usage is compared with (and the
    projection capped by, on a hard-capped plan).
    """
    now = as_utc(now)
    parameters = {
        "start": period.start,
        "now": now,
        "last_moment": period.end - RESOLUTION,
        "subject_id": subject.id,
    }
    if member_id is not None:
        parameters["member_id"] = member_id
    statement = _suggestions_per_day(subject.kind, member_id is not None)
    with lone_statement(session) as connection:
        per_day = {
            row.day: int(row.suggestions) for row in connection.execute(statement, parameters)
        }
    today = now.date()
    days: list[UsageDay] = []
    running = 0
    for day in period.days:
        if day > today:
            break
        suggestions = per_day.get(day, 0)
        running += suggestions
        days.append(UsageDay(day, suggestions, running))
    projection = None
    if now < period.end:
        projection = projected_used(plan, running, included, period, now)
    return DailyUsage(plan, period, tuple(days), included, projection)


def pool_daily_usage(
    session: Session, org: Organization, period: BillingPeriod, now: datetime
) -> DailyUsage:
    """The organization's pool in ``period`` day by day, against the pool's allowance."""
    plan = get_plan(org.plan_id)
    subject = organization_subject(org)
    return daily_usage(
        session, subject, period, now, plan=plan, included=plan.included_for(org.seats)
    )


def member_daily_usage(
    session: Session, org: Organization, member_id: int, now: datetime
) -> DailyUsage:
    """One member's part of the pool in the current period day by day, against one seat's
    allowance (as the member's levels and history are)."""
    plan = get_plan(org.plan_id)
    return daily_usage(
        session,
        organization_subject(org),
        organization_period(org, now),
        now,
        plan=plan,
        included=plan.included_per_seat,
        member_id=member_id,
    )
