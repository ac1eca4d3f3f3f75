"""``record_usage``: count one use of the assistant, exactly, under concurrency.

The event row and the running total change with atomic SQL only
(``portal.usage.store``): the total is incremented by the database, never
read, added in Python and written back. On hard-capped plans the cap is part
of that same statement, so concurrent calls cannot take ``used`` past
``included``.

``record_usage`` commits: when it returns, the usage is durable (or, when it
raises, nothing of it was written). A session with no transaction in
progress sends the recording statement alone (``lone_statement``): the
server commits it as it finishes, in one round trip, and releases the
subject's row lock without waiting for the client. That is what lets one
busy subject (a team pool, a hot user) take many calls a second. A capped
plan's recording is a transaction of two statements at most: the cap may
refuse an event the first one wrote, and the second takes it back.
"""

from __future__ import annotations

import enum
import uuid
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal import encoding
from portal.database import lone_statement
from portal.models import UsageEvent, new_event_id
from portal.plans import DEFAULT_EVENT_TYPE, EVENT_TYPES
from portal.usage import store
from portal.usage.requests import UsageRequest, validate_usage_request
from portal.usage.status import UsageStatus, build_status, status_for
from portal.usage.subjects import EffectivePlan, resolve_effective_plan


class IdempotencyKeyReused(ValueError):
    """The idempotency key was used before for a different user, type or quantity."""


class UserDisabled(PermissionError):
    """An operator disabled the user; nothing is recorded for them."""


class RecordResult(enum.StrEnum):
    CREATED = "created"
    DUPLICATE = "duplicate"
    """The idempotency key was seen before: nothing new was counted."""
    LIMIT_REACHED = "limit_reached"
    """A hard cap refused the usage: nothing was recorded."""


@dataclass(frozen=True)
class RecordOutcome:
    result: RecordResult
    event_id: uuid.UUID | None
    """The event counted (for a duplicate, the original one); ``None`` when refused."""
    status: UsageStatus


def record_usage(
    session: Session,
    user: int | str,
    *,
    idempotency_key: object,
    now: datetime,
    event_type: object = DEFAULT_EVENT_TYPE,
    quantity: object = 1,
    occurred_at: object = None,
    metadata: object = None,
) -> RecordOutcome:
    """Record one usage event for a user (id or email) and count it against their quota.

    Commits (see the module's docstring). Raises ``InvalidUsage`` for bad
    input, ``UnknownUser`` for an unknown user, ``UserDisabled`` for a
    disabled one and ``IdempotencyKeyReused`` when the key belongs to a
    different usage; in each case nothing is written. The same key again
    returns the original event with ``DUPLICATE`` and counts nothing. A
    refused usage (``LIMIT_REACHED``) stores nothing, so its key may be used
    again later.
    """
    request = validate_usage_request(
        idempotency_key=idempotency_key,
        now=now,
        event_type=event_type,
        quantity=quantity,
        occurred_at=occurred_at,
        metadata=metadata,
    )
    return record_request(session, user, request, now)


def record_request(
    session: Session, user: int | str, request: UsageRequest, now: datetime
) -> RecordOutcome:
    """``record_usage`` for a request already validated; commits."""
    # Changes the caller left pending belong to the transaction this commits.
    session.flush()
    effective = resolve_effective_plan(session, user, now)
    if effective.disabled:
        raise UserDisabled(f"user {effective.email} is disabled; nothing was recorded")
    outcome = record_for(session, effective, request, now)
    if session.in_transaction():
        session.commit()
    return outcome


def record_for(
    session: Session, effective: EffectivePlan, request: UsageRequest, now: datetime
) -> RecordOutcome:
    """Record under a plan already resolved; the caller commits any transaction it began.

    The demo data records a year of usage this way, in one transaction.
    """
    period = effective.period_at(request.occurred_at)
    counts = EVENT_TYPES[request.event_type]
    capped = counts and effective.plan.is_hard_capped
    event_id = new_event_id()
    statement = store.record_event(effective.subject.kind, effective.plan.is_hard_capped, counts)
    values = {
        "id": event_id,
        "user_id": effective.user_id,
        "organization_id": effective.pool_id,
        "subject_id": effective.subject.id,
        "plan_id": effective.plan.id,
        "event_type": request.event_type,
        "quantity": request.quantity,
        "included": effective.included,
        "idempotency_key": request.idempotency_key,
        "occurred_at": request.occurred_at,
        "recorded_at": now,
        "period_start": period.start,
        "period_end": period.end,
        "metadata": encoding.dumps(request.metadata) if request.metadata else None,
    }
    if capped:
        # Two statements at most, so in a transaction: the session's own.
        connection = session.connection()
        written = connection.execute(statement, values).one()
        if written.event_id is not None and written.used is None:
            # The cap refused it: take back the event just written, so nothing
            # of the refused usage remains.
            connection.execute(store.delete_events, {"event_ids": [event_id]})
            return RecordOutcome(
                RecordResult.LIMIT_REACHED, None, status_for(session, effective, period, now)
            )
    else:
        with lone_statement(session) as connection:
            written = connection.execute(statement, values).one()

    if written.event_id is None:
        return _original_outcome(session, effective, request, now)
    if written.used is None:  # recorded, not counted (a refinement)
        status = status_for(session, effective, period, now)
    else:
        status = build_status(effective, period, written.used, written.member_used, now)
    return RecordOutcome(RecordResult.CREATED, event_id, status)


def _original_outcome(
    session: Session, effective: EffectivePlan, request: UsageRequest, now: datetime
) -> RecordOutcome:
    """The answer to a repeated idempotency key: the original event, if it was the same usage."""
    with lone_statement(session) as connection:
        original = connection.execute(
            select(
                UsageEvent.id,
                UsageEvent.user_id,
                UsageEvent.event_type,
                UsageEvent.quantity,
                UsageEvent.occurred_at,
            ).where(UsageEvent.idempotency_key == request.idempotency_key)
        ).one()
    if (original.user_id, original.event_type, original.quantity) != (
        effective.user_id,
        request.event_type,
        request.quantity,
    ):
        raise IdempotencyKeyReused(
            f"idempotency key {request.idempotency_key!r} was used for a different usage "
            f"(event {original.id})"
        )
    period = effective.period_at(original.occurred_at)
    status = status_for(session, effective, period, now)
    return RecordOutcome(RecordResult.DUPLICATE, original.id, status)
