"""Stripe's webhook events: each handled once, in whatever order they come.

Stripe delivers every event at least once, in no promised order, and
retries for days. So:

- each event's id is kept (``stripe_events``): a replay answers as before
  and changes nothing;
- an event about a subscription is not applied as it was when the event was
  made: the subscription's current state is fetched from Stripe and applied.
  An older event arriving after a newer one then applies the newer state
  again, which changes nothing, instead of undoing it; and an event about a
  subscription its subject no longer follows (an old, canceled one; the older
  of two paid Checkouts) is ``ignored`` by ``subscriptions.supersedes``, the
  rule ``flask sync-subscriptions`` applies too;
- an event about a customer the portal does not know is acknowledged and
  kept as ``unmatched`` for an operator (``flask stripe-status``);
- a delivery is answered within a second (Stripe counts a slow answer as a
  failure): it asks Stripe once (``OneRequest``), with a short timeout. When
  Stripe cannot be asked, or would have to be asked twice, the event stays
  ``pending`` and the delivery is acknowledged all the same; ``flask
  sync-subscriptions`` (``--pending-only``, every few minutes) then handles it
  (``handle_pending_events``: the event fetched from Stripe, then handled
  exactly as a delivery is).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from portal.billing.gateway import StripeUnavailable
from portal.billing.subscriptions import (
    Applied,
    NotUnderstood,
    Outcome,
    SubjectRef,
    SubscriptionSource,
    apply_subscription,
    read_subscription,
)
from portal.models import STRIPE_EVENT_OUTCOMES, StripeEvent

SUBSCRIPTION_EVENTS = (
    "customer.subscription.created",
    "customer.subscription.updated",
    "customer.subscription.deleted",
    "customer.subscription.trial_will_end",
)
CHECKOUT_COMPLETED = "checkout.session.completed"


@dataclass(frozen=True)
class Handled:
    """What became of one delivery."""

    outcome: str
    """``applied``, ``unchanged``, ``ignored``, ``unmatched``, ``failed``, ``replayed``, or
    ``pending`` (Stripe could not be asked: left for ``sync-subscriptions``)."""
    message: str = ""


class OneRequest:
    """Stripe for one webhook delivery: a single request, then ``StripeUnavailable``.

    Handling an event takes one request (the subscription's current state);
    a second is needed only when a subject holds another live subscription
    (``subscriptions.supersedes``). Rather than risk a second timeout inside
    the second Stripe waits for, that rare event is left pending for
    ``sync-subscriptions``.
    """

    def __init__(self, stripe: SubscriptionSource) -> None:
        self._stripe = stripe
        self._asked = False

    def retrieve_subscription(self, subscription_id: str) -> Mapping[str, Any] | None:
        if self._asked:
            raise StripeUnavailable("a delivery asks Stripe once; sync-subscriptions finishes it")
        self._asked = True
        return self._stripe.retrieve_subscription(subscription_id)


def handle_event(
    session: Session, event: Mapping[str, Any], stripe: SubscriptionSource, now: datetime
) -> Handled:
    """Handle one verified event, once; the caller commits.

    ``pending`` when Stripe could not be asked: the row stays pending, for
    ``handle_pending_events``.
    """
    record = _record(session, event, now)
    if record is None:
        return Handled("replayed")
    obj = event.get("data", {}).get("object", {})
    named: SubjectRef | None = None
    if record.type == CHECKOUT_COMPLETED:
        subscription_id = obj.get("subscription")
        named = SubjectRef.parse(obj.get("client_reference_id"))
        record.stripe_customer_id = obj.get("customer")
    elif record.type in SUBSCRIPTION_EVENTS:
        subscription_id = obj.get("id")
        record.stripe_customer_id = obj.get("customer")
    else:
        return _settle(record, "ignored", now, "not an event the portal follows")
    if not isinstance(subscription_id, str):
        return _settle(record, "ignored", now, "no subscription")
    record.stripe_subscription_id = subscription_id
    try:
        current = stripe.retrieve_subscription(subscription_id)
        if current is None:
            # Stripe no longer has it (test data deleted, say): the event's copy is all there is.
            current = obj if record.type in SUBSCRIPTION_EVENTS else None
        if current is None:
            return _settle(record, "failed", now, f"Stripe does not know {subscription_id}")
        try:
            subscription = read_subscription(current)
        except NotUnderstood as error:
            return _settle(record, "failed", now, str(error))
        applied = apply_subscription(session, subscription, stripe, now, named=named)
    except StripeUnavailable as error:
        # Nothing is written before Stripe answers; the row stays pending.
        record.message = f"Stripe could not be asked: {error}"[:2000]
        return Handled("pending", record.message)
    return _settle(record, str(applied.outcome), now, _describe(applied))


class EventSource(SubscriptionSource, Protocol):
    def retrieve_event(self, event_id: str) -> Mapping[str, Any] | None:
        """The event as Stripe keeps it (30 days); ``None`` if Stripe does not know it.

        Raises ``StripeUnavailable`` when Stripe cannot be asked.
        """
        ...


@dataclass
class PendingHandled:
    """What became of the events that were still pending."""

    outcomes: Counter[str] = field(default_factory=Counter)
    """Events per outcome, as ``handle_event`` names them."""
    left: list[str] = field(default_factory=list)
    """One line per event still pending: Stripe could not be asked again."""


def handle_pending_events(session: Session, stripe: EventSource, now: datetime) -> PendingHandled:
    """Handle each event still pending, exactly as its delivery would have; the caller commits.

    An event stays pending when Stripe could not be asked while its delivery
    was handled. Each is fetched from Stripe again (its copy carries what
    the delivery carried: the Checkout's subject) and goes through
    ``handle_event``, which fetches its subscription's current state and
    records the real outcome. Rows a delivery is handling right now are
    locked, and skipped: that delivery settles them. One Stripe cannot be
    asked about stays pending, and is listed in ``left``.
    """
    handled = PendingHandled()
    pending = session.scalars(
        select(StripeEvent.id)
        .where(StripeEvent.outcome == "pending")
        .order_by(StripeEvent.created_at, StripeEvent.id)
        .with_for_update(skip_locked=True)
    ).all()
    for event_id in pending:
        try:
            with session.begin_nested():
                event = stripe.retrieve_event(event_id)
                if event is None:
                    record = session.get(StripeEvent, event_id)
                    assert record is not None  # locked above
                    result = _settle(
                        record, "failed", now, "Stripe no longer has this event (30 days)"
                    )
                else:
                    result = handle_event(session, event, stripe, now)
        except StripeUnavailable as error:
            result = Handled("pending", f"Stripe could not be asked: {error}")
        if result.outcome == "pending":
            handled.left.append(f"{event_id}: still pending, {result.message}")
        else:
            handled.outcomes[result.outcome] += 1
    return handled


def _record(session: Session, event: Mapping[str, Any], now: datetime) -> StripeEvent | None:
    """The event's row, new or still pending; ``None`` when it was handled before."""
    created = datetime.fromtimestamp(int(event.get("created") or 0), UTC)
    session.execute(
        insert(StripeEvent)
        .values(
            id=str(event["id"]),
            type=str(event.get("type", ""))[:100],
            created_at=created,
            received_at=now,
            outcome="pending",
        )
        .on_conflict_do_nothing(index_elements=["id"])
    )
    record = session.scalars(
        select(StripeEvent).where(StripeEvent.id == str(event["id"])).with_for_update()
    ).one()
    return record if record.outcome == "pending" else None


def _settle(record: StripeEvent, outcome: str, now: datetime, message: str) -> Handled:
    record.outcome = "applied" if outcome == Outcome.UNCHANGED else outcome
    record.processed_at = now
    record.message = message[:2000] or None
    return Handled(outcome, message)


def _describe(applied: Applied) -> str:
    if applied.message:
        return applied.message
    changed = ", ".join(
        f"{name} {before} -> {after}" for name, (before, after) in applied.changes.items()
    )
    return f"{applied.subject}: {changed or 'no change'}"


RECENT = timedelta(days=30)
"""How far back ``flask stripe-status`` counts: as far as Stripe's own event list goes."""


@dataclass(frozen=True)
class EventSummary:
    """Where webhook handling stands, for ``flask stripe-status``."""

    since: datetime
    outcomes: dict[str, int]
    """Events received since ``since``, per outcome."""
    last: StripeEvent | None
    attention: list[StripeEvent]
    """Recent events an operator should look at: unmatched, failed or still pending."""

    def as_dict(self) -> dict[str, Any]:
        def event(row: StripeEvent) -> dict[str, Any]:
            return {
                "id": row.id,
                "type": row.type,
                "received_at": row.received_at.isoformat(),
                "outcome": row.outcome,
                "stripe_customer_id": row.stripe_customer_id,
                "stripe_subscription_id": row.stripe_subscription_id,
                "message": row.message,
            }

        return {
            "since": self.since.isoformat(),
            "outcomes": self.outcomes,
            "last_event": event(self.last) if self.last is not None else None,
            "needs_attention": [event(row) for row in self.attention],
        }


def event_summary(session: Session, now: datetime, *, shown: int = 20) -> EventSummary:
    """The last 30 days of webhook events: counts, the last one, and those needing a person."""
    since = now - RECENT
    counts = session.execute(
        select(StripeEvent.outcome, func.count())
        .where(StripeEvent.received_at >= since)
        .group_by(StripeEvent.outcome)
    ).all()
    last = session.scalars(
        select(StripeEvent).order_by(StripeEvent.received_at.desc()).limit(1)
    ).first()
    attention = session.scalars(
        select(StripeEvent)
        .where(
            StripeEvent.received_at >= since,
            StripeEvent.outcome.in_(("unmatched", "failed", "pending")),
        )
        .order_by(StripeEvent.received_at.desc())
        .limit(shown)
    ).all()
    outcomes = {outcome: 0 for outcome in STRIPE_EVENT_OUTCOMES}
    outcomes.update({outcome: int(count) for outcome, count in counts})
    return EventSummary(since, outcomes, last, list(attention))
