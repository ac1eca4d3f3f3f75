"""``preview_report``: what ``flask report-usage`` would send now, without changing anything.

Read-only: no claim, no lock, no write. The backlog is summed per customer
and billing period by the database, so the preview costs one grouped query
whatever the backlog's size. A real run may split a customer's period into
more than one meter event (one per claim it spans); the totals are the same.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Integer, String, bindparam, or_, select, text
from sqlalchemy.orm import Session

from portal.billing.reporter import ReportOptions
from portal.billing.rules import (
    CLAIM_AGE_MARGIN,
    STRIPE_MAX_EVENT_AGE,
    meter_timestamp,
    skip_reason,
)
from portal.models import UsageReportBatch, UTCDateTime


@dataclass(frozen=True)
class PreviewLine:
    """One meter event that would be sent."""

    stripe_customer_id: str
    period_start: datetime
    period_end: datetime
    value: int
    events: int
    timestamp: datetime
    from_outbox: bool
    """Already a batch (left pending by an earlier run), sent again with its identifier."""


@dataclass(frozen=True)
class ReportPreview:
    meter_events: tuple[PreviewLine, ...]
    events_to_send: int
    value_to_send: int
    pending_batches: int
    too_old_events: int
    """Usage that would be marked failed: older than Stripe's window."""
    skipped: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": True,
            "meter_events": [
                {
                    "stripe_customer_id": line.stripe_customer_id,
                    "period_start": line.period_start.isoformat(),
                    "period_end": line.period_end.isoformat(),
                    "value": line.value,
                    "events": line.events,
                    "timestamp": int(line.timestamp.timestamp()),
                    "from_outbox": line.from_outbox,
                }
                for line in self.meter_events
            ],
            "events_to_send": self.events_to_send,
            "value_to_send": self.value_to_send,
            "pending_batches": self.pending_batches,
            "too_old_events": self.too_old_events,
            "skipped": dict(self.skipped),
        }


_PREVIEW_SQL = """
    SELECT
        CASE WHEN c.organization_id IS NULL THEN s.stripe_customer_id
            ELSE o.stripe_customer_id END AS customer,
        c.period_start, c.period_end, c.event_type, c.plan_id,
        CASE WHEN c.occurred_at < :cutoff THEN 1 ELSE 0 END AS too_old,
        SUM(c.quantity) AS value, COUNT(*) AS events, MAX(c.occurred_at) AS latest
    FROM (
        SELECT e.organization_id, e.user_id, e.quantity, e.occurred_at, e.period_start,
            e.period_end, e.event_type, e.plan_id
        FROM (
            SELECT event_id FROM usage_report_backlog
            {limit}
        ) AS q
        JOIN usage_events AS e ON e.id = q.event_id
    ) AS c
    LEFT JOIN user_subscriptions AS s ON c.organization_id IS NULL AND s.user_id = c.user_id
    LEFT JOIN organizations AS o ON o.id = c.organization_id
    GROUP BY 1, 2, 3, 4, 5, 6
"""


def preview_report(session: Session, now: datetime, options: ReportOptions) -> ReportPreview:
    """The meter events a run with ``options`` would send at ``now``, and what it would skip."""
    when = UTCDateTime()
    # The same events, in the same order, as a real run would claim under --limit.
    limit = (
        "ORDER BY organization_id, user_id, period_start LIMIT :limit"
        if options.limit is not None
        else ""
    )
    query = (
        text(_PREVIEW_SQL.format(limit=limit))
        .bindparams(bindparam("cutoff", type_=when))
        .columns(
            customer=String(),
            period_start=when,
            period_end=when,
            event_type=String(),
            plan_id=String(),
            too_old=Integer(),
            value=Integer(),
            events=Integer(),
            latest=when,
        )
    )
    params: dict[str, Any] = {"cutoff": now - STRIPE_MAX_EVENT_AGE + CLAIM_AGE_MARGIN}
    if options.limit is not None:
        params["limit"] = options.limit

    # (customer, start, end) -> [value, events, latest]
    sums: dict[tuple[str, datetime, datetime], list[Any]] = {}
    skipped: Counter[str] = Counter()
    too_old = 0
    for row in session.execute(query, params):
        reason = skip_reason(row.event_type, row.plan_id, row.customer)
        if reason is not None:
            skipped[reason.value] += row.events
            continue
        if row.too_old:
            too_old += row.events
            continue
        entry = sums.setdefault((row.customer, row.period_start, row.period_end), [0, 0, None])
        entry[0] += row.value
        entry[1] += row.events
        entry[2] = row.latest if entry[2] is None else max(entry[2], row.latest)

    lines = [
        PreviewLine(
            customer, start, end, value, events, meter_timestamp(latest, start, end, now), False
        )
        for (customer, start, end), (value, events, latest) in sorted(sums.items())
    ]
    statuses = [UsageReportBatch.status == "pending"]
    if options.retry_failed:
        statuses.append(UsageReportBatch.status == "failed")
    outbox = session.scalars(
        select(UsageReportBatch).where(or_(*statuses)).order_by(UsageReportBatch.id)
    )
    pending_batches = 0
    for batch in outbox:
        pending_batches += 1
        lines.append(
            PreviewLine(
                batch.stripe_customer_id,
                batch.period_start,
                batch.period_end,
                batch.value,
                batch.event_count,
                batch.meter_timestamp,
                True,
            )
        )
    return ReportPreview(
        meter_events=tuple(lines),
        events_to_send=sum(line.events for line in lines),
        value_to_send=sum(line.value for line in lines),
        pending_batches=pending_batches,
        too_old_events=too_old,
        skipped=dict(skipped),
    )
