"""Helpers for the reporter's tests: recording usage, running the reporter, checking Stripe."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.billing.gateway import MeterEventGateway
from portal.billing.reporter import ReportOptions, ReportSummary, report_usage
from portal.models import (
    Organization,
    UsageEvent,
    UsageReportBatch,
    UsageReportSkip,
    User,
    usage_report_backlog,
)
from portal.usage import record_usage
from tests.factories import NOW, FrozenClock
from tests.stripe_standin import StripeStandIn

API_KEY = "sk_test_standin0123456789abcdef"
CLIENT_TIMEOUT = 0.3
"""Seconds; the stand-in's slow replies take longer."""
Clock = FrozenClock
"""The test's clock, which the stand-in reads as Stripe's."""


def run_reporter(
    session: Session,
    gateway: MeterEventGateway,
    now: datetime = NOW,
    *,
    sleep: Callable[[float], None] = time.sleep,
    monotonic: Callable[[], float] = time.monotonic,
    **options: Any,
) -> ReportSummary:
    """One reporter run with quick backoff, so retries cost milliseconds."""
    settings: dict[str, Any] = {"backoff_base": 0.01, "backoff_max": 0.05, "worker": "test"}
    settings.update(options)
    return report_usage(
        session, gateway, now, ReportOptions(**settings), sleep=sleep, monotonic=monotonic
    )


def customer_of(user: User | Organization) -> str:
    if isinstance(user, Organization):
        assert user.stripe_customer_id
        return user.stripe_customer_id
    assert user.subscription is not None and user.subscription.stripe_customer_id
    return user.subscription.stripe_customer_id


class Usage:
    """Records usage through the real recording code and keeps the expected bill."""

    def __init__(self, session: Session, now: datetime = NOW) -> None:
        self.session = session
        self.now = now
        self.expected: Counter[str] = Counter()
        self._keys = 0

    def record(
        self,
        user: User,
        quantity: int = 1,
        *,
        billed_to: str | None = None,
        occurred_at: datetime | None = None,
        event_type: str = "suggestion",
        now: datetime | None = None,
    ) -> None:
        """Record usage; ``billed_to`` is the customer it must reach (None: not billable)."""
        self._keys += 1
        record_usage(
            self.session,
            user.id,
            idempotency_key=f"usage-{self._keys}",
            now=now or self.now,
            quantity=quantity,
            occurred_at=occurred_at,
            event_type=event_type,
        )
        self.session.commit()
        if billed_to is not None:
            self.expected[billed_to] += quantity


def report_states(session: Session) -> dict[uuid.UUID, str]:
    """Where each usage event stands, read from where the reporter keeps it.

    ``pending`` (in the backlog), ``claimed`` (in a pending batch),
    ``reported`` (in a sent batch), ``failed`` (in a failed batch) or
    ``skipped:<reason>``. Fails if an event is in two places, or in none.
    """
    session.expire_all()
    states: dict[uuid.UUID, str] = {}

    def put(event_id: object, state: str) -> None:
        key = uuid.UUID(str(event_id))
        assert key not in states, f"event {key} is {states[key]} and {state} at once"
        states[key] = state

    for event_id in session.scalars(select(usage_report_backlog.c.event_id)):
        put(event_id, "pending")
    batch_state = {"pending": "claimed", "sent": "reported", "failed": "failed"}
    for status, event_ids in session.execute(
        select(UsageReportBatch.status, UsageReportBatch.event_ids)
    ):
        for event_id in event_ids:
            put(event_id, batch_state[status])
    for reason, event_ids in session.execute(
        select(UsageReportSkip.reason, UsageReportSkip.event_ids).where(
            UsageReportSkip.requeued_at.is_(None)
        )
    ):
        for event_id in event_ids:
            put(event_id, f"skipped:{reason}")
    recorded = set(session.scalars(select(UsageEvent.id)))
    assert set(states) == recorded, f"events nowhere: {recorded - set(states)}"
    return states


def events_by_state(session: Session) -> dict[str, int]:
    """How many usage events stand where (``report_states``), skips counted together."""
    return dict(Counter(state.partition(":")[0] for state in report_states(session).values()))


def assert_exactly_once(session: Session, standin: StripeStandIn, expected: Counter[str]) -> None:
    """Stripe holds exactly the billable usage, each event counted in exactly one sent batch."""
    session.expire_all()
    assert standin.totals() == dict(expected)
    batches = session.scalars(select(UsageReportBatch)).all()
    sent = {b.id: b for b in batches if b.status == "sent"}
    # Every event Stripe holds is one of our sent batches, and vice versa.
    assert {e.identifier for e in standin.events} == {b.identifier for b in sent.values()}
    for event in standin.events:
        batch = next(b for b in sent.values() if b.identifier == event.identifier)
        assert (event.stripe_customer_id, event.value) == (batch.stripe_customer_id, batch.value)
        assert batch.period_start.timestamp() <= event.timestamp < batch.period_end.timestamp()
    # Every event is in one place (report_states checks it); none is left
    # unsettled; each sent batch's value is the sum of the events it lists.
    states = report_states(session)
    assert not {state for state in states.values() if state in ("pending", "claimed", "failed")}
    quantities = {event.id: event.quantity for event in session.scalars(select(UsageEvent))}
    for batch in sent.values():
        listed = [uuid.UUID(str(event_id)) for event_id in batch.event_ids]
        assert len(listed) == batch.event_count
        assert sum(quantities[event_id] for event_id in listed) == batch.value
