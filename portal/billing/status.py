"""``reporting_status``: where reporting to Stripe stands, for ``flask usage-status``."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, func, select, text
from sqlalchemy.orm import Session

from portal.billing.rules import STRIPE_MAX_EVENT_AGE, SkipReason, listed_event_ids
from portal.models import (
    UsageEvent,
    UsageReportBatch,
    UsageReportRun,
    UTCDateTime,
    usage_report_backlog,
)

DEFAULT_FAILED_SHOWN = 50


@dataclass(frozen=True)
class FailedBatch:
    id: int
    identifier: str
    stripe_customer_id: str
    period_start: datetime
    period_end: datetime
    value: int
    event_count: int
    attempts: int
    failed_at: datetime | None
    reason: str | None
    http_status: int | None
    stripe_request_id: str | None


@dataclass(frozen=True)
class RunInfo:
    id: int
    started_at: datetime
    finished_at: datetime | None
    worker: str
    outcome: str
    claimed: int
    batches_sent: int
    events_reported: int
    skipped: int
    failed: int
    retried: int
    pending: int
    message: str | None


@dataclass(frozen=True)
class ReportingStatus:
    now: datetime
    pending_events: int
    """Usage events not yet claimed by a run."""
    oldest_pending_at: datetime | None
    """When the oldest of them was recorded."""
    pending_batches: int
    """Meter events in the outbox, waiting to be sent (again)."""
    pending_batch_events: int
    oldest_pending_batch_at: datetime | None
    failed_batch_count: int
    failed_batches: tuple[FailedBatch, ...]
    """The most recent failed batches, at most ``DEFAULT_FAILED_SHOWN``."""
    unbilled_no_customer: int
    """Paid usage of the last 35 days skipped because its subject has no Stripe customer."""
    last_successful_run: RunInfo | None
    last_run: RunInfo | None

    @property
    def oldest_pending_age_s(self) -> float | None:
        if self.oldest_pending_at is None:
            return None
        return max(0.0, (self.now - self.oldest_pending_at).total_seconds())

    def as_dict(self) -> dict[str, Any]:
        def when(moment: datetime | None) -> str | None:
            return moment.isoformat() if moment else None

        def run(info: RunInfo | None) -> dict[str, Any] | None:
            if info is None:
                return None
            return {
                **{name: getattr(info, name) for name in RunInfo.__dataclass_fields__},
                "started_at": when(info.started_at),
                "finished_at": when(info.finished_at),
            }

        return {
            "backlog": {
                "pending_events": self.pending_events,
                "oldest_pending_at": when(self.oldest_pending_at),
                "oldest_pending_age_s": self.oldest_pending_age_s,
            },
            "outbox": {
                "pending_batches": self.pending_batches,
                "pending_batch_events": self.pending_batch_events,
                "oldest_pending_batch_at": when(self.oldest_pending_batch_at),
            },
            "failed_batch_count": self.failed_batch_count,
            "failed_batches": [
                {
                    **{name: getattr(b, name) for name in FailedBatch.__dataclass_fields__},
                    "period_start": when(b.period_start),
                    "period_end": when(b.period_end),
                    "failed_at": when(b.failed_at),
                }
                for b in self.failed_batches
            ],
            "unbilled_no_customer": self.unbilled_no_customer,
            "last_successful_run": run(self.last_successful_run),
            "last_run": run(self.last_run),
        }


def reporting_status(
    session: Session, now: datetime, *, failed_shown: int = DEFAULT_FAILED_SHOWN
) -> ReportingStatus:
    """Backlog, outbox, failed batches and the last runs, in a handful of small queries."""
    pending_events, oldest_pending_at = session.execute(
        select(func.count(), func.min(UsageEvent.recorded_at)).join_from(
            usage_report_backlog, UsageEvent, UsageEvent.id == usage_report_backlog.c.event_id
        )
    ).one()
    pending_batches, pending_batch_events, oldest_batch = session.execute(
        select(
            func.count(),
            func.coalesce(func.sum(UsageReportBatch.event_count), 0),
            func.min(UsageReportBatch.queued_at),
        ).where(UsageReportBatch.status == "pending")
    ).one()
    failed_count = session.scalar(
        select(func.count())
        .select_from(UsageReportBatch)
        .where(UsageReportBatch.status == "failed")
    )
    failed = session.scalars(
        select(UsageReportBatch)
        .where(UsageReportBatch.status == "failed")
        .order_by(UsageReportBatch.id.desc())
        .limit(failed_shown)
    ).all()
    # A skip is written after its events occurred: only recent skips can hold recent usage.
    listed = listed_event_ids("usage_report_skips")
    unbilled = session.scalar(
        text(
            f"SELECT COUNT(*) FROM ({listed}) AS listed "
            "JOIN usage_events AS e ON e.id = listed.event_id "
            "WHERE listed.owner IN (SELECT id FROM usage_report_skips "
            # Spelled as in the partial index's predicate, so the index serves it.
            f"WHERE reason = '{SkipReason.NO_CUSTOMER.value}' AND requeued_at IS NULL "
            "AND created_at >= :since) AND e.occurred_at >= :since"
        ).bindparams(bindparam("since", type_=UTCDateTime())),
        {"since": now - STRIPE_MAX_EVENT_AGE},
    )
    last_ok = session.scalars(
        select(UsageReportRun)
        .where(UsageReportRun.outcome == "ok")
        .order_by(UsageReportRun.started_at.desc(), UsageReportRun.id.desc())
        .limit(1)
    ).first()
    last = session.scalars(
        select(UsageReportRun).order_by(UsageReportRun.id.desc()).limit(1)
    ).first()
    return ReportingStatus(
        now=now,
        pending_events=pending_events,
        oldest_pending_at=oldest_pending_at,
        pending_batches=pending_batches,
        pending_batch_events=int(pending_batch_events),
        oldest_pending_batch_at=oldest_batch,
        failed_batch_count=failed_count or 0,
        failed_batches=tuple(
            FailedBatch(
                id=b.id,
                identifier=b.identifier,
                stripe_customer_id=b.stripe_customer_id,
                period_start=b.period_start,
                period_end=b.period_end,
                value=b.value,
                event_count=b.event_count,
                attempts=b.attempts,
                failed_at=b.failed_at,
                reason=b.last_error,
                http_status=b.last_http_status,
                stripe_request_id=b.stripe_request_id,
            )
            for b in failed
        ),
        unbilled_no_customer=unbilled or 0,
        last_successful_run=_run_info(last_ok),
        last_run=_run_info(last),
    )


def _run_info(run: UsageReportRun | None) -> RunInfo | None:
    if run is None:
        return None
    return RunInfo(
        id=run.id,
        started_at=run.started_at,
        finished_at=run.finished_at,
        worker=run.worker,
        outcome=run.outcome,
        claimed=run.claimed,
        batches_sent=run.batches_sent,
        events_reported=run.events_reported,
        skipped=run.skipped,
        failed=run.failed,
        retried=run.retried,
        pending=run.pending,
        message=run.message,
    )
