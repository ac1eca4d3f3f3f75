"""Usage recorded in the old period after Stripe started a new one, moved where Stripe bills it.

An upgrade restarts the period in Stripe at once (``billing_cycle_anchor:
now``); the portal learns of it when the webhook arrives, seconds or, after a
retry, minutes later. Usage recorded in between went into the period the
portal knew, under the old plan, yet its meter event's timestamp (when it
occurred) lies after the new period's start, where Stripe bills it, on the
new price. So when a subscription's current period is applied, the subject's
usage that occurred inside it but was recorded in an earlier period moves into
it, in the same transaction: its events (period and plan), their backlog rows,
the running totals and the members' shares. The pages then count it where
Stripe invoices it, and the reporter sends it inside the new period.

Only usage the reporter has not claimed moves: a claimed event's meter event
is written, with its period and timestamp, and may be at Stripe already
(docs/architecture.md, "Plan changes mid-period", says what that leaves).
Backlog rows are locked (``FOR UPDATE``), so a concurrent claim, which skips
locked rows, takes them only once they have moved; one that claimed first
keeps them. Free-plan usage is never moved: Stripe bills none of it.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import text
from sqlalchemy.orm import Session

from portal.plans import FREE, QUOTA_EVENT_TYPES, Plan
from portal.usage.subjects import SubjectKind

_SUBJECT = {
    SubjectKind.USER: "b.organization_id IS NULL AND b.user_id = :subject_id",
    SubjectKind.ORGANIZATION: "b.organization_id = :subject_id",
}
_COLUMN = {SubjectKind.USER: "user_id", SubjectKind.ORGANIZATION: "organization_id"}


def _move_events(kind: SubjectKind) -> str:
    """Move the events and their backlog rows; per member and old period, what counted."""
    return f"""
    WITH moved AS (
        SELECT b.ctid AS position, e.id, e.user_id, e.event_type, e.quantity, e.occurred_at,
            e.period_start AS old_start
        FROM usage_report_backlog AS b
        JOIN usage_events AS e ON e.id = b.event_id
        WHERE {_SUBJECT[kind]}
            AND b.period_start < :start
            AND e.occurred_at >= :start AND e.occurred_at < :end
            AND e.plan_id <> :free
        FOR UPDATE OF b
    ),
    queued AS (
        UPDATE usage_report_backlog SET period_start = :start
        WHERE ctid = ANY(ARRAY(SELECT position FROM moved))
    ),
    events AS (
        UPDATE usage_events SET period_start = :start, period_end = :end, plan_id = :plan_id
        WHERE id IN (SELECT id FROM moved)
    )
    SELECT user_id, old_start, SUM(quantity) AS used, MAX(occurred_at) AS last_used_at
    FROM moved
    WHERE event_type = ANY(CAST(:counted AS text[]))
    GROUP BY user_id, old_start
    ORDER BY old_start, user_id"""


def _take_from_total(kind: SubjectKind) -> str:
    column = _COLUMN[kind]
    return f"""
    UPDATE usage_records SET used = used - :used, updated_at = :now
    WHERE {column} = :subject_id AND period_start = :old_start"""


def _add_to_total(kind: SubjectKind) -> str:
    column = _COLUMN[kind]
    return f"""
    INSERT INTO usage_records ({column}, period_start, period_end, used, included, plan_id,
        updated_at)
    VALUES (:subject_id, :start, :end, :used, :included, :plan_id, :now)
    ON CONFLICT ({column}, period_start) WHERE {column} IS NOT NULL DO UPDATE SET
        used = usage_records.used + excluded.used,
        included = excluded.included,
        plan_id = excluded.plan_id,
        updated_at = excluded.updated_at"""


_TAKE_FROM_SHARE = """
    UPDATE member_usage SET used = used - :used
    WHERE organization_id = :subject_id AND period_start = :old_start AND user_id = :user_id"""
_ADD_TO_SHARE = """
    INSERT INTO member_usage (organization_id, period_start, user_id, used, last_used_at)
    VALUES (:subject_id, :start, :user_id, :used, :last_used_at)
    ON CONFLICT (organization_id, period_start, user_id) DO UPDATE SET
        used = member_usage.used + excluded.used,
        last_used_at = GREATEST(member_usage.last_used_at, excluded.last_used_at)"""


def refile_usage(
    session: Session,
    kind: SubjectKind,
    subject_id: int,
    period: tuple[datetime, datetime],
    plan: Plan,
    included: int,
    now: datetime,
) -> int:
    """Move the subject's unclaimed usage that occurred in Stripe's current ``period`` but
    was recorded in an earlier one into ``period``, under ``plan``; the caller commits.

    Returns the counted quantity moved (0 almost always). Locks, in the order
    recording takes them: backlog rows, then the old total and the new one,
    then members' shares.
    """
    start, end = period
    rows = session.execute(
        text(_move_events(kind)),
        {
            "subject_id": subject_id,
            "start": start,
            "end": end,
            "free": FREE.id,
            "plan_id": plan.id,
            "counted": list(QUOTA_EVENT_TYPES),
        },
    ).all()
    moved: dict[datetime, int] = {}
    for row in rows:
        moved[row.old_start] = moved.get(row.old_start, 0) + int(row.used)
    for old_start, used in moved.items():
        session.execute(
            text(_take_from_total(kind)),
            {"subject_id": subject_id, "old_start": old_start, "used": used, "now": now},
        )
    total = sum(moved.values())
    if total:
        session.execute(
            text(_add_to_total(kind)),
            {
                "subject_id": subject_id,
                "start": start,
                "end": end,
                "used": total,
                "included": included,
                "plan_id": plan.id,
                "now": now,
            },
        )
    if kind is SubjectKind.ORGANIZATION:
        for row in rows:
            shares = {"subject_id": subject_id, "user_id": row.user_id, "used": int(row.used)}
            session.execute(text(_TAKE_FROM_SHARE), {**shares, "old_start": row.old_start})
            session.execute(
                text(_ADD_TO_SHARE), {**shares, "start": start, "last_used_at": row.last_used_at}
            )
    return total
