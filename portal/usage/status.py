"""``check_usage``: where a user stands in the current billing period.

The ``UsageStatus`` it returns is the one value that the dashboard, the JSON
API and the CLI all show, so they can never disagree.
"""

from __future__ import annotations

import enum
import math
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.models import MemberUsage, UsageRecord
from portal.periods import BillingPeriod
from portal.plans import Plan, WarningLevel, percent_used, warning_level
from portal.usage.subjects import BillingSubject, EffectivePlan, SubjectKind, resolve_effective_plan

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


@dataclass(frozen=True)
class UsageStatus:
    """Usage of one user's billing subject in one billing period."""

    user_id: int
    email: str
    plan: Plan
    subject: BillingSubject
    period: BillingPeriod
    days_remaining: int
    used: int
    included: int
    member_used: int | None
    """The user's own part of an organization's pool; ``None`` when billed alone."""
    projected_used: int

    @property
    def remaining(self) -> int:
        return max(0, self.included - self.used)

    @property
    def percent(self) -> Decimal:
        return percent_used(self.used, self.included)

    @property
    def warning_level(self) -> WarningLevel:
        return warning_level(self.used, self.included)

    @property
    def overage_count(self) -> int:
        return 0 if self.plan.is_hard_capped else max(0, self.used - self.included)

    @property
    def overage_cost_cents(self) -> int:
        return self.plan.overage_cost_cents(self.overage_count)

    @property
    def projected_overage_cost_cents(self) -> int:
        if self.plan.is_hard_capped:
            return 0
        return self.plan.overage_cost_cents(max(0, self.projected_used - self.included))

    @property
    def reason(self) -> Reason:
        if self.used < self.included:
            return Reason.WITHIN_QUOTA
        return Reason.LIMIT_REACHED if self.plan.is_hard_capped else Reason.OVERAGE

    @property
    def allowed(self) -> bool:
        """May the user have one more suggestion now?"""
        return self.reason is not Reason.LIMIT_REACHED

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


def build_status(
    effective: EffectivePlan,
    period: BillingPeriod,
    used: int,
    member_used: int | None,
    now: datetime,
) -> UsageStatus:
    return UsageStatus(
        user_id=effective.user_id,
        email=effective.email,
        plan=effective.plan,
        subject=effective.subject,
        period=period,
        days_remaining=period.days_remaining(now),
        used=used,
        included=effective.included,
        member_used=member_used,
        projected_used=_capped(effective, project_usage(used, period, now)),
    )


def _capped(effective: EffectivePlan, projected: int) -> int:
    # A hard cap stops usage at the included amount, so never project past it.
    if effective.plan.is_hard_capped:
        return min(projected, max(effective.included, 0))
    return projected


def status_for(
    session: Session, effective: EffectivePlan, period: BillingPeriod, now: datetime
) -> UsageStatus:
    """Usage of ``effective``'s subject in ``period`` as the database has it."""
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
        pool, own = session.execute(
            select(pool_used.scalar_subquery(), member_used.scalar_subquery())
        ).one()
        return build_status(effective, period, pool or 0, own or 0, now)
    used = session.scalar(
        select(UsageRecord.used).where(
            UsageRecord.user_id == subject.id, UsageRecord.period_start == period.start
        )
    )
    return build_status(effective, period, used or 0, None, now)


def check_usage(session: Session, user: int | str, now: datetime) -> UsageStatus:
    """Where the user (id or email) stands in the billing period containing ``now``."""
    effective = resolve_effective_plan(session, user)
    return status_for(session, effective, effective.period_at(now), now)
