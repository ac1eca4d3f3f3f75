"""The usage domain: plans in force, recording, and the queries behind every page.

Nothing here knows about Flask requests: functions take a SQLAlchemy session
and explicit values (``now``, periods, ids) and return frozen dataclasses.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session

from portal.usage.history import PeriodUsage, UsageHistory, get_usage_history
from portal.usage.organizations import (
    MemberSort,
    MemberUsageRow,
    OrgUsageSummary,
    get_org_usage_summary,
    iter_org_member_usage,
    organization_period,
)
from portal.usage.recording import (
    IdempotencyKeyReused,
    InvalidUsage,
    RecordOutcome,
    RecordResult,
    record_usage,
)
from portal.usage.status import Reason, UsageStatus, check_usage
from portal.usage.subjects import (
    BillingSubject,
    EffectivePlan,
    SubjectKind,
    UnknownUser,
    resolve_effective_plan,
)


def get_current_usage(session: Session, user: int | str, now: datetime) -> UsageStatus:
    """The user's usage in the current billing period (the dashboard's bar)."""
    return check_usage(session, user, now)


__all__ = [
    "BillingSubject",
    "EffectivePlan",
    "IdempotencyKeyReused",
    "InvalidUsage",
    "MemberSort",
    "MemberUsageRow",
    "OrgUsageSummary",
    "PeriodUsage",
    "Reason",
    "RecordOutcome",
    "RecordResult",
    "SubjectKind",
    "UnknownUser",
    "UsageHistory",
    "UsageStatus",
    "check_usage",
    "get_current_usage",
    "get_org_usage_summary",
    "get_usage_history",
    "iter_org_member_usage",
    "organization_period",
    "record_usage",
    "resolve_effective_plan",
]
