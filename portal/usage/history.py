"""A billing subject's usage over its past billing periods."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.models import MemberUsage, UsageRecord
from portal.periods import BillingPeriod
from portal.plans import UsageFigures, get_plan
from portal.usage.subjects import EffectivePlan, SubjectKind, resolve_effective_plan

DEFAULT_HISTORY_PERIODS = 12


@dataclass(frozen=True)
class PeriodUsage(UsageFigures):
    """Usage in one billing period, with the plan that governed it."""

    period: BillingPeriod
    is_current: bool
    member_used: int | None = None
    """For a pool: the signed-in member's own part of ``used``; ``None`` for an individual."""


@dataclass(frozen=True)
class UsageHistory:
    effective: EffectivePlan
    periods: list[PeriodUsage]
    """Newest first, one per period, periods without usage included."""


def get_usage_history(
    session: Session, user: int | str, now: datetime, periods: int = DEFAULT_HISTORY_PERIODS
) -> UsageHistory:
    """The last ``periods`` billing periods of the user's billing subject, newest first.

    Periods follow the current plan's cycle. Usage counted under an earlier
    plan whose periods started on other days shows in the period its own
    period started in, and keeps that plan's allowance and overage rate.
    """
    if periods < 1:
        raise ValueError(f"periods must be at least 1, got {periods}")
    effective = resolve_effective_plan(session, user, now)
    current = effective.period_at(now)
    window = [current.shifted(-offset) for offset in range(periods)]
    subject = effective.subject
    subject_column = (
        UsageRecord.organization_id
        if subject.kind is SubjectKind.ORGANIZATION
        else UsageRecord.user_id
    )
    records = session.execute(
        select(
            UsageRecord.period_start, UsageRecord.used, UsageRecord.included, UsageRecord.plan_id
        )
        .where(
            subject_column == subject.id,
            UsageRecord.period_start >= window[-1].start,
            UsageRecord.period_start < current.end,
        )
        .order_by(UsageRecord.period_start)
    ).all()

    own: dict[datetime, int] | None = None
    if subject.kind is SubjectKind.ORGANIZATION:
        own = {
            row.period_start: row.used
            for row in session.execute(
                select(MemberUsage.period_start, MemberUsage.used).where(
                    MemberUsage.organization_id == subject.id,
                    MemberUsage.user_id == effective.user_id,
                    MemberUsage.period_start >= window[-1].start,
                    MemberUsage.period_start < current.end,
                )
            )
        }

    rows: list[PeriodUsage] = []
    for period in window:
        inside = [r for r in records if r.period_start in period]
        used = sum(r.used for r in inside)
        if inside:
            governing = next((r for r in inside if r.period_start == period.start), inside[-1])
            plan, included = get_plan(governing.plan_id), governing.included
        else:
            plan, included = effective.plan, effective.included
        mine = None if own is None else sum(n for start, n in own.items() if start in period)
        rows.append(PeriodUsage(plan, used, included, period, period == current, mine))
    return UsageHistory(effective, rows)
