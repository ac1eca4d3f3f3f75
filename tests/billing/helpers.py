"""Helpers for the reporter's tests: recording usage, running the reporter, checking Stripe."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.billing.gateway import MeterEventGateway
from portal.billing.reporter import ReportOptions, ReportSummary, report_usage
from portal.models import Organization, UsageEvent, UsageReportBatch, User
from portal.usage import record_usage
from tests.factories import T0
from tests.stripe_standin import StripeStandIn

API_KEY = "sk_test_standin0123456789abcdef"
CLIENT_TIMEOUT = 0.3
"""Seconds; the stand-in's slow replies take longer."""
NOW = T0 + timedelta(days=3)


@dataclass
class Clock:
    """A settable "now" for the stand-in."""

    now: datetime

    def __call__(self) -> datetime:
        return self.now


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
    # Every billable event is reported, through exactly one sent batch whose sum includes it.
    billable = session.scalars(
        select(UsageEvent).where(UsageEvent.report_batch_id.is_not(None))
    ).all()
    assert all(e.report_status == "batched" and e.stripe_reported_at for e in billable)
    assert all(e.report_batch_id in sent for e in billable)
    per_batch = Counter[int]()
    for event in billable:
        assert event.report_batch_id is not None
        per_batch[event.report_batch_id] += event.quantity
    assert per_batch == Counter({b.id: b.value for b in sent.values()})
    unsettled = session.scalar(
        select(func.count())
        .select_from(UsageEvent)
        .where(
            (UsageEvent.report_status == "pending")
            | ((UsageEvent.report_status == "batched") & UsageEvent.stripe_reported_at.is_(None))
        )
    )
    assert unsettled == 0
