"""``check_usage``: where a user stands in the current billing period, in one read.

The ``UsageStatus`` it returns is the one value that the dashboard, its
polled live region, the JSON API and the CLI all show, so they can never
disagree.
"""

from __future__ import annotations

import enum
import functools
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    literal_column,
    or_,
    select,
    true,
    union_all,
)
from sqlalchemy.orm import Session

from portal.database import lone_statement
from portal.models import MemberUsage, UsageRecord, UTCDateTime
from portal.periods import BillingPeriod, as_utc
from portal.plans import FREE, Plan, UsageFigures
from portal.usage.subjects import (
    BillingSubject,
    EffectivePlan,
    SubjectKind,
    SubscriptionTerms,
    UnknownUser,
    effective_plan_from_row,
    effective_plan_query,
    lookup_key,
)

# Early in a period the pace is noise: project as if at least this much of
# the period had passed.
MIN_PROJECTION_ELAPSED = timedelta(days=1)


class Reason(enum.StrEnum):
    """Why another suggestion is or is not allowed."""

    WITHIN_QUOTA = "within_quota"
    OVERAGE = "overage"
    """Over the included amount on a paid plan: allowed, billed at the overage rate."""
    LIMIT_REACHED = "limit_reached"
    """A hard-capped plan has used all it includes."""
    USER_DISABLED = "user_disabled"
    """An operator disabled the user: nothing more is recorded for them."""


@dataclass(frozen=True)
class UsageStatus(UsageFigures):
    """Usage of one user's billing subject in one billing period."""

    user_id: int
    email: str
    subject: BillingSubject
    period: BillingPeriod
    days_remaining: int
    member_used: int | None
    """The user's own part of an organization's pool; ``None`` when billed alone."""
    projected_used: int
    disabled: bool = False
    terms: SubscriptionTerms | None = None
    """What Stripe says of the subscription (trial, cancellation); ``None`` on free."""
    fallback: Plan = FREE
    """The plan that governs once the subscription ends."""

    @property
    def trialing(self) -> bool:
        return self.terms is not None and self.terms.status == "trialing"

    @property
    def payment_failed(self) -> bool:
        return self.terms is not None and self.terms.status == "past_due"

    @property
    def ends_at(self) -> datetime | None:
        """When a subscription canceled at its period's end stops; ``None`` otherwise."""
        if self.terms is None or not self.terms.cancel_at_period_end:
            return None
        return self.period.end

    @property
    def projected_overage_cost_cents(self) -> int:
        if self.plan.is_hard_capped:
            return 0
        return self.plan.overage_cost_cents(max(0, self.projected_used - self.included))

    @property
    def reason(self) -> Reason:
        if self.disabled:
            return Reason.USER_DISABLED
        if self.used < self.included:
            return Reason.WITHIN_QUOTA
        return Reason.LIMIT_REACHED if self.plan.is_hard_capped else Reason.OVERAGE

    @property
    def allowed(self) -> bool:
        """May the user have one more suggestion now?"""
        return self.reason in (Reason.WITHIN_QUOTA, Reason.OVERAGE)

    def as_dict(self) -> dict[str, Any]:
        """The JSON shape shared by the API and ``--json`` CLI output."""
        return {
            "allowed": self.allowed,
            "reason": str(self.reason),
            "warning_level": str(self.warning_level),
            "used": self.used,
            "included": self.included,
            "remaining": self.remaining,
            "percent": float(self.percent),
            "overage_count": self.overage_count,
            "overage_rate_cents": self.plan.overage_rate_cents,
            "overage_cost_cents": self.overage_cost_cents,
            "projected_used": self.projected_used,
            "plan": self.plan.id,
            "period_start": self.period.start.isoformat(),
            "period_end": self.period.end.isoformat(),
            "days_remaining": self.days_remaining,
            "billing_subject": str(self.subject),
            "member_used": self.member_used,
        }


def project_usage(used: int, period: BillingPeriod, now: datetime) -> int:
    """Usage at the period's end if the pace so far continues."""
    if now >= period.end:
        return used
    floor = MIN_PROJECTION_ELAPSED / period.duration
    elapsed = max(period.elapsed_fraction(now), floor)
    return max(used, math.ceil(round(used / elapsed, 6)))


def projected_used(
    plan: Plan, used: int, included: int, period: BillingPeriod, now: datetime
) -> int:
    """What the status projects for ``used`` of ``included`` by the period's end on ``plan``.

    The one projection the pages show: the dashboard's figure, and the dashed
    line of every daily chart (a pool's, a member's).
    """
    projected = project_usage(used, period, now)
    if plan.is_hard_capped:
        # A hard cap stops usage at the included amount, so never project past it
        # (nor below what is used already, if the allowance shrank meanwhile).
        projected = min(projected, max(included, used))
    return projected


def build_status(
    effective: EffectivePlan,
    period: BillingPeriod,
    used: int,
    member_used: int | None,
    now: datetime,
) -> UsageStatus:
    """The status of ``effective``'s subject in ``period`` with ``used`` counted."""
    projected = projected_used(effective.plan, used, effective.included, period, now)
    return UsageStatus(
        plan=effective.plan,
        used=used,
        included=effective.included,
        user_id=effective.user_id,
        email=effective.email,
        subject=effective.subject,
        period=period,
        days_remaining=period.days_remaining(now),
        member_used=member_used,
        projected_used=projected,
        disabled=effective.disabled,
        terms=effective.terms,
        fallback=effective.fallback,
    )


# A monthly period is at most 31 days long, so the current one started within
# this window before ``now``; a period Stripe named (a long trial) may have
# started earlier, and the query looks back to its start too.
LONGEST_PERIOD = timedelta(days=32)


@functools.cache
def _status_query(lookup: str) -> Select[Any]:
    """The effective plan and every running total it may need, as one statement.

    The resolution query of ``subjects`` (the one rule of who pays) runs as a
    CTE; joined to it are the running totals that may be current: the
    user's own, the pool of the organization the resolution chose, and the
    user's part of that pool. Which of them counts, and which period is
    current, is decided in Python by the same ``EffectivePlan`` and period
    rule as everywhere else.
    """
    resolution = effective_plan_query(lookup).cte("resolution")
    user_id = select(resolution.c.user_id).scalar_subquery()
    pool_id = select(resolution.c.org_id).scalar_subquery()
    records = UsageRecord.__table__
    members = MemberUsage.__table__
    since = bindparam("since", type_=UTCDateTime())
    until = bindparam("until", type_=UTCDateTime())

    def recent(period_start: ColumnElement[Any], stripe_start: Any) -> ColumnElement[bool]:
        named = period_start >= select(stripe_start).scalar_subquery()
        return and_(or_(period_start > since, named), period_start <= until)

    own, pooled = resolution.c.sub_period_start, resolution.c.org_period_start
    usage = union_all(
        select(
            literal_column("'user'").label("kind"), records.c.period_start, records.c.used
        ).where(records.c.user_id == user_id, recent(records.c.period_start, own)),
        select(literal_column("'pool'"), records.c.period_start, records.c.used).where(
            records.c.organization_id == pool_id, recent(records.c.period_start, pooled)
        ),
        select(literal_column("'member'"), members.c.period_start, members.c.used).where(
            members.c.organization_id == pool_id,
            members.c.user_id == user_id,
            recent(members.c.period_start, pooled),
        ),
    ).subquery("usage")
    return (
        select(*resolution.c, usage.c.kind, usage.c.period_start, usage.c.used)
        .select_from(resolution)
        .outerjoin(usage, true())
    )


def check_usage(session: Session, user: int | str, now: datetime) -> UsageStatus:
    """Where the user (id or email) stands in the billing period containing ``now``.

    One statement: the dashboard, its poll and the API's check all read it.
    Raises ``UnknownUser`` when there is no such user.
    """
    now = as_utc(now)
    lookup, key = lookup_key(user)
    parameters = {"user_key": key, "now": now, "since": now - LONGEST_PERIOD, "until": now}
    with lone_statement(session) as connection:
        rows = connection.execute(_status_query(lookup), parameters).all()
    if not rows:
        raise UnknownUser(f"no user {user!r}")
    effective = effective_plan_from_row(rows[0])
    period = effective.period_at(now)
    used = {
        row.kind: row.used
        for row in rows
        if row.kind is not None and row.period_start == period.start
    }
    if effective.subject.kind is SubjectKind.ORGANIZATION:
        return build_status(effective, period, used.get("pool", 0), used.get("member", 0), now)
    return build_status(effective, period, used.get("user", 0), None, now)


def status_for(
    session: Session, effective: EffectivePlan, period: BillingPeriod, now: datetime
) -> UsageStatus:
    """Usage of ``effective``'s subject in ``period``, for a plan resolved a moment ago."""
    subject = effective.subject
    if subject.kind is SubjectKind.ORGANIZATION:
        pool_used = select(UsageRecord.used).where(
            UsageRecord.organization_id == subject.id,
            UsageRecord.period_start == period.start,
        )
        member_used = select(MemberUsage.used).where(
            MemberUsage.organization_id == subject.id,
            MemberUsage.period_start == period.start,
            MemberUsage.user_id == effective.user_id,
        )
        statement = select(pool_used.scalar_subquery(), member_used.scalar_subquery())
        with lone_statement(session) as connection:
            pool, own = connection.execute(statement).one()
        return build_status(effective, period, pool or 0, own or 0, now)
    statement = select(UsageRecord.used).where(
        UsageRecord.user_id == subject.id, UsageRecord.period_start == period.start
    )
    with lone_statement(session) as connection:
        used = connection.scalar(statement)
    return build_status(effective, period, used or 0, None, now)
