"""Recovery: failed batches sent again or settled by hand, unbilled usage put back in the backlog.

``flask report-usage --retry-failed``, ``--mark-sent`` and ``--requeue-unbilled``,
for a person who checked Stripe or set a missing Stripe customer (docs/operations.md,
"Recovering failed batches").
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import bindparam, text, update
from sqlalchemy.orm import Session

from portal.billing.rules import STRIPE_MAX_EVENT_AGE, SkipReason, listed_event_ids
from portal.models import UsageReportBatch, UsageReportSkip, UTCDateTime
from portal.usage.store import ENQUEUE


def requeue_failed_batches(session: Session, now: datetime) -> int:
    """Put every failed batch back in the queue, to be sent with its own identifier again."""
    result = session.execute(
        update(UsageReportBatch)
        .where(UsageReportBatch.status == "failed")
        .values(status="pending", queued_at=now, failed_at=None)
        .execution_options(synchronize_session=False)
    )
    return int(result.rowcount)  # type: ignore[attr-defined]


class BatchNotFailed(LookupError):
    """Only a failed batch may be marked sent by hand; the message says what it is instead."""


def mark_batch_sent(session: Session, batch_id: int, now: datetime) -> UsageReportBatch:
    """Settle a failed batch whose usage reached Stripe another way, without calling Stripe.

    For a person who checked Stripe: the meter already holds the event (a
    delivery that was unconfirmed for too long), or the usage was billed by
    hand (too old for the meter). The batch becomes sent and its events
    reported, so nothing sends them again. The caller commits.
    """
    batch = session.get(UsageReportBatch, batch_id, with_for_update=True)
    if batch is None:
        raise BatchNotFailed(f"no report batch #{batch_id}")
    if batch.status != "failed":
        raise BatchNotFailed(
            f"report batch #{batch_id} is {batch.status}; only a failed batch can be marked sent"
        )
    batch.status = "sent"
    batch.sent_at = now
    batch.last_error = f"marked sent by hand at {now:%Y-%m-%d %H:%M} UTC; was: {batch.last_error}"
    session.flush()
    return batch


REQUEUE_WINDOW = STRIPE_MAX_EVENT_AGE - timedelta(days=1)
"""Skipped usage this recent may still reach the meter when put back in the backlog."""


def requeue_unbilled(session: Session, now: datetime) -> int:
    """Put paid usage skipped for lack of a Stripe customer back in the backlog.

    For after the customer was set on the subscription or organization: the
    next claims send what is still inside Stripe's window (the last
    ``REQUEUE_WINDOW``), or skip it again if there is still no customer.
    Returns the number of usage events put back. A skip's events older than
    the window stay with it, unbilled: Stripe would refuse them (bill them
    by hand). The caller commits.
    """
    # Take the skips first, in one statement that only takes those not yet
    # taken: of two runs at once, each skip goes back with one only, or its
    # events would wait twice in the backlog and be billed twice.
    skips = (
        session.execute(
            update(UsageReportSkip)
            .where(
                UsageReportSkip.reason == SkipReason.NO_CUSTOMER.value,
                UsageReportSkip.requeued_at.is_(None),
                UsageReportSkip.latest_occurred_at >= now - REQUEUE_WINDOW,
            )
            .values(requeued_at=now)
            .returning(UsageReportSkip.id)
            .execution_options(synchronize_session=False)
        )
        .scalars()
        .all()
    )
    if not skips:
        return 0
    listed = text(
        f"{ENQUEUE} SELECT e.id, e.organization_id, e.user_id, e.period_start "
        f"FROM ({listed_event_ids('usage_report_skips')}) AS listed "
        "JOIN usage_events AS e ON e.id = listed.event_id "
        "WHERE listed.owner IN :skip_ids AND e.occurred_at >= :since"
    ).bindparams(bindparam("skip_ids", expanding=True), bindparam("since", type_=UTCDateTime()))
    requeued = session.execute(
        listed,
        {"skip_ids": list(skips), "since": now - REQUEUE_WINDOW},
    ).rowcount  # type: ignore[attr-defined]
    return int(requeued)
