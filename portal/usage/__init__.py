"""The usage domain: plans in force, recording, and the queries behind every page.

Nothing here knows about Flask requests: functions take a SQLAlchemy session
and explicit values (``now``, periods, ids) and return frozen dataclasses.
"""

from __future__ import annotations

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
    RecordOutcome,
    RecordResult,
    UserDisabled,
    record_usage,
)
from portal.usage.requests import InvalidUsage, UsageRequest
from portal.usage.status import Reason, UsageStatus, check_usage
from portal.usage.subjects import (
    BillingSubject,
    EffectivePlan,
    SubjectKind,
    UnknownUser,
    resolve_effective_plan,
)

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
    "UsageRequest",
    "UsageStatus",
    "UserDisabled",
    "check_usage",
    "get_org_usage_summary",
    "get_usage_history",
    "iter_org_member_usage",
    "organization_period",
    "record_usage",
    "resolve_effective_plan",
]
