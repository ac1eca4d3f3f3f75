"""``report_usage``: send billable usage to Stripe Billing Meters, each unit exactly once.

Why nothing is lost or billed twice, through crashes, timeouts and overlapping runs:

1. **Claim.** Recording a usage event also puts it in the backlog
   (``usage_report_backlog``, one small row per event). A run takes it in
   chunks of at most ``batch_size``: it locks a chunk with ``SELECT … FOR
   UPDATE SKIP LOCKED`` (so concurrent runs on several machines take
   disjoint events) and deletes it in the same statement. The chunk is grouped by
   (Stripe customer, meter, billing period) into report batches, and the
   batch rows, with their identifier, value, timestamp and the ids of their
   events (``event_ids``), are committed in that same transaction, *before*
   Stripe is called: an outbox. Not-billable events leave the backlog as
   skips (``usage_report_skips``) in the same transaction. So each event
   leaves the backlog exactly once, into exactly one batch or skip.
2. **Send.** Each pending batch is one meter event whose ``identifier`` is the
   batch's. Success, or Stripe's "An event already exists with identifier …"
   (an earlier attempt got through), marks the batch sent: its events are
   reported, at its ``sent_at``. One row is written, whatever the number of
   events.
3. **Anything in between** (a crash, a timeout, a dropped connection, a 5xx)
   leaves the batch pending; every later attempt sends the very same event,
   which Stripe counts once. Permanent refusals mark the batch failed with
   Stripe's message until ``--retry-failed``.

Stripe promises to remember identifiers for at least 24 hours only, so a
batch that stays pending for ``DEDUPE_SAFE_AGE`` is not resent blindly: it is
marked failed for a person to check (see the README, "Recovering failed batches").

Reporting never writes a usage event: in that wide table with large indexes,
marking each reported event (as earlier versions did) rewrote the row and an
entry in every index, and was most of a run's time.

Sending may use several senders (``--senders``; PostgreSQL): threads with a
connection each, so one batch's request is in flight while the next goes
out, and the run claims its next chunk while the senders send the last one.
They take batches exactly as two runs would: each batch row locked (``FOR
UPDATE SKIP LOCKED``) by the sender that has it, each customer and meter by
an advisory lock.

Memory is bounded by the batch size: events are claimed chunk by chunk, and
only counters outlive a chunk (on PostgreSQL the events never leave the
database at all).
"""

from __future__ import annotations

import enum
import hashlib
import math
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, Integer, String, bindparam, select, text, update
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from portal.billing.gateway import Delivery, DeliveryStatus, MeterEvent, MeterEventGateway
from portal.billing.settings import DEFAULT_METER_EVENT_NAME
from portal.models import UsageReportBatch, UsageReportRun, UsageReportSkip, UTCDateTime
from portal.plans import PLANS, QUOTA_EVENT_TYPES
from portal.usage.store import ENQUEUE

STRIPE_MAX_EVENT_AGE = timedelta(days=35)
"""Stripe refuses meter events whose timestamp is older than this."""
CLAIM_AGE_MARGIN = timedelta(minutes=15)
"""Usage this close to Stripe's limit when claimed is failed at once: it could
not be sent before it crosses the limit if the first attempt hits a snag."""
SEND_AGE_MARGIN = timedelta(minutes=2)
"""Clock differences with Stripe, and the request's own travel time."""
DEDUPE_SAFE_AGE = timedelta(hours=23)
"""Stripe deduplicates identifiers for at least 24 hours; an hour to spare."""

DEFAULT_BATCH_SIZE = 10_000
MAX_BATCH_SIZE = 100_000
DEFAULT_MAX_SECONDS = 240.0
"""Four minutes, so a run started every five minutes is done before the next."""
DEFAULT_MAX_ATTEMPTS = 4
MAX_SENDERS = 16
DEFAULT_SENDERS = 1
DEFAULT_CLI_SENDERS = 4
"""``flask report-usage`` sends with four connections on PostgreSQL: a sent batch's
events are written while the next batches go to Stripe."""
"""HTTP attempts per batch within one run; a batch still failing waits for the next run."""
IDENTIFIER_PREFIX = "aiu_"

PAID_PLAN_IDS = frozenset(plan.id for plan in PLANS.values() if plan.is_paid)
BILLABLE_EVENT_TYPES = frozenset(QUOTA_EVENT_TYPES)

LOCK_NOT_AVAILABLE = "55P03"
"""PostgreSQL's answer when ``lock_timeout`` ran out."""
# Advisory-lock namespace for "one request in flight per customer and meter".
_CUSTOMER_LOCK_NAMESPACE = 0x5553_4147  # "USAG"
# Advisory lock for "one claim at a time", across runs and machines.


class SkipReason(enum.StrEnum):
    """Why an event leaves the backlog without being sent (``usage_report_skips.reason``)."""

    NOT_BILLABLE = "not_billable"
    """Its event type does not consume quota (e.g. a refinement)."""
    FREE_PLAN = "free_plan"
    NO_CUSTOMER = "no_customer"
    """Paid usage whose billing subject has no Stripe customer: nobody to bill."""
    ALREADY_REPORTED = "already_reported"
    """Reported by other means before this reporter took over (migration 0005 keeps
    such skips from earlier versions; the reporter no longer makes them)."""


def skip_reason(event_type: str, plan_id: str, stripe_customer_id: str | None) -> SkipReason | None:
    """Why this usage is not sent to Stripe, or ``None`` when it is billable."""
    if event_type not in BILLABLE_EVENT_TYPES:
        return SkipReason.NOT_BILLABLE
    if plan_id not in PAID_PLAN_IDS:
        return SkipReason.FREE_PLAN
    if not stripe_customer_id:
        return SkipReason.NO_CUSTOMER
    return None


def meter_timestamp(
    latest: datetime, period_start: datetime, period_end: datetime, now: datetime
) -> datetime:
    """The meter event's timestamp: the batch's latest usage, in whole seconds, inside its period.

    Stripe assigns a meter event to the invoice whose period contains its
    timestamp, so the timestamp must stay in ``[period_start, period_end)``
    even when the anchor has fractions of a second; and never ahead of ``now``
    unless the period itself has not started yet (a fast client clock).
    """
    first = math.ceil(period_start.timestamp())
    last = math.ceil(period_end.timestamp()) - 1
    moment = min(math.floor(latest.timestamp()), math.floor(now.timestamp()))
    return datetime.fromtimestamp(max(first, min(moment, last)), UTC)


TOO_OLD_REASON = (
    "{count} usage events occurred more than "
    f"{STRIPE_MAX_EVENT_AGE.days} days ago (the oldest at "
    "{oldest} UTC); Stripe refuses meter events older "
    f"than {STRIPE_MAX_EVENT_AGE.days} days, so this usage cannot be billed "
    "through the meter"
)
"""Why a claimed group of usage is failed at once; ``oldest`` as ``YYYY-MM-DD HH:MM``."""


def new_identifier() -> str:
    """A meter event identifier no other database can produce (36 characters)."""
    return IDENTIFIER_PREFIX + uuid.uuid4().hex


@dataclass(frozen=True)
class ReportOptions:
    event_name: str = DEFAULT_METER_EVENT_NAME
    batch_size: int = DEFAULT_BATCH_SIZE
    """Events per claim; the reporter's memory grows with it, not with the backlog."""
    limit: int | None = None
    """Most events to claim in this run; ``None`` for the whole backlog."""
    max_seconds: float = DEFAULT_MAX_SECONDS
    retry_failed: bool = False
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    backoff_base: float = 0.5
    backoff_max: float = 30.0
    senders: int = DEFAULT_SENDERS
    """Batches sent at once, each by a thread on a connection of its own. Never two at once
    for one customer and meter."""
    worker: str = ""
    """Who runs the report (host:pid), recorded with the run."""

    def __post_init__(self) -> None:
        if not 1 <= self.batch_size <= MAX_BATCH_SIZE:
            raise ValueError(f"batch_size must be from 1 to {MAX_BATCH_SIZE}")
        if self.limit is not None and self.limit < 1:
            raise ValueError("limit must be at least 1")
        if not 1 <= self.senders <= MAX_SENDERS:
            raise ValueError(f"senders must be from 1 to {MAX_SENDERS}")
        if self.max_seconds <= 0 or self.max_attempts < 1:
            raise ValueError("max_seconds must be positive and max_attempts at least 1")


@dataclass(frozen=True)
class ReportSummary:
    """What one run did. Batches are meter events; events are usage events."""

    claimed: int = 0
    """Usage events taken from the backlog."""
    batches_sent: int = 0
    events_reported: int = 0
    value_sent: int = 0
    skipped: int = 0
    """Usage events that left the backlog unsent (``skipped_reasons`` says why)."""
    skipped_reasons: Mapping[str, int] = field(default_factory=dict)
    failed: int = 0
    """Batches marked failed (Stripe refused them, or they are too old to send)."""
    retried: int = 0
    """Requests sent again after a timeout, dropped connection, 409, 429 or 5xx."""
    pending: int = 0
    """Batches this run created or tried and left pending, for the next run."""
    requeued: int = 0
    """Failed batches put back by ``retry_failed``."""
    duration_s: float = 0.0
    error: str | None = None
    """A configuration problem found on the way (Stripe refused the API key)."""
    run_id: int | None = None

    @property
    def exit_code(self) -> int:
        """0: everything taken was sent or skipped; 1: a batch failed or is pending; 2: config."""
        if self.error is not None:
            return 2
        if self.failed or self.pending:
            return 1
        return 0

    @property
    def outcome(self) -> str:
        if self.error is not None:
            return "error"
        if self.failed:
            return "failed"
        if self.pending:
            return "incomplete"
        return "ok"

    def as_dict(self) -> dict[str, Any]:
        return {
            "claimed": self.claimed,
            "batches_sent": self.batches_sent,
            "events_reported": self.events_reported,
            "value_sent": self.value_sent,
            "skipped": self.skipped,
            "skipped_reasons": dict(self.skipped_reasons),
            "failed": self.failed,
            "retried": self.retried,
            "pending": self.pending,
            "requeued": self.requeued,
            "duration_s": round(self.duration_s, 3),
            "exit_code": self.exit_code,
            "error": self.error,
            "run_id": self.run_id,
        }


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


def report_usage(
    session: Session,
    gateway: MeterEventGateway,
    now: datetime,
    options: ReportOptions | None = None,
    *,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    on_progress: Callable[[int], None] | None = None,
) -> ReportSummary:
    """Report the backlog to Stripe within the options' limits, committing as it goes.

    ``now`` is the run's start; time then advances with ``monotonic``.
    ``on_progress`` is called with the number of usage events settled (sent,
    skipped or failed) after each step, for a progress bar.
    """
    options = options or ReportOptions()
    return _Run(session, gateway, now, options, sleep, monotonic, on_progress).execute()


class _Run:
    """One run's state: counters, clock and budget. Used once, by ``report_usage``."""

    def __init__(
        self,
        session: Session,
        gateway: MeterEventGateway,
        now: datetime,
        options: ReportOptions,
        sleep: Callable[[float], None],
        monotonic: Callable[[], float],
        on_progress: Callable[[int], None] | None,
    ) -> None:
        self.session = session
        self.gateway = gateway
        self.options = options
        self.sleep = sleep
        self.monotonic = monotonic
        self.on_progress = on_progress
        self.started = now
        self.started_monotonic = monotonic()
        self.deadline = self.started_monotonic + options.max_seconds
        self.random = random.Random()
        self.run_id: int | None = None
        self.cursor = 0
        """Highest batch id this run has looked at: each batch is handled once per run."""
        self.deferred: list[int] = []
        """Batches skipped because another run was sending to the same customer."""
        self.tried: set[int] = set()
        """Batches this run sent (or tried to send) to Stripe."""
        self.counts: Counter[str] = Counter()
        self.skipped_reasons: Counter[str] = Counter()
        self.error: str | None = None
        self.lock = threading.Lock()
        """Guards the state above while several senders share it."""
        self._sender_sessions: list[Session] = []

    # -- time ------------------------------------------------------------

    def now(self) -> datetime:
        return self.started + timedelta(seconds=self.monotonic() - self.started_monotonic)

    def remaining(self) -> float:
        return self.deadline - self.monotonic()

    def progress(self, events: int) -> None:
        if self.on_progress is not None and events:
            with self.lock:
                self.on_progress(events)

    def count(self, **amounts: int) -> None:
        """Add to the run's counters; senders in several threads call it."""
        with self.lock:
            self.counts.update(amounts)

    # -- the run ---------------------------------------------------------

    def execute(self) -> ReportSummary:
        session = self.session
        session.commit()  # start from a clean transaction: the claims need it
        run = UsageReportRun(
            started_at=self.started, worker=self.options.worker or "unknown", outcome="running"
        )
        session.add(run)
        session.commit()
        self.run_id = run.id
        try:
            if self.options.retry_failed:
                self.counts["requeued"] = requeue_failed_batches(session, self.now())
                session.commit()
            # Batches left pending by earlier runs go first: they are the oldest usage.
            self.send_pending()
            if self.sends_beside_claims():
                self.claim_while_sending()
            else:
                while self.error is None and self.remaining() > 0:
                    room = self.room()
                    if room <= 0 or self.claim(room) == 0:
                        break
                    self.send_pending()
            self.send_deferred()
        except BaseException as error:
            try:
                session.rollback()
                self.finish(f"{type(error).__name__}: {error}", outcome="error")
            except Exception:  # noqa: S110 - the database may be what failed: keep its error
                pass
            raise
        finally:
            self.close_senders()
        return self.finish(None)

    def room(self) -> int:
        """How many events the next claim may take (``--batch-size``, within ``--limit``)."""
        room = self.options.batch_size
        if self.options.limit is not None:
            room = min(room, self.options.limit - self.counts["claimed"])
        return room

    def sends_beside_claims(self) -> bool:
        """Whether senders have connections of their own, so claims need not wait for them."""
        sessions = self.sender_sessions()
        return all(session is not self.session for session in sessions)

    def claim_while_sending(self) -> None:
        """Claim the next chunk while the senders send the last one (PostgreSQL).

        A claim is one long statement on one connection; run in turn with
        sending, it would leave the other CPU idle for a third of the run. The
        two never need each other: senders only see a claim's batches once it
        has committed them, exactly as with two runs at once.
        """
        with ThreadPoolExecutor(1, thread_name_prefix="report-usage-sending") as pool:
            while self.error is None and self.remaining() > 0:
                room = self.room()
                if room <= 0:
                    break
                sending = pool.submit(self.send_pending)
                try:
                    claimed = self.claim(room)
                finally:
                    sending.result()  # a sender's exception ends the run here
                if claimed == 0:
                    break
        self.send_pending()  # what the last claim took

    def finish(self, crash: str | None, outcome: str | None = None) -> ReportSummary:
        session = self.session
        pending = 0
        if crash is None:
            # Ours and still pending, unless another run is sending it right now
            # (it holds the row): that run answers for it in its own summary.
            pending = len(
                session.scalars(
                    select(UsageReportBatch.id)
                    .where(
                        UsageReportBatch.status == "pending",
                        (UsageReportBatch.created_run_id == self.run_id)
                        | (UsageReportBatch.last_run_id == self.run_id),
                    )
                    .with_for_update(skip_locked=True)
                ).all()
            )
            session.rollback()
        c = self.counts
        summary = ReportSummary(
            claimed=c["claimed"],
            batches_sent=c["batches_sent"],
            events_reported=c["events_reported"],
            value_sent=c["value_sent"],
            skipped=sum(self.skipped_reasons.values()),
            skipped_reasons=dict(self.skipped_reasons),
            failed=c["failed"],
            retried=c["retried"],
            pending=pending,
            requeued=c["requeued"],
            duration_s=self.monotonic() - self.started_monotonic,
            error=self.error,
            run_id=self.run_id,
        )
        session.execute(
            update(UsageReportRun)
            .where(UsageReportRun.id == self.run_id)
            .values(
                finished_at=self.now(),
                outcome=outcome or summary.outcome,
                claimed=summary.claimed,
                batches_sent=summary.batches_sent,
                events_reported=summary.events_reported,
                skipped=summary.skipped,
                failed=summary.failed,
                retried=summary.retried,
                pending=summary.pending,
                message=crash or self.error,
            )
            .execution_options(synchronize_session=False)
        )
        session.commit()
        return summary

    # -- claiming --------------------------------------------------------

    def claim(self, size: int) -> int:
        """Turn up to ``size`` pending events into batches and skips, in one transaction.

        Returns how many events left the backlog; 0 when it is empty.
        """
        session = self.session
        rows = session.execute(CLAIM, self.claim_parameters(size)).all()
        session.commit()
        claimed = failed = failed_events = 0
        reasons: Counter[str] = Counter()
        for kind, reason, count in rows:
            if kind == "claimed":
                claimed = int(count)
            elif kind == "skipped":
                reasons[reason] += int(count)
            elif kind == "failed_batches":
                failed = int(count)
            elif kind == "failed_events":
                failed_events = int(count)
        # Senders may be counting at the same moment (claim_while_sending).
        with self.lock:
            self.skipped_reasons.update(reasons)
        self.count(claimed=claimed, failed=failed)
        self.progress(sum(reasons.values()) + failed_events)
        return claimed

    def claim_parameters(self, size: int) -> dict[str, Any]:
        """The PostgreSQL claim statement's parameters, for a chunk of ``size`` events."""
        now = self.now()
        return {
            "limit": size,
            "now": now,
            "cutoff": now - STRIPE_MAX_EVENT_AGE + CLAIM_AGE_MARGIN,
            "event_name": self.options.event_name,
            "run_id": self.run_id,
            "prefix": IDENTIFIER_PREFIX,
            "too_old_reason": TOO_OLD_REASON.format(count="%s", oldest="%s"),
            "billable_types": sorted(BILLABLE_EVENT_TYPES),
            "paid_plans": sorted(PAID_PLAN_IDS),
        }

    # -- sending ---------------------------------------------------------

    def send_pending(self) -> None:
        """Send every pending batch after ``cursor``, oldest first, within the budget.

        With several senders, each sends on a connection of its own, in a
        thread: while one waits for Stripe or for the database to write a
        sent batch's events, the others go on. They share nothing but the
        cursor and counters; each batch is locked by the one sending it and
        each customer by an advisory lock, exactly as between two runs.
        """
        sessions = self.sender_sessions()
        if len(sessions) == 1:
            self._send_loop(sessions[0])
            return
        with ThreadPoolExecutor(len(sessions), thread_name_prefix="report-usage") as pool:
            futures = [pool.submit(self._send_loop, session) for session in sessions]
        for future in futures:
            future.result()  # a sender's exception ends the run, as it would with one

    def sender_sessions(self) -> list[Session]:
        """The sessions to send on: the run's own for one sender, else one per sender.

        Each extra sender gets a plain session of its own on the same engine:
        the caller's may be scoped to this thread (Flask-SQLAlchemy's is).
        """
        if not self._sender_sessions:
            bind = self.session.get_bind()
            # A session bound to a connection (not an engine) cannot be shared out.
            if self.options.senders > 1:
                if isinstance(bind, Engine):
                    for _ in range(self.options.senders):
                        self._sender_sessions.append(Session(bind=bind))
            if not self._sender_sessions:
                self._sender_sessions.append(self.session)
        return self._sender_sessions

    def close_senders(self) -> None:
        for session in self._sender_sessions:
            if session is not self.session:
                session.close()

    def _send_loop(self, session: Session) -> None:
        try:
            while self.error is None and self.remaining() > 0:
                with self.lock:  # one sender at a time moves the cursor
                    batch = self._lock_next_batch(
                        session, UsageReportBatch.id > self.cursor, order=True, skip_locked=True
                    )
                    if batch is not None:
                        self.cursor = batch.id
                if batch is None:
                    session.rollback()
                    return
                self._handle(session, batch, wait_for_customer=False)
        except BaseException:
            session.rollback()  # this sender's batch stays pending; its lock goes
            raise

    def send_deferred(self) -> None:
        """Send what this run put aside, and its own batches another run let go.

        Put aside: batches whose customer another sender was busy with.
        Let go: a batch this run claimed that another run's sender held when
        this run's senders came to it, and then put aside itself (its
        customer busy). Left alone, this run would end with it pending.
        Batches this run already tried are not tried again.
        """
        session = self.session
        own = session.scalars(
            select(UsageReportBatch.id).where(
                UsageReportBatch.status == "pending",
                UsageReportBatch.created_run_id == self.run_id,
            )
        ).all()
        session.rollback()
        with self.lock:
            tried = set(self.tried)
        left = [batch_id for batch_id in own if batch_id not in tried]
        for batch_id in dict.fromkeys([*self.deferred, *left]):
            if self.error is not None or self.remaining() <= 0:
                return
            try:
                # Wait for a sender that holds the batch right now: it sends it
                # (then it is no longer pending), or lets it go to this run;
                # then for its customer. Never longer than the time budget.
                self._limit_lock_waits(session)
                batch = self._lock_next_batch(
                    session, UsageReportBatch.id == batch_id, skip_locked=False
                )
                if batch is None:
                    session.rollback()  # sent meanwhile
                    continue
                self._handle(session, batch, wait_for_customer=True)
            except OperationalError as error:
                if getattr(error.orig, "sqlstate", None) != LOCK_NOT_AVAILABLE:
                    raise
                session.rollback()  # the budget ran out waiting: pending for the next run
                return

    def _limit_lock_waits(self, session: Session) -> None:
        """Make this transaction's lock waits give up when the time budget ends (PostgreSQL)."""
        timeout = f"{max(1, math.ceil(self.remaining() * 1000))}ms"
        session.execute(
            text("SELECT set_config('lock_timeout', :timeout, true)"), {"timeout": timeout}
        )

    def _lock_next_batch(
        self, session: Session, condition: Any, *, order: bool = False, skip_locked: bool
    ) -> UsageReportBatch | None:
        query = (
            select(UsageReportBatch)
            .where(UsageReportBatch.status == "pending", condition)
            .limit(1)
            .with_for_update(skip_locked=skip_locked)
            .execution_options(populate_existing=True)
        )
        if order:
            query = query.order_by(UsageReportBatch.id)
        return session.scalars(query).first()

    def _handle(
        self, session: Session, batch: UsageReportBatch, *, wait_for_customer: bool
    ) -> None:
        """Send one locked batch and settle it, in the transaction that holds its lock."""
        now = self.now()
        oldest_allowed = now - STRIPE_MAX_EVENT_AGE + SEND_AGE_MARGIN
        if batch.meter_timestamp < oldest_allowed:
            self._fail(
                session,
                batch,
                f"its timestamp {batch.meter_timestamp:%Y-%m-%d %H:%M:%S} UTC is now more than "
                f"{STRIPE_MAX_EVENT_AGE.days} days old; Stripe refuses meter events older than "
                f"{STRIPE_MAX_EVENT_AGE.days} days, so this usage cannot be billed through the "
                "meter",
                now,
            )
            session.commit()
            return
        if now - batch.queued_at > DEDUPE_SAFE_AGE:
            self._fail(
                session,
                batch,
                f"pending since {batch.queued_at:%Y-%m-%d %H:%M} UTC, longer than Stripe is sure "
                f"to remember identifiers (24 h); if an earlier attempt reached Stripe, sending "
                f"it again would bill it twice. Look for identifier {batch.identifier} among the "
                "customer's meter events at Stripe before recovering it "
                "(README: Recovering failed batches)",
                now,
            )
            session.commit()
            return
        if not self._lock_customer(session, batch, wait=wait_for_customer):
            session.rollback()
            with self.lock:
                self.deferred.append(batch.id)
            return
        if self.remaining() <= 0:
            session.rollback()
            return

        delivery, attempts = self._deliver(batch)
        self._settle(session, batch, delivery, attempts)

    def _lock_customer(self, session: Session, batch: UsageReportBatch, *, wait: bool) -> bool:
        """At most one request in flight per customer and meter, across runs and machines."""
        digest = hashlib.blake2b(
            f"{batch.stripe_customer_id}\0{batch.event_name}".encode(), digest_size=4
        ).digest()
        key = int.from_bytes(digest, "big", signed=True)
        params = {"namespace": _CUSTOMER_LOCK_NAMESPACE, "key": key}
        # The transaction that holds the lock ends in _settle's commit, which
        # may skip waiting for the disk: if the database lost it in a crash,
        # the batch would simply be pending again and be resent with the same
        # identifier, which Stripe recognises. (The claim's commit, written
        # before Stripe is called, always waits.) Set here to save a round trip.
        no_wait = "set_config('synchronous_commit', 'off', true)"
        if wait:
            session.execute(
                text(f"SELECT pg_advisory_xact_lock(:namespace, :key), {no_wait}"), params
            )
            return True
        acquired = session.scalar(
            text(f"SELECT pg_try_advisory_xact_lock(:namespace, :key), {no_wait}"), params
        )
        return bool(acquired)

    def _deliver(self, batch: UsageReportBatch) -> tuple[Delivery, int]:
        """Send the batch's meter event, retrying what may be retried within the budget."""
        event = MeterEvent(
            event_name=batch.event_name,
            stripe_customer_id=batch.stripe_customer_id,
            value=batch.value,
            identifier=batch.identifier,
            timestamp=int(batch.meter_timestamp.timestamp()),
        )
        attempts = 0
        while True:
            delivery = self.gateway.send(event)
            attempts += 1
            if delivery.status is not DeliveryStatus.RETRYABLE:
                return delivery, attempts
            if attempts >= self.options.max_attempts:
                return delivery, attempts
            delay = self._backoff(attempts, delivery.retry_after)
            if delay >= self.remaining():
                return delivery, attempts
            self.count(retried=1)
            self.sleep(delay)

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter, never shorter than Stripe's ``Retry-After``."""
        ceiling = min(self.options.backoff_max, self.options.backoff_base * 2 ** (attempts - 1))
        delay = self.random.uniform(ceiling / 2, ceiling)
        return max(delay, retry_after or 0.0)

    def _settle(
        self, session: Session, batch: UsageReportBatch, delivery: Delivery, attempts: int
    ) -> None:
        """Write down what Stripe answered, and commit (which releases the batch's locks)."""
        now = self.now()
        with self.lock:
            self.tried.add(batch.id)
        batch.attempts += attempts
        batch.last_attempt_at = now
        batch.last_run_id = self.run_id
        batch.last_http_status = delivery.http_status
        if delivery.request_id:
            batch.stripe_request_id = delivery.request_id
        status = delivery.status
        if status in (DeliveryStatus.ACCEPTED, DeliveryStatus.DUPLICATE):
            reported = batch.event_count  # they are reported with it
            batch.status = "sent"
            batch.sent_at = now
            batch.last_error = (
                None
                if status is DeliveryStatus.ACCEPTED
                else f"delivered by an earlier attempt: {delivery.describe()}"
            )
            self.count(batches_sent=1, events_reported=reported, value_sent=batch.value)
            self.progress(reported)
        elif status is DeliveryStatus.REJECTED:
            self._fail(
                session, batch, f"Stripe refused the meter event: {delivery.describe()}", now
            )
        elif status is DeliveryStatus.UNAUTHORIZED:
            batch.last_error = f"Stripe refused the API key: {delivery.describe()}"
            self.error = (
                f"Stripe refused STRIPE_API_KEY ({delivery.describe()}); nothing more was sent "
                "and the batch stays pending"
            )
        else:
            batch.last_error = f"will be sent again: {delivery.describe()}"
        session.commit()

    def _fail(self, session: Session, batch: UsageReportBatch, reason: str, now: datetime) -> None:
        # Its events stay with it, unreported, until the batch is recovered.
        batch.status = "failed"
        batch.failed_at = now
        batch.last_error = reason
        batch.last_run_id = self.run_id
        self.count(failed=1)
        self.progress(batch.event_count)


def listed_event_ids(table: str) -> str:
    """SQL for (``event_id``, ``owner``): every usage event listed by a row of ``table``.

    ``table`` is ``usage_report_batches`` or ``usage_report_skips``; ``owner``
    is the listing row's id.
    """
    return (
        f"SELECT CAST(j.value AS uuid) AS event_id, t.id AS owner FROM {table} AS t, "
        "json_array_elements_text(t.event_ids) AS j"
    )


# The claim in one statement: lock a chunk of the backlog (in its index's
# order, so each customer's usage lands in few, large batches) and delete it,
# classify its events as skip_reason() does, write the unbillable ones as
# skips and group the rest into one batch per customer and period with its
# events' ids; groups too old to send are failed at once. meter_timestamp is
# meter_timestamp()'s rule. Nothing per event comes back. A chunk another
# claim has locked is skipped; one it has deleted and committed is gone: each
# backlog row is taken once.
_CLAIM_SQL = """
WITH locked AS (
    SELECT ctid AS position FROM usage_report_backlog
    ORDER BY organization_id, user_id, period_start
    LIMIT :limit
    FOR UPDATE SKIP LOCKED
),
taken AS (
    DELETE FROM usage_report_backlog
    WHERE ctid = ANY(ARRAY(SELECT position FROM locked))
    RETURNING event_id
),
picked AS (
    -- One primary-key lookup per event. Given a join, the planner scans the
    -- whole table once thousands of ids come in; OFFSET 0 keeps the lateral
    -- lookup from being turned into such a join.
    SELECT e.*
    FROM taken,
    LATERAL (
        SELECT id, organization_id, user_id, quantity, occurred_at, period_start, period_end,
            event_type, plan_id
        FROM usage_events
        WHERE id = taken.event_id
        OFFSET 0
    ) AS e
),
customers AS (
    SELECT p.*, CASE WHEN p.organization_id IS NULL THEN s.stripe_customer_id
            ELSE o.stripe_customer_id END AS customer
    FROM picked AS p
    LEFT JOIN user_subscriptions AS s ON p.organization_id IS NULL AND s.user_id = p.user_id
    LEFT JOIN organizations AS o ON o.id = p.organization_id
),
classified AS (
    SELECT id, quantity, occurred_at, period_start, period_end, customer,
        occurred_at < :cutoff AS too_old,
        CASE
            WHEN event_type <> ALL(CAST(:billable_types AS text[])) THEN 'not_billable'
            WHEN plan_id <> ALL(CAST(:paid_plans AS text[])) THEN 'free_plan'
            WHEN COALESCE(customer, '') = '' THEN 'no_customer'
        END AS skip_reason
    FROM customers
),
skips AS (
    INSERT INTO usage_report_skips (reason, run_id, created_at, event_count, value,
        oldest_occurred_at, latest_occurred_at, event_ids)
    SELECT skip_reason, :run_id, :now, COUNT(*), SUM(quantity), MIN(occurred_at),
        MAX(occurred_at), json_agg(id)
    FROM classified
    WHERE skip_reason IS NOT NULL
    GROUP BY skip_reason
    RETURNING reason, event_count
),
grouped AS (
    SELECT customer, period_start, period_end, too_old, SUM(quantity) AS value,
        COUNT(*) AS event_count, MAX(occurred_at) AS latest, MIN(occurred_at) AS oldest,
        json_agg(id) AS event_ids
    FROM classified
    WHERE skip_reason IS NULL
    GROUP BY customer, period_start, period_end, too_old
),
batches AS (
    INSERT INTO usage_report_batches (identifier, stripe_customer_id, event_name, period_start,
        period_end, value, event_count, meter_timestamp, status, attempts, created_at,
        queued_at, created_run_id, last_run_id, failed_at, last_error, event_ids)
    SELECT :prefix || replace(CAST(gen_random_uuid() AS text), '-', ''), customer,
        :event_name, period_start, period_end, value, event_count,
        to_timestamp(GREATEST(
            ceil(extract(epoch FROM period_start)),
            LEAST(
                floor(extract(epoch FROM latest)),
                floor(extract(epoch FROM CAST(:now AS timestamptz))),
                ceil(extract(epoch FROM period_end)) - 1
            )
        )),
        CASE WHEN too_old THEN 'failed' ELSE 'pending' END, 0, :now, :now, :run_id, :run_id,
        CASE WHEN too_old THEN CAST(:now AS timestamptz) END,
        CASE WHEN too_old THEN format(:too_old_reason, event_count,
            to_char(oldest AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')) END,
        event_ids
    FROM grouped
    ORDER BY customer, period_start, too_old
    RETURNING status, event_count
)
SELECT 'claimed', NULL, (SELECT COUNT(*) FROM taken)
UNION ALL SELECT 'skipped', reason, event_count FROM skips
UNION ALL SELECT 'failed_batches', NULL, COUNT(*) FROM batches WHERE status = 'failed'
UNION ALL SELECT 'failed_events', NULL, COALESCE(SUM(event_count), 0) FROM batches
    WHERE status = 'failed'
"""


CLAIM = text(_CLAIM_SQL).columns(kind=String(), reason=String(), count=Integer())


__all__ = [
    "DEDUPE_SAFE_AGE",
    "STRIPE_MAX_EVENT_AGE",
    "ReportOptions",
    "ReportSummary",
    "SkipReason",
    "meter_timestamp",
    "report_usage",
    "requeue_failed_batches",
    "requeue_unbilled",
    "skip_reason",
]
