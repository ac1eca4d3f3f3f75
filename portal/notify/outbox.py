"""The notifications outbox: lease due messages to one run, then settle each.

A run leases a message (``sending``, with ``next_attempt_at`` as the lease's
end) in a committed statement before it delivers it, skipping rows another
run holds, so two runs never send the same message. A run that dies leaves
its lease to run out; the message is then due again, with the same event id.
Each lease is known by the message and its attempt number (``Held``): a run
whose lease ran out while it was still delivering (a slow server) finds its
lease taken when it renews it or records the hand-over, and stops there.
An email whose SMTP transaction got as far as the final dot is
``handed_over`` first: if the run dies then, the message is counted as sent
and never sent again (see ``mail`` and docs/architecture.md).

Failures that may pass (a timeout, SMTP 4xx, HTTP 5xx or 429) are retried
after a back-off (``RETRY_AFTER``); the rest (SMTP 5xx, HTTP 4xx) fail at
once, for ``flask usage-status`` to show.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, Interval, and_, func, literal, select, tuple_, update
from sqlalchemy.orm import Session

from portal.models import Membership, Notification, Organization, UsageAlert, UsageRecord, User
from portal.notify.crossings import recipients
from portal.notify.messages import AlertMessage
from portal.plans import UsageFigures, get_plan, warning_level
from portal.usage.subjects import SubjectKind

LEASE = timedelta(minutes=2)
"""How long a run holds a message it took: longer than any one delivery may take."""
RETRY_AFTER = (
    timedelta(minutes=1),
    timedelta(minutes=5),
    timedelta(minutes=15),
    timedelta(hours=1),
    timedelta(hours=3),
    timedelta(hours=6),
)
"""The wait before each retry; after the last, the message fails."""
MAX_ATTEMPTS = len(RETRY_AFTER) + 1


def settle_handed_over(session: Session, now: datetime) -> int:
    """Count as sent the emails a run handed over and then did not live to confirm; commits."""
    result = session.execute(
        update(Notification)
        .where(Notification.status == "handed_over", Notification.next_attempt_at <= now)
        .values(
            status="sent",
            finished_at=now,
            last_error="the run ended before the SMTP server's answer was recorded; "
            "the server had the whole message, so it is counted as sent",
        )
    )
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]


Held = tuple[uuid.UUID, int]
"""A lease: the message's id and the attempt this run made it."""


def _due(now: datetime) -> ColumnElement[bool]:
    """Waiting to go, or leased by a run whose lease ran out."""
    waiting = Notification.status.in_(("pending", "sending"))
    return and_(waiting, Notification.next_attempt_at <= now)


def count_due(session: Session, now: datetime) -> int:
    return session.scalar(select(func.count()).where(_due(now))) or 0


def lease_due(session: Session, now: datetime, limit: int) -> list[Held]:
    """Take up to ``limit`` due messages for this run; commits, so the lease holds."""
    due = (
        select(Notification.id)
        .where(_due(now))
        .order_by(Notification.next_attempt_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    leased = session.execute(
        update(Notification)
        .where(Notification.id.in_(due.scalar_subquery()))
        .values(
            status="sending",
            attempts=Notification.attempts + 1,
            next_attempt_at=now + LEASE,
        )
        .returning(Notification.id, Notification.attempts)
    ).all()
    session.commit()
    return [(notification_id, attempt) for notification_id, attempt in leased]


def leased_messages(
    session: Session, held: list[Held], now: datetime
) -> tuple[list[AlertMessage], dict[Held, str]]:
    """The messages to deliver, and why each of the others is no longer wanted.

    A message is no longer wanted when its recipient turned the channel off,
    the pool was silenced, the recipient left or was disabled since it was
    written (the question ``crossings`` asked when it wrote it), or when its
    period is over: "80 % used" about a period that has ended would mislead.
    """
    if not held:
        return [], {}
    ids = [notification_id for notification_id, _ in held]
    rows = session.execute(
        select(Notification, UsageAlert, User, Organization, Membership.role)
        .join(UsageAlert, UsageAlert.id == Notification.alert_id)
        .join(UsageRecord, UsageRecord.id == UsageAlert.usage_record_id)
        .join(User, User.id == Notification.recipient_id)
        .outerjoin(Organization, Organization.id == UsageRecord.organization_id)
        .outerjoin(
            Membership,
            (Membership.organization_id == Organization.id) & (Membership.user_id == User.id),
        )
        .where(Notification.id.in_(ids))
    ).all()
    alert_ids = list({row.UsageAlert.id for row in rows})
    wanted_now = recipients(alert_ids).subquery()
    wanted = {
        (row.alert_id, row.user_id, channel)
        for row in session.execute(select(wanted_now))
        for channel in ("email", "webhook")
        if getattr(row, channel)
    }
    messages: list[AlertMessage] = []
    unwanted: dict[Held, str] = {}
    for notification, alert, user, organization, role in rows:
        lease = (notification.id, notification.attempts)
        if (alert.id, user.id, notification.channel) not in wanted:
            unwanted[lease] = "no longer wanted: turned off, or the recipient left"
            continue
        if alert.period_end <= now:
            unwanted[lease] = "the billing period ended before it could be sent"
            continue
        figures = UsageFigures(get_plan(alert.plan_id), alert.used, alert.included)
        messages.append(
            AlertMessage(
                event_id=notification.id,
                channel=notification.channel,
                attempt=notification.attempts,
                threshold=alert.threshold,
                level=warning_level(alert.used, alert.included),
                figures=figures,
                period_start=alert.period_start,
                period_end=alert.period_end,
                detected_at=alert.detected_at,
                subject_kind=SubjectKind.ORGANIZATION if organization else SubjectKind.USER,
                subject_id=organization.id if organization else user.id,
                organization_name=organization.name if organization else None,
                organization_slug=organization.slug if organization else None,
                recipient_id=user.id,
                recipient_email=user.email,
                recipient_name=user.display_name,
                recipient_manages_billing=organization is None or role == "admin",
            )
        )
    session.rollback()
    return messages, unwanted


def _settle(session: Session, held: list[Held], **values: object) -> bool:
    """Move on messages whose lease this run still holds; commits. Whether any moved."""
    if not held:
        return False
    result = session.execute(
        update(Notification)
        .where(
            tuple_(Notification.id, Notification.attempts).in_(held),
            Notification.status.in_(("sending", "handed_over")),
        )
        .values(**values)
    )
    session.commit()
    return bool(result.rowcount)  # type: ignore[attr-defined]


def renew_lease(session: Session, lease: Held, now: datetime) -> bool:
    """Hold the message for another ``LEASE`` before delivering it; ``False`` once another run
    took it (this run's lease ran out)."""
    return _settle(session, [lease], next_attempt_at=now + LEASE)


def mark_handed_over(session: Session, lease: Held) -> bool:
    """Record an email as handed over, if this run still holds it (else: do not finish it)."""
    return _settle(session, [lease], status="handed_over")


def mark_sent(session: Session, lease: Held, now: datetime, note: str | None = None) -> None:
    _settle(session, [lease], status="sent", finished_at=now, last_error=note)


def release(session: Session, held: list[Held]) -> None:
    """Give back messages this run leased and did not get to: due again at once, uncounted."""
    _settle(
        session,
        held,
        status="pending",
        attempts=Notification.attempts - 1,
        # An interval, typed as one: left untyped it would be sent as a timestamp.
        next_attempt_at=Notification.next_attempt_at - literal(LEASE, Interval()),
    )


def mark_failed(session: Session, lease: Held, now: datetime, error: str) -> None:
    _settle(session, [lease], status="failed", finished_at=now, last_error=error)


def mark_cancelled(session: Session, reasons: dict[Held, str], now: datetime) -> None:
    for reason in set(reasons.values()):
        held = [lease for lease, why in reasons.items() if why == reason]
        _settle(session, held, status="cancelled", finished_at=now, last_error=reason)


def retry_later(session: Session, lease: Held, now: datetime, error: str) -> bool:
    """Put a message back for a later attempt, or fail it after the last; whether it will retry."""
    attempt = lease[1]
    if attempt >= MAX_ATTEMPTS:
        mark_failed(session, lease, now, f"gave up after {attempt} attempts: {error}")
        return False
    _settle(
        session,
        [lease],
        status="pending",
        next_attempt_at=now + RETRY_AFTER[attempt - 1],
        last_error=error,
    )
    return True


def requeue_failed(session: Session, now: datetime) -> int:
    """Put failed messages of periods not over yet back in the outbox, attempts anew; commits."""
    running = select(UsageAlert.id).where(UsageAlert.period_end > now)
    result = session.execute(
        update(Notification)
        .where(Notification.status == "failed", Notification.alert_id.in_(running))
        .values(status="pending", attempts=0, next_attempt_at=now, finished_at=None)
    )
    session.commit()
    return int(result.rowcount)  # type: ignore[attr-defined]
