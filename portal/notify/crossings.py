"""Find the thresholds that running totals crossed, and write the messages to send about them.

Read from ``usage_records``, the running totals recording already keeps, by
``flask send-notifications``: recording itself does no more work than before.

Exactly once: ``usage_alerts`` holds at most one row per running total,
allowance and threshold (its unique key), and ``notifications`` at most one per alert,
recipient and channel. A run takes a transaction-level advisory lock before
it looks, so two runs never judge the same totals at once; the keys hold
even so. Only a threshold higher than every one already announced for the
total is written, and only the highest one reached: usage that jumps from
70 % to 97 % (a batch, or usage recorded while no run went) gives one alert,
at 95 %, and never a late one at 80 %. A new period is a new running total,
so it starts with nothing announced; so is a new allowance within a period (an
upgrade, seats bought): its thresholds are announced anew.

Who hears: an individual plan's user; for an organization's pool, its admins
and the members who asked to, unless its admins silenced the pool. Disabled
users hear nothing. Each person gets a message on each channel that is set
up and that they have not turned off.

Totals of periods that have ended are not looked at: "80 % used" about a
period already over would only confuse.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import (
    CompoundSelect,
    case,
    false,
    func,
    literal,
    or_,
    select,
    text,
    true,
    union_all,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from portal.models import (
    ALERTABLE,
    Membership,
    Notification,
    NotificationPreference,
    Organization,
    UsageAlert,
    UsageRecord,
    User,
    UTCDateTime,
)
from portal.plans import LEVEL_FLOORS, WarningLevel

THRESHOLDS: dict[WarningLevel, int] = {
    level: floor for level, floor in LEVEL_FLOORS if level is not WarningLevel.OK
}
"""The percent each level starts at: the thresholds announced (80, 95, 100)."""

_DETECTION_LOCK = 0x4E4F_5449  # "NOTI": one run looks at the totals at a time


@dataclass(frozen=True)
class Detected:
    alerts: int
    """Thresholds newly crossed."""
    notifications: int
    """Messages written about them, over every recipient and channel."""


# The plans' rule (``plans.warning_level``) in SQL, built from the same table of floors:
# the highest threshold a total reached.
_CROSSED = case(
    *(
        (UsageRecord.used * 100 >= UsageRecord.included * floor, floor)
        for floor in sorted(THRESHOLDS.values(), reverse=True)
    ),
    else_=None,
)
_ALERT_COLUMNS = [
    "usage_record_id",
    "threshold",
    "plan_id",
    "used",
    "included",
    "period_start",
    "period_end",
    "detected_at",
]


def detect_crossings(session: Session, now: datetime, channels: tuple[str, ...]) -> Detected:
    """Write an alert for each threshold newly crossed and its messages on ``channels``; commits.

    One statement finds and writes the alerts: the totals of running periods
    at or past the lowest threshold (``ix_usage_records_alertable``) whose
    highest threshold reached is above every one announced for the same plan
    and allowance.
    """
    session.execute(select(func.pg_advisory_xact_lock(_DETECTION_LOCK)))
    announced = (
        select(UsageAlert.id)
        .where(
            UsageAlert.usage_record_id == UsageRecord.id,
            UsageAlert.plan_id == UsageRecord.plan_id,
            UsageAlert.included == UsageRecord.included,
            UsageAlert.threshold >= _CROSSED,
        )
        .exists()
    )
    newly_crossed = select(
        UsageRecord.id,
        _CROSSED,
        UsageRecord.plan_id,
        UsageRecord.used,
        UsageRecord.included,
        UsageRecord.period_start,
        UsageRecord.period_end,
        literal(now, UTCDateTime()),
    ).where(
        UsageRecord.period_end > now,
        UsageRecord.period_start <= now,
        text(ALERTABLE),  # the index's own condition, word for word, so the planner uses it
        ~announced,
    )
    alert_ids = list(
        session.scalars(
            insert(UsageAlert)
            .from_select(_ALERT_COLUMNS, newly_crossed)
            .on_conflict_do_nothing(
                index_elements=["usage_record_id", "plan_id", "included", "threshold"]
            )
            .returning(UsageAlert.id)
        )
    )
    written = _write_notifications(session, alert_ids, channels, now) if alert_ids else 0
    session.commit()
    return Detected(len(alert_ids), written)


def _write_notifications(
    session: Session, alert_ids: list[int], channels: tuple[str, ...], now: datetime
) -> int:
    """One outbox row per alert, recipient and wanted channel: a statement per channel."""
    wanted = recipients(alert_ids).subquery()
    written = 0
    for channel in channels:
        rows = select(
            func.gen_random_uuid(),
            wanted.c.alert_id,
            wanted.c.user_id,
            literal(channel),
            literal(now, UTCDateTime()),
            literal(now, UTCDateTime()),
        ).where(wanted.c[channel])
        inserted = session.execute(
            insert(Notification)
            .from_select(
                ["id", "alert_id", "recipient_id", "channel", "created_at", "next_attempt_at"],
                rows,
            )
            .on_conflict_do_nothing(index_elements=["alert_id", "recipient_id", "channel"])
            .returning(Notification.id)
        )
        written += len(inserted.all())
    return written


def recipients(alert_ids: list[int]) -> CompoundSelect[tuple[int, int, bool, bool]]:
    """(alert, user, wants email, wants webhook) for everyone who should hear of each alert.

    Also what a delivery checks again before it goes out, so that a channel
    turned off, a pool silenced or a user disabled meanwhile stops it.
    """
    email = func.coalesce(NotificationPreference.email, true()).label("email")
    webhook = func.coalesce(NotificationPreference.webhook, true()).label("webhook")
    own = (
        select(UsageAlert.id.label("alert_id"), User.id.label("user_id"), email, webhook)
        .join(UsageRecord, UsageRecord.id == UsageAlert.usage_record_id)
        .join(User, User.id == UsageRecord.user_id)
        .outerjoin(NotificationPreference, NotificationPreference.user_id == User.id)
        .where(UsageAlert.id.in_(alert_ids), User.disabled_at.is_(None))
    )
    pool = (
        select(UsageAlert.id.label("alert_id"), User.id.label("user_id"), email, webhook)
        .join(UsageRecord, UsageRecord.id == UsageAlert.usage_record_id)
        .join(Organization, Organization.id == UsageRecord.organization_id)
        .join(Membership, Membership.organization_id == Organization.id)
        .join(User, User.id == Membership.user_id)
        .outerjoin(NotificationPreference, NotificationPreference.user_id == User.id)
        .where(
            UsageAlert.id.in_(alert_ids),
            User.disabled_at.is_(None),
            Organization.pool_alerts,
            or_(
                Membership.role == "admin",
                func.coalesce(NotificationPreference.pool_alerts, false()),
            ),
        )
    )
    return union_all(own, pool)
