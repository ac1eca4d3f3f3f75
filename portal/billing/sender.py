"""The send loop: each pending batch to Stripe as one meter event, and its answer written down.

A sender locks the next pending batch (``FOR UPDATE SKIP LOCKED``) and its
customer and meter (an advisory lock), sends the batch's meter event with
the batch's identifier, retrying within the run's time budget, and settles
the batch (sent, failed or still pending) in the transaction that holds
those locks.

A run may have several senders (``--senders``): threads with a connection
each, so one batch's request is in flight while the next goes out, and the
run claims its next chunk while the senders send the last one. They take
batches exactly as two runs would: each batch row locked by the sender that
has it, each customer and meter by the advisory lock.
"""

from __future__ import annotations

import hashlib
import math
import random
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select, text
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session

from portal.billing.gateway import Delivery, DeliveryStatus, MeterEvent, MeterEventGateway
from portal.billing.rules import DEDUPE_SAFE_AGE, SEND_AGE_MARGIN, STRIPE_MAX_EVENT_AGE
from portal.billing.run_state import RunState
from portal.models import UsageReportBatch

LOCK_NOT_AVAILABLE = "55P03"
"""PostgreSQL's answer when ``lock_timeout`` ran out."""
# Advisory-lock namespace for "one request in flight per customer and meter".
_CUSTOMER_LOCK_NAMESPACE = 0x5553_4147  # "USAG"


class Senders:
    """One run's senders, and the batches they have looked at. Used by one run only."""

    def __init__(
        self,
        session: Session,
        gateway: MeterEventGateway,
        state: RunState,
        *,
        senders: int,
        max_attempts: int,
        backoff_base: float,
        backoff_max: float,
        sleep: Callable[[float], None],
    ) -> None:
        self.session = session
        """The run's own session: the only sender's, and the one deferred batches are sent on."""
        self.gateway = gateway
        self.state = state
        self.senders = senders
        self.max_attempts = max_attempts
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.sleep = sleep
        self.random = random.Random()
        self.cursor = 0
        """Highest batch id this run has looked at: each batch is handled once per run."""
        self.deferred: list[int] = []
        """Batches skipped because another run was sending to the same customer."""
        self.tried: set[int] = set()
        """Batches this run sent (or tried to send) to Stripe."""
        self.lock = threading.Lock()
        """Guards the state above while several senders share it."""
        self._sessions: list[Session] = []

    # -- senders ---------------------------------------------------------

    def send_pending(self) -> None:
        """Send every pending batch after ``cursor``, oldest first, within the budget.

        With several senders, each sends on a connection of its own, in a
        thread: while one waits for Stripe or for the database to write a
        sent batch's events, the others go on. They share nothing but the
        cursor and counters; each batch is locked by the one sending it and
        each customer by an advisory lock, exactly as between two runs.
        """
        sessions = self.sessions()
        if len(sessions) == 1:
            self._send_loop(sessions[0])
            return
        with ThreadPoolExecutor(len(sessions), thread_name_prefix="report-usage") as pool:
            futures = [pool.submit(self._send_loop, session) for session in sessions]
        for future in futures:
            future.result()  # a sender's exception ends the run, as it would with one

    def sessions(self) -> list[Session]:
        """The sessions to send on: the run's own for one sender, else one per sender.

        Each extra sender gets a plain session of its own on the same engine:
        the caller's may be scoped to this thread (Flask-SQLAlchemy's is).
        """
        if not self._sessions:
            bind = self.session.get_bind()
            # A session bound to a connection (not an engine) cannot be shared out.
            if self.senders > 1:
                if isinstance(bind, Engine):
                    for _ in range(self.senders):
                        self._sessions.append(Session(bind=bind))
            if not self._sessions:
                self._sessions.append(self.session)
        return self._sessions

    def have_own_connections(self) -> bool:
        """Whether the senders send on connections of their own, none on the run's."""
        return all(session is not self.session for session in self.sessions())

    def close(self) -> None:
        for session in self._sessions:
            if session is not self.session:
                session.close()

    def _send_loop(self, session: Session) -> None:
        try:
            while self.state.going():
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
                UsageReportBatch.created_run_id == self.state.run_id,
            )
        ).all()
        session.rollback()
        with self.lock:
            tried = set(self.tried)
        left = [batch_id for batch_id in own if batch_id not in tried]
        for batch_id in dict.fromkeys([*self.deferred, *left]):
            if not self.state.going():
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

    # -- one batch -------------------------------------------------------

    def _limit_lock_waits(self, session: Session) -> None:
        """Make this transaction's lock waits give up when the time budget ends."""
        timeout = f"{max(1, math.ceil(self.state.remaining() * 1000))}ms"
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
        now = self.state.now()
        oldest_allowed = now - STRIPE_MAX_EVENT_AGE + SEND_AGE_MARGIN
        if batch.meter_timestamp < oldest_allowed:
            self._fail(
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
                batch,
                f"pending since {batch.queued_at:%Y-%m-%d %H:%M} UTC, longer than Stripe is sure "
                f"to remember identifiers (24 h); if an earlier attempt reached Stripe, sending "
                f"it again would bill it twice. Look for identifier {batch.identifier} among the "
                "customer's meter events at Stripe before recovering it "
                "(docs/operations.md: Recovering failed batches)",
                now,
            )
            session.commit()
            return
        if not self._lock_customer(session, batch, wait=wait_for_customer):
            session.rollback()
            with self.lock:
                self.deferred.append(batch.id)
            return
        if self.state.remaining() <= 0:
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
            if attempts >= self.max_attempts:
                return delivery, attempts
            delay = self._backoff(attempts, delivery.retry_after)
            if delay >= self.state.remaining():
                return delivery, attempts
            self.state.count(retried=1)
            self.sleep(delay)

    def _backoff(self, attempts: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter, never shorter than Stripe's ``Retry-After``."""
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** (attempts - 1))
        delay = self.random.uniform(ceiling / 2, ceiling)
        return max(delay, retry_after or 0.0)

    def _settle(
        self, session: Session, batch: UsageReportBatch, delivery: Delivery, attempts: int
    ) -> None:
        """Write down what Stripe answered, and commit (which releases the batch's locks)."""
        now = self.state.now()
        with self.lock:
            self.tried.add(batch.id)
        batch.attempts += attempts
        batch.last_attempt_at = now
        batch.last_run_id = self.state.run_id
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
            self.state.count(batches_sent=1, events_reported=reported, value_sent=batch.value)
            self.state.progress(reported)
        elif status is DeliveryStatus.REJECTED:
            self._fail(batch, f"Stripe refused the meter event: {delivery.describe()}", now)
        elif status is DeliveryStatus.UNAUTHORIZED:
            batch.last_error = f"Stripe refused the API key: {delivery.describe()}"
            self.state.error = (
                f"Stripe refused STRIPE_API_KEY ({delivery.describe()}); nothing more was sent "
                "and the batch stays pending"
            )
        else:
            batch.last_error = f"will be sent again: {delivery.describe()}"
        session.commit()

    def _fail(self, batch: UsageReportBatch, reason: str, now: datetime) -> None:
        # Its events stay with it, unreported, until the batch is recovered.
        batch.status = "failed"
        batch.failed_at = now
        batch.last_error = reason
        batch.last_run_id = self.state.run_id
        self.state.count(failed=1)
        self.state.progress(batch.event_count)
