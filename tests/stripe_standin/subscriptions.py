"""Subscriptions as Stripe keeps them, in the ``2026-10-28.endive`` shape.

Since the ``basil`` API versions the billing period lives on each subscription
item (``current_period_start``/``current_period_end``), not on the
subscription. Periods follow the billing cycle anchor: the n-th period starts n
intervals after it, the day clamped to the month's last (an anchor on Jan 31
gives Feb 28 or 29, then Mar 31 again, never Mar 28). During a trial the period
is the trial itself and the anchor is the trial's end.

The arithmetic is written apart from ``portal.periods`` on purpose: the
stand-in is what the portal's own periods are checked against.
"""

from __future__ import annotations

import calendar
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tests.stripe_standin.catalogue import price_view
from tests.stripe_standin.store import unix

STATUSES = (
    "trialing",
    "active",
    "past_due",
    "unpaid",
    "canceled",
    "incomplete",
    "incomplete_expired",
    "paused",
)
# Statuses in which Stripe no longer moves a subscription to a new period.
NOT_RENEWING = frozenset({"canceled", "incomplete", "incomplete_expired", "paused"})


def cycle_boundary(anchor: datetime, interval: str, n: int) -> datetime:
    """Where the n-th period after ``anchor`` starts, counted from the anchor itself.

    Counting from the anchor, never from the previous boundary, is what
    brings a Jan 31 anchor back to Mar 31 after a short February.
    """
    if interval in ("day", "week"):
        return anchor + timedelta(days=n * (7 if interval == "week" else 1))
    months = n * (12 if interval == "year" else 1)
    year, month0 = divmod(anchor.year * 12 + anchor.month - 1 + months, 12)
    day = min(anchor.day, calendar.monthrange(year, month0 + 1)[1])
    return anchor.replace(year=year, month=month0 + 1, day=day)


def next_boundary(anchor: datetime, interval: str, after: datetime) -> datetime:
    """The first period boundary of the anchor's cycle later than ``after``."""
    n = 0
    while (boundary := cycle_boundary(anchor, interval, n)) <= after:
        n += 1
    return boundary


@dataclass
class SubscriptionItem:
    id: str
    price: dict[str, Any]
    quantity: int | None
    """``None`` for a metered price, which Stripe bills by the meter, not by quantity."""
    created: datetime


@dataclass
class Subscription:
    id: str
    customer: str
    created: datetime
    billing_cycle_anchor: datetime
    current_period_start: datetime
    current_period_end: datetime
    items: list[SubscriptionItem]
    metadata: dict[str, str]
    status: str
    trial_start: datetime | None = None
    trial_end: datetime | None = None
    cancel_at_period_end: bool = False
    cancel_at: datetime | None = None
    canceled_at: datetime | None = None
    ended_at: datetime | None = None
    cancellation_reason: str | None = None

    @property
    def interval(self) -> str:
        interval: str = self.items[0].price["recurring"]["interval"]
        return interval

    def item(self, usage_type: str) -> SubscriptionItem | None:
        return next(
            (i for i in self.items if i.price["recurring"]["usage_type"] == usage_type), None
        )

    def start_period(self, start: datetime) -> None:
        """Begin the period starting at ``start``, which ends at the cycle's next boundary."""
        self.current_period_start = start
        self.current_period_end = next_boundary(self.billing_cycle_anchor, self.interval, start)

    def to_stripe(self) -> dict[str, Any]:
        """The subscription object as the API and webhooks show it."""
        return {
            "id": self.id,
            "object": "subscription",
            "application": None,
            "automatic_tax": {"enabled": False, "liability": None, "disabled_reason": None},
            "billing_cycle_anchor": unix(self.billing_cycle_anchor),
            "billing_cycle_anchor_config": None,
            "cancel_at": unix(self.cancel_at),
            "cancel_at_period_end": self.cancel_at_period_end,
            "canceled_at": unix(self.canceled_at),
            "cancellation_details": {
                "comment": None,
                "feedback": None,
                "reason": self.cancellation_reason,
            },
            "collection_method": "charge_automatically",
            "created": unix(self.created),
            "currency": "eur",
            "customer": self.customer,
            "days_until_due": None,
            "default_payment_method": None,
            "description": None,
            "discounts": [],
            "ended_at": unix(self.ended_at),
            "items": {
                "object": "list",
                "data": [self._item_view(item) for item in self.items],
                "has_more": False,
                "total_count": len(self.items),
                "url": f"/v1/subscription_items?subscription={self.id}",
            },
            "latest_invoice": None,
            "livemode": False,
            "metadata": dict(self.metadata),
            "pause_collection": None,
            "schedule": None,
            "start_date": unix(self.created),
            "status": self.status,
            "test_clock": None,
            "trial_end": unix(self.trial_end),
            "trial_settings": {"end_behavior": {"missing_payment_method": "create_invoice"}},
            "trial_start": unix(self.trial_start),
        }

    def _item_view(self, item: SubscriptionItem) -> dict[str, Any]:
        view: dict[str, Any] = {
            "id": item.id,
            "object": "subscription_item",
            "created": unix(item.created),
            "current_period_end": unix(self.current_period_end),
            "current_period_start": unix(self.current_period_start),
            "discounts": [],
            "metadata": {},
            "price": price_view(item.price),
            "subscription": self.id,
            "tax_rates": [],
        }
        # Stripe shows no quantity on a metered item: the meter decides the bill.
        if item.quantity is not None:
            view["quantity"] = item.quantity
        return view


def previous_attributes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The fields an update changed, with their old values, as an event shows them."""
    return {name: value for name, value in before.items() if after.get(name) != value}
