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
marked failed for a person to check (see docs/operations.md, "Recovering failed batches").

Reporting never writes a usage event: in that wide table with large indexes,
marking each reported event (as earlier versions did) rewrote the row and an
entry in every index, and was most of a run's time.

Sending may use several senders (``--senders``), on a connection each, and
the run claims its next chunk while they send the last one. They take
batches exactly as two runs would (see ``sender``).

Memory is bounded by the batch size: events are claimed chunk by chunk, and
only counters outlive a chunk (the events never leave the database at all).

This module is one run: its row in ``usage_report_runs``, its steps in
order, its summary. The steps live beside it: ``claim`` (1), ``sender`` (2
and 3), ``rules`` (what is billable, Stripe's windows) and ``recovery``
(what a person does about failed and unbilled usage).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from portal.billing.claim import claim_chunk
from portal.billing.gateway import MeterEventGateway
from portal.billing.recovery import requeue_failed_batches
from portal.billing.run_state import RunState
from portal.billing.sender import Senders
from portal.billing.settings import DEFAULT_METER_EVENT_NAME
from portal.models import UsageReportBatch, UsageReportRun

DEFAULT_BATCH_SIZE = 10_000
MAX_BATCH_SIZE = 100_000
DEFAULT_MAX_SECONDS = 240.0
"""Four minutes, so a run started every five minutes is done before the next."""
DEFAULT_MAX_ATTEMPTS = 4
"""HTTP attempts per batch within one run; a batch still failing waits for the next run."""
MAX_SENDERS = 16
DEFAULT_SENDERS = 1
DEFAULT_CLI_SENDERS = 4
"""``flask report-usage`` sends with four connections: a sent batch's events are written
while the next batches go to Stripe."""


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
    """One run: its row, its steps in order, and its summary. Used once, by ``report_usage``."""

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
        self.options = options
        self.state = RunState(now, options.max_seconds, monotonic, on_progress)
        self.senders = Senders(
            session,
            gateway,
            self.state,
            senders=options.senders,
            max_attempts=options.max_attempts,
            backoff_base=options.backoff_base,
            backoff_max=options.backoff_max,
            sleep=sleep,
        )

    def execute(self) -> ReportSummary:
        session = self.session
        state = self.state
        session.commit()  # start from a clean transaction: the claims need it
        run = UsageReportRun(
            started_at=state.started, worker=self.options.worker or "unknown", outcome="running"
        )
        session.add(run)
        session.commit()
        state.run_id = run.id
        try:
            if self.options.retry_failed:
                state.count(requeued=requeue_failed_batches(session, state.now()))
                session.commit()
            # Batches left pending by earlier runs go first: they are the oldest usage.
            self.senders.send_pending()
            # Claims need not wait for senders that have connections of their own.
            if self.senders.have_own_connections():
                self.claim_while_sending()
            else:
                while state.going():
                    room = self.room()
                    if room <= 0 or self.claim(room) == 0:
                        break
                    self.senders.send_pending()
            self.senders.send_deferred()
        except BaseException as error:
            try:
                session.rollback()
                self.finish(f"{type(error).__name__}: {error}", outcome="error")
            except Exception:  # noqa: S110 - the database may be what failed: keep its error
                pass
            raise
        finally:
            self.senders.close()
        return self.finish(None)

    def room(self) -> int:
        """How many events the next claim may take (``--batch-size``, within ``--limit``)."""
        room = self.options.batch_size
        if self.options.limit is not None:
            room = min(room, self.options.limit - self.state.counts["claimed"])
        return room

    def claim(self, size: int) -> int:
        """Claim up to ``size`` backlog events; how many left the backlog (0 when it is empty)."""
        return claim_chunk(self.session, self.state, self.options.event_name, size)

    def claim_while_sending(self) -> None:
        """Claim the next chunk while the senders send the last one.

        A claim is one long statement on one connection; run in turn with
        sending, it would leave the other CPU idle for a third of the run. The
        two never need each other: senders only see a claim's batches once it
        has committed them, exactly as with two runs at once.
        """
        with ThreadPoolExecutor(1, thread_name_prefix="report-usage-sending") as pool:
            while self.state.going():
                room = self.room()
                if room <= 0:
                    break
                sending = pool.submit(self.senders.send_pending)
                try:
                    claimed = self.claim(room)
                finally:
                    sending.result()  # a sender's exception ends the run here
                if claimed == 0:
                    break
        self.senders.send_pending()  # what the last claim took

    def finish(self, crash: str | None, outcome: str | None = None) -> ReportSummary:
        """Write the run's outcome and counters in its row, and sum it up."""
        session = self.session
        state = self.state
        pending = 0
        if crash is None:
            # Ours and still pending, unless another run is sending it right now
            # (it holds the row): that run answers for it in its own summary.
            pending = len(
                session.scalars(
                    select(UsageReportBatch.id)
                    .where(
                        UsageReportBatch.status == "pending",
                        (UsageReportBatch.created_run_id == state.run_id)
                        | (UsageReportBatch.last_run_id == state.run_id),
                    )
                    .with_for_update(skip_locked=True)
                ).all()
            )
            session.rollback()
        c = state.counts
        summary = ReportSummary(
            claimed=c["claimed"],
            batches_sent=c["batches_sent"],
            events_reported=c["events_reported"],
            value_sent=c["value_sent"],
            skipped=sum(state.skipped_reasons.values()),
            skipped_reasons=dict(state.skipped_reasons),
            failed=c["failed"],
            retried=c["retried"],
            pending=pending,
            requeued=c["requeued"],
            duration_s=state.elapsed(),
            error=state.error,
            run_id=state.run_id,
        )
        session.execute(
            update(UsageReportRun)
            .where(UsageReportRun.id == state.run_id)
            .values(
                finished_at=state.now(),
                outcome=outcome or summary.outcome,
                claimed=summary.claimed,
                batches_sent=summary.batches_sent,
                events_reported=summary.events_reported,
                skipped=summary.skipped,
                failed=summary.failed,
                retried=summary.retried,
                pending=summary.pending,
                message=crash or state.error,
            )
            .execution_options(synchronize_session=False)
        )
        session.commit()
        return summary


__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_CLI_SENDERS",
    "DEFAULT_MAX_SECONDS",
    "MAX_BATCH_SIZE",
    "MAX_SENDERS",
    "ReportOptions",
    "ReportSummary",
    "report_usage",
]
