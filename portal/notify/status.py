"""``notification_status``: where the notifications outbox stands, for ``flask usage-status``."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.models import Notification, User

FAILED_SHOWN = 20


@dataclass(frozen=True)
class FailedNotification:
    id: str
    channel: str
    recipient: str
    attempts: int
    failed_at: datetime | None
    reason: str | None


@dataclass(frozen=True)
class NotificationStatus:
    waiting: int
    """Messages not sent yet: new, leased, or waiting for a retry."""
    retrying: int
    """Of those, messages that failed at least once and wait for another attempt."""
    oldest_waiting_at: datetime | None
    failed_count: int
    failed: tuple[FailedNotification, ...]
    """The most recent permanent failures, at most ``FAILED_SHOWN``."""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def notification_status(session: Session) -> NotificationStatus:
    waiting = session.execute(
        select(
            func.count(),
            func.count().filter(Notification.attempts > 0),
            func.min(Notification.created_at),
        ).where(Notification.status.in_(("pending", "sending", "handed_over")))
    ).one()
    failed_count = session.scalar(select(func.count()).where(Notification.status == "failed"))
    failed = session.execute(
        select(Notification, User.email)
        .join(User, User.id == Notification.recipient_id)
        .where(Notification.status == "failed")
        .order_by(Notification.finished_at.desc())
        .limit(FAILED_SHOWN)
    ).all()
    return NotificationStatus(
        waiting=waiting[0],
        retrying=waiting[1],
        oldest_waiting_at=waiting[2],
        failed_count=failed_count or 0,
        failed=tuple(
            FailedNotification(
                id=str(notification.id),
                channel=notification.channel,
                recipient=email,
                attempts=notification.attempts,
                failed_at=notification.finished_at,
                reason=notification.last_error,
            )
            for notification, email in failed
        ),
    )


def status_lines(status: NotificationStatus) -> list[str]:
    lines = []
    if status.waiting:
        assert status.oldest_waiting_at is not None
        lines.append(
            f"Notifications: {status.waiting} waiting ({status.retrying} after a failed attempt), "
            f"the oldest written {status.oldest_waiting_at:%Y-%m-%d %H:%M} UTC."
        )
    else:
        lines.append("Notifications: none waiting.")
    if status.failed_count:
        lines.append(
            f"Notifications failed: {status.failed_count} (fix the cause; they are not retried)."
        )
        for failed in status.failed:
            failed_at = f"{failed.failed_at:%Y-%m-%d %H:%M}" if failed.failed_at else "?"
            lines.append(
                f"  {failed.channel} to {failed.recipient}, {failed.attempts} attempts, "
                f"failed {failed_at} UTC: {failed.reason}"
            )
    return lines
