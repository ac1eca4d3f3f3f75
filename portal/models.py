"""Database tables, as typed SQLAlchemy 2 models.

Table and column names are read by other tools and reports; change them only
with a migration and a note in docs/architecture.md.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    Uuid,
    false,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import Mapped, mapped_column, relationship

from portal import clock
from portal.extensions import db
from portal.plans import INDIVIDUAL_PLAN_IDS, ORGANIZATION_PLAN_IDS, WARNING_PERCENT


class UTCDateTime(TypeDecorator[datetime]):
    """An aware datetime in UTC, stored as ``timestamptz``.

    A naive datetime is refused rather than guessed, and values come back in
    UTC whatever the connection's time zone.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"refusing to store naive datetime {value.isoformat()}")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.astimezone(UTC)


def _now() -> datetime:
    # Looked up at each insert, so a test that sets the clock moves these too.
    return clock.now()


# Subscription states in which the customer keeps the plan's allowance: a
# trial is a real subscription (the original gave trials the free limit) and
# a past-due one keeps working while Stripe retries the payment.
LIVE_SUBSCRIPTION_STATUSES = ("active", "trialing", "past_due")
SUBSCRIPTION_STATUSES = (
    *LIVE_SUBSCRIPTION_STATUSES,
    "canceled",
    "paused",
    "unpaid",
    "incomplete",
    "incomplete_expired",
)
"""Stripe's subscription statuses. Only the live ones grant a plan: ``incomplete`` is not paid
yet, and ``unpaid`` and ``incomplete_expired`` end the subscription as ``canceled`` does."""
STRIPE_EVENT_OUTCOMES = ("pending", "applied", "ignored", "unmatched", "failed")
ROLES = ("admin", "member")
REPORT_SKIP_REASONS = ("not_billable", "free_plan", "no_customer", "already_reported")
REPORT_BATCH_STATUSES = ("pending", "sent", "failed")
REPORT_RUN_OUTCOMES = ("running", "ok", "incomplete", "failed", "error")
NOTIFICATION_CHANNELS = ("email", "webhook")
ALERTABLE = f"included > 0 AND used * 100 >= included * {WARNING_PERCENT}"
"""Running totals at or past the lowest notification threshold (the plans' warning level)."""
NOTIFICATION_STATUSES = ("pending", "sending", "handed_over", "sent", "failed", "cancelled")


def _one_of(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


class StripeBillingPeriod:
    """What Stripe says of a subscription's current period (a mixin of both subjects).

    All null for subscriptions made by hand (``flask create-user``, ``create-org``):
    their periods follow the billing anchor month by month.
    """

    current_period_start: Mapped[datetime | None] = mapped_column(UTCDateTime())
    current_period_end: Mapped[datetime | None] = mapped_column(UTCDateTime())
    cancel_at_period_end: Mapped[bool] = mapped_column(default=False, server_default=false())
    """Canceled in Stripe, but live until ``current_period_end``."""
    trial_end: Mapped[datetime | None] = mapped_column(UTCDateTime())


class Organization(StripeBillingPeriod, db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "organizations"
    __table_args__ = (
        CheckConstraint(_one_of("plan_id", ORGANIZATION_PLAN_IDS), name="plan_id"),
        CheckConstraint(_one_of("subscription_status", SUBSCRIPTION_STATUSES), name="status"),
        CheckConstraint("seats >= 1", name="seats_positive"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    slug: Mapped[str] = mapped_column(String(64), unique=True)
    plan_id: Mapped[str] = mapped_column(String(32))
    seats: Mapped[int] = mapped_column(Integer)
    subscription_status: Mapped[str] = mapped_column(String(32))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255))
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(255))
    billing_anchor: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    pool_alerts: Mapped[bool] = mapped_column(default=True, server_default=text("true"))
    """Whether the pool's thresholds are announced (to its admins, and members who ask)."""

    memberships: Mapped[list[Membership]] = relationship(back_populates="organization")

    def __repr__(self) -> str:
        return f"<Organization {self.slug} {self.plan_id}x{self.seats}>"


class User(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "users"
    __table_args__ = (
        # Emails are stored lower-cased, which makes the unique index
        # case-insensitive on every engine.
        CheckConstraint("email = lower(email)", name="email_lowercase"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(254), unique=True)
    display_name: Mapped[str] = mapped_column(String(200))
    password_hash: Mapped[str | None] = mapped_column(String(255))
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """Set by ``flask disable-user``: signed out everywhere, and nothing more is recorded."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)

    memberships: Mapped[list[Membership]] = relationship(back_populates="user")
    subscription: Mapped[UserSubscription | None] = relationship(back_populates="user")

    def __repr__(self) -> str:
        return f"<User {self.email}>"


class Membership(db.Model):  # type: ignore[name-defined,misc]
    __tablename__ = "memberships"
    __table_args__ = (
        UniqueConstraint("organization_id", "user_id"),
        CheckConstraint(_one_of("role", ROLES), name="role"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    organization_id: Mapped[int] = mapped_column(ForeignKey("organizations.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(16))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)

    user: Mapped[User] = relationship(back_populates="memberships")
    organization: Mapped[Organization] = relationship(back_populates="memberships")


class UserSubscription(StripeBillingPeriod, db.Model):  # type: ignore[name-defined,misc]
    """A user's individual subscription; at most one per user."""

    __tablename__ = "user_subscriptions"
    __table_args__ = (
        CheckConstraint(_one_of("plan_id", INDIVIDUAL_PLAN_IDS), name="plan_id"),
        CheckConstraint(_one_of("status", SUBSCRIPTION_STATUSES), name="status"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), unique=True)
    plan_id: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(32))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255))
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(255))
    billing_anchor: Mapped[datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)

    user: Mapped[User] = relationship(back_populates="subscription")


class UserSession(db.Model):  # type: ignore[name-defined,misc]
    """One signed-in browser: a session the server can end (sign-out, disabling, timeouts).

    The browser's signed cookie carries a random token; only its SHA-256 is
    kept here, so the table cannot sign anyone in.
    """

    __tablename__ = "user_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    last_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    """Refreshed at most once a minute; the idle timeout counts from it."""


class StripeEvent(db.Model):  # type: ignore[name-defined,misc]
    """A webhook event Stripe delivered, kept so that each is handled once.

    Stripe delivers at least once and in any order; a replay finds its id here
    and changes nothing. Events about customers the portal does not know stay
    ``unmatched`` for an operator (``flask stripe-status``).
    """

    __tablename__ = "stripe_events"
    __table_args__ = (
        CheckConstraint(_one_of("outcome", STRIPE_EVENT_OUTCOMES), name="outcome"),
        Index("ix_stripe_events_received_at", "received_at"),
    )

    id: Mapped[str] = mapped_column(String(255), primary_key=True)
    type: Mapped[str] = mapped_column(String(100))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    """When Stripe created the event."""
    received_at: Mapped[datetime] = mapped_column(UTCDateTime())
    processed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    outcome: Mapped[str] = mapped_column(String(16))
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255))
    stripe_subscription_id: Mapped[str | None] = mapped_column(String(255))
    message: Mapped[str | None] = mapped_column(Text)


def new_event_ids(count: int) -> list[uuid.UUID]:
    """Ids for ``count`` new usage events: version 7 UUIDs (RFC 9562).

    The first 48 bits are the Unix time in milliseconds, 74 of the other 80
    random (the rest say version and variant). Ids that grow with time are
    added at the right edge of the primary key's index, as a sequence's
    would be, where random (version 4) ones wrote pages all over it, each
    logged whole after a checkpoint: in scratch runs of the batch benchmark,
    PostgreSQL spent 18.4-19.8 ms per 1,000 events instead of 21.2-23.3.
    An id tells when its event was recorded (by the portal's clock), which
    its caller knows anyway.
    """
    milliseconds = int(clock.now().timestamp() * 1000)
    randomness = os.urandom(10 * count)  # one read for the lot, not one per id
    ids = []
    for start in range(0, 10 * count, 10):
        value = milliseconds << 80 | int.from_bytes(randomness[start : start + 10])
        value = value & ~(0xF << 76) | 0x7 << 76  # version 7
        value = value & ~(0x3 << 62) | 0x2 << 62  # the RFC's variant
        ids.append(uuid.UUID(int=value))
    return ids


def new_event_id() -> uuid.UUID:
    return new_event_ids(1)[0]


class UsageEvent(db.Model):  # type: ignore[name-defined,misc]
    """One recorded use of the assistant, never updated but for one repair: usage recorded
    between a plan change in Stripe and its webhook moves into the period Stripe bills it in
    (``billing.refile``), before the reporter has claimed it.

    ``organization_id`` names the organization whose pool it draws on; it is
    null when the user is billed individually (then the user is the billing
    subject). Whether and when it reached Stripe is not written here: the
    event waits in ``usage_report_backlog`` until a report run claims it into
    exactly one report batch (``UsageReportBatch.event_ids``; reported when
    that batch is sent, at its ``sent_at``) or one skip
    (``UsageReportSkip.event_ids``).
    """

    __tablename__ = "usage_events"
    __table_args__ = (
        CheckConstraint("quantity > 0", name="quantity_positive"),
        # The daily chart's reads (``usage.daily``): a subject's events in one period.
        # Each event is in exactly one of the two (a pool's or an individual's), so
        # recording writes one entry, and a small one: the keys alone deduplicate (a
        # subject's period is one key), where included columns made each index twelve
        # times larger, for index-only scans the newest events, not yet all-visible
        # after a vacuum, would seldom get.
        Index(
            "ix_usage_events_pool_day",
            "organization_id",
            "period_start",
            "user_id",
            postgresql_where=text("organization_id IS NOT NULL"),
        ),
        Index(
            "ix_usage_events_user_day",
            "user_id",
            "period_start",
            postgresql_where=text("organization_id IS NULL"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=new_event_id)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"))
    organization_id: Mapped[int | None] = mapped_column(ForeignKey("organizations.id"))
    plan_id: Mapped[str] = mapped_column(String(32))
    event_type: Mapped[str] = mapped_column(String(64))
    quantity: Mapped[int] = mapped_column(Integer)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    event_metadata: Mapped[dict[str, Any] | None] = mapped_column("metadata", JSON)


usage_report_backlog = db.Table(
    "usage_report_backlog",
    db.Column("event_id", Uuid(), nullable=False),
    db.Column("organization_id", Integer, nullable=True),
    db.Column("user_id", Integer, nullable=False),
    db.Column("period_start", UTCDateTime(), nullable=False),
    # In the order claims take it: by billing subject and period, so one
    # claim aggregates into few meter events.
    Index("ix_usage_report_backlog_claim_order", "organization_id", "user_id", "period_start"),
)
"""Usage events not yet claimed by a report run: a queue, one row per event.

Written by the statement that records the event and deleted by the claim
that takes it, so reporting never updates ``usage_events`` (a wide table
with large indexes, where every update would rewrite the row and each of
them). No primary key or foreign key: rows are only ever inserted with their
event and deleted by position (``ctid``), and either would cost the
recording of every suggestion an index lookup more.
"""


class UsageReportSkip(db.Model):  # type: ignore[name-defined,misc]
    """Usage events a report run took from the backlog without sending them, and why."""

    __tablename__ = "usage_report_skips"
    __table_args__ = (
        CheckConstraint(_one_of("reason", REPORT_SKIP_REASONS), name="reason"),
        CheckConstraint("event_count > 0", name="event_count_positive"),
        # Paid usage nobody could be billed for, not yet put back: usage-status counts it.
        Index(
            "ix_usage_report_skips_unbilled",
            "created_at",
            postgresql_where=text("reason = 'no_customer' AND requeued_at IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    reason: Mapped[str] = mapped_column(String(32))
    """``not_billable``, ``free_plan``, ``no_customer`` (paid usage of a subject
    without a Stripe customer), or ``already_reported`` (reported before this
    reporter existed)."""
    run_id: Mapped[int | None] = mapped_column(ForeignKey("usage_report_runs.id"))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    event_count: Mapped[int] = mapped_column(Integer)
    value: Mapped[int] = mapped_column(BigInteger)
    oldest_occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    latest_occurred_at: Mapped[datetime] = mapped_column(UTCDateTime())
    requeued_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    """When ``flask report-usage --requeue-unbilled`` put these events back in the backlog."""
    event_ids: Mapped[list[str]] = mapped_column(JSON, deferred=True)
    """The skipped usage events' ids, as the database spells them."""


class UsageRecord(db.Model):  # type: ignore[name-defined,misc]
    """The running total of one billing subject in one billing period.

    The subject is a user (``user_id``) or an organization's pool
    (``organization_id``), never both.
    """

    __tablename__ = "usage_records"
    __table_args__ = (
        CheckConstraint("(user_id IS NULL) <> (organization_id IS NULL)", name="one_subject"),
        CheckConstraint("used >= 0", name="used_not_negative"),
        Index(
            "uq_usage_records_user_period",
            "user_id",
            "period_start",
            unique=True,
            postgresql_where=text("user_id IS NOT NULL"),
        ),
        Index(
            "uq_usage_records_organization_period",
            "organization_id",
            "period_start",
            unique=True,
            postgresql_where=text("organization_id IS NOT NULL"),
        ),
        # The totals ``flask send-notifications`` looks at each minute: only those at or
        # past the lowest threshold, so the search stays small however long the history.
        Index(
            "ix_usage_records_alertable",
            "period_end",
            postgresql_include=["period_start", "used", "included", "plan_id"],
            postgresql_where=text(ALERTABLE),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"))
    organization_id: Mapped[int | None] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE")
    )
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    used: Mapped[int] = mapped_column(BigInteger)
    included: Mapped[int] = mapped_column(BigInteger)
    plan_id: Mapped[str] = mapped_column(String(32))
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())


class MemberUsage(db.Model):  # type: ignore[name-defined,misc]
    """One member's share of an organization's pool in one billing period.

    Kept in the same transaction as the pool's ``usage_records`` row so the
    admin's member table reads one row per member instead of summing events.
    """

    __tablename__ = "member_usage"

    organization_id: Mapped[int] = mapped_column(
        ForeignKey("organizations.id", ondelete="CASCADE"), primary_key=True
    )
    period_start: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    used: Mapped[int] = mapped_column(BigInteger)
    last_used_at: Mapped[datetime] = mapped_column(UTCDateTime())


class ApiKey(db.Model):  # type: ignore[name-defined,misc]
    """A service key for the usage API. Only a SHA-256 hash of the key is kept."""

    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(100), unique=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    """The key's first characters, to recognise it in listings and logs."""
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
    last_used_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime())


class UsageReportRun(db.Model):  # type: ignore[name-defined,misc]
    """One run of ``flask report-usage``: written when it starts, completed when it ends.

    A run killed on the way stays ``running`` forever, which is how
    ``flask usage-status`` tells an interrupted run from a finished one.
    """

    __tablename__ = "usage_report_runs"
    __table_args__ = (
        CheckConstraint(_one_of("outcome", REPORT_RUN_OUTCOMES), name="outcome"),
        Index("ix_usage_report_runs_outcome_started_at", "outcome", "started_at"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime())
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    worker: Mapped[str] = mapped_column(String(255))
    """Host and process id, to tell apart runs on several machines."""
    outcome: Mapped[str] = mapped_column(String(16))
    claimed: Mapped[int] = mapped_column(Integer, server_default="0")
    batches_sent: Mapped[int] = mapped_column(Integer, server_default="0")
    events_reported: Mapped[int] = mapped_column(Integer, server_default="0")
    skipped: Mapped[int] = mapped_column(Integer, server_default="0")
    failed: Mapped[int] = mapped_column(Integer, server_default="0")
    retried: Mapped[int] = mapped_column(Integer, server_default="0")
    pending: Mapped[int] = mapped_column(Integer, server_default="0")
    message: Mapped[str | None] = mapped_column(Text)


class UsageReportBatch(db.Model):  # type: ignore[name-defined,misc]
    """One meter event for Stripe: the outbox row, written before Stripe is called.

    It sums the usage events of one Stripe customer, meter and billing period
    that ``event_ids`` lists. Its ``identifier``, ``value``,
    ``meter_timestamp`` and events never change once written, so every
    attempt sends the same meter event and Stripe's identifier check makes a
    repeated delivery harmless. Its events are reported when it is sent (at
    ``sent_at``); each usage event is listed by one batch or skip at most.
    """

    __tablename__ = "usage_report_batches"
    __table_args__ = (
        CheckConstraint(_one_of("status", REPORT_BATCH_STATUSES), name="status"),
        CheckConstraint("value > 0", name="value_positive"),
        CheckConstraint("event_count > 0", name="event_count_positive"),
        # Open batches only (pending and failed): sent ones pile up forever.
        Index(
            "ix_usage_report_batches_open",
            "status",
            "id",
            postgresql_where=text("status <> 'sent'"),
        ),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    identifier: Mapped[str] = mapped_column(String(100), unique=True)
    """The meter event's ``identifier`` at Stripe: random, so no other database
    (a staging copy, a restored backup) can ever produce the same one."""
    stripe_customer_id: Mapped[str] = mapped_column(String(255))
    event_name: Mapped[str] = mapped_column(String(100))
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    value: Mapped[int] = mapped_column(BigInteger)
    event_count: Mapped[int] = mapped_column(Integer)
    meter_timestamp: Mapped[datetime] = mapped_column(UTCDateTime())
    """The meter event's ``timestamp``: whole seconds, inside the billing period."""
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    queued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    """When the batch last became pending: created, or put back by ``--retry-failed``."""
    last_attempt_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    sent_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    failed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)
    last_http_status: Mapped[int | None] = mapped_column(Integer)
    stripe_request_id: Mapped[str | None] = mapped_column(String(255))
    created_run_id: Mapped[int | None] = mapped_column(ForeignKey("usage_report_runs.id"))
    last_run_id: Mapped[int | None] = mapped_column(ForeignKey("usage_report_runs.id"))
    event_ids: Mapped[list[str]] = mapped_column(JSON, deferred=True)
    """The usage events this batch reports, as the database spells their ids.

    Deferred: up to a claim's worth of ids, read by SQL only.
    """


class UsageAlert(db.Model):  # type: ignore[name-defined,misc]
    """A billing subject's usage crossed a threshold (80, 95 or 100 %) in one period.

    One row per running total (``usage_records``), allowance and threshold, at
    most: the unique key is what makes each crossing announced once. A plan
    changed within the period (an upgrade, seats bought) is a new allowance,
    whose thresholds are announced anew. The figures are those seen when it was
    found, so every message and retry says the same.
    """

    __tablename__ = "usage_alerts"
    __table_args__ = (
        UniqueConstraint("usage_record_id", "plan_id", "included", "threshold"),
        CheckConstraint("threshold IN (80, 95, 100)", name="threshold"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    usage_record_id: Mapped[int] = mapped_column(ForeignKey("usage_records.id", ondelete="CASCADE"))
    threshold: Mapped[int] = mapped_column(Integer)
    plan_id: Mapped[str] = mapped_column(String(32))
    used: Mapped[int] = mapped_column(BigInteger)
    included: Mapped[int] = mapped_column(BigInteger)
    period_start: Mapped[datetime] = mapped_column(UTCDateTime())
    period_end: Mapped[datetime] = mapped_column(UTCDateTime())
    detected_at: Mapped[datetime] = mapped_column(UTCDateTime())


class Notification(db.Model):  # type: ignore[name-defined,misc]
    """One message about one alert to one person on one channel: the notifications outbox.

    ``id`` is the event id the message carries (the webhook's ``id``, the
    email's ``Message-ID``), the same on every attempt. ``status`` moves
    ``pending`` -> ``sending`` (leased by one run) -> ``sent``; an email is
    ``handed_over`` while the SMTP server holds all of it but the final dot
    (see docs/architecture.md). ``failed`` is permanent; ``cancelled`` means
    no longer wanted (the channel was turned off, the period ended).
    """

    __tablename__ = "notifications"
    __table_args__ = (
        UniqueConstraint("alert_id", "recipient_id", "channel"),
        CheckConstraint(_one_of("channel", NOTIFICATION_CHANNELS), name="channel"),
        CheckConstraint(_one_of("status", NOTIFICATION_STATUSES), name="status"),
        Index(
            "ix_notifications_due",
            "next_attempt_at",
            postgresql_where=text("status IN ('pending', 'sending')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid(), primary_key=True, default=new_event_id)
    alert_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("usage_alerts.id", ondelete="CASCADE")
    )
    recipient_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), index=True
    )
    channel: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default="0")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    next_attempt_at: Mapped[datetime] = mapped_column(UTCDateTime())
    """When a run may take it: the first attempt at once, retries after a back-off; while
    ``sending``, when the lease of the run that took it runs out."""
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    last_error: Mapped[str | None] = mapped_column(Text)


class NotificationPreference(db.Model):  # type: ignore[name-defined,misc]
    """What a user wants to hear; a user without a row has the defaults."""

    __tablename__ = "notification_preferences"

    user_id: Mapped[int] = mapped_column(
        ForeignKey("users.id", ondelete="CASCADE"), primary_key=True
    )
    email: Mapped[bool] = mapped_column(default=True, server_default=text("true"))
    webhook: Mapped[bool] = mapped_column(default=True, server_default=text("true"))
    pool_alerts: Mapped[bool] = mapped_column(default=False, server_default=text("false"))
    """A member's wish to hear about the organization's pool (its admins always do)."""
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=_now)
