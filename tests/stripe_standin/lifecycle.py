"""Subscriptions' lives: what Stripe and the Billing Portal do to them, and the events."""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from tests.stripe_standin import forms
from tests.stripe_standin.catalogue import Catalogue
from tests.stripe_standin.errors import ApiError
from tests.stripe_standin.events import delivery, new_event
from tests.stripe_standin.forms import Params
from tests.stripe_standin.store import LineItems, find, new_id, unix
from tests.stripe_standin.subscriptions import (
    NOT_RENEWING,
    STATUSES,
    Subscription,
    SubscriptionItem,
    previous_attributes,
)

LIST_STATUSES = (*STATUSES, "all", "ended")


class Lifecycle(Catalogue):
    """Subscriptions: test helpers that change them as Stripe would, and reading them."""

    def update_subscription(
        self,
        subscription_id: str,
        *,
        quantity: int | None = None,
        plan_lookup_key: str | None = None,
        status: str | None = None,
        cancel_at_period_end: bool | None = None,
        restart_period: bool = False,
    ) -> dict[str, Any]:
        """A change made in the Billing Portal or the Dashboard: ``customer.subscription.updated``.

        ``plan_lookup_key`` moves the licensed item to that plan's price and the
        metered item to ``<plan>_usage`` (same item ids, as Stripe keeps them);
        ``restart_period`` is ``billing_cycle_anchor=now``: a new period from now.
        """
        if status is not None and (status not in STATUSES or status == "canceled"):
            raise ValueError(f"status {status!r}: one of {STATUSES}; cancel() cancels")

        def change(subscription: Subscription, now: datetime) -> None:
            if plan_lookup_key is not None:
                self._switch_plan(subscription, plan_lookup_key)
            if quantity is not None:
                licensed = subscription.item("licensed")
                if licensed is None or quantity < 0:
                    raise ValueError(f"{subscription.id} has no quantity to set to {quantity}")
                licensed.quantity = quantity
            if status is not None:
                subscription.status = status
            if cancel_at_period_end is not None:
                # Requesting the cancellation dates it and schedules it for the
                # period's end; withdrawing the request clears all three.
                subscription.cancel_at_period_end = cancel_at_period_end
                subscription.cancel_at = (
                    subscription.current_period_end if cancel_at_period_end else None
                )
                subscription.canceled_at = now if cancel_at_period_end else None
                subscription.cancellation_reason = (
                    "cancellation_requested" if cancel_at_period_end else None
                )
            if restart_period:
                if subscription.status == "trialing":
                    raise ValueError("a trialing subscription's period is its trial")
                subscription.billing_cycle_anchor = now
                subscription.start_period(now)

        return self._change(subscription_id, change)

    def renew(self, subscription_id: str) -> dict[str, Any]:
        """The clock has passed the period's end: the next period (a trial's end makes it
        ``active``), or ``customer.subscription.deleted`` when it was to cancel then."""

        def change(subscription: Subscription, now: datetime) -> None:
            if subscription.status in NOT_RENEWING:
                raise ValueError(f"a {subscription.status} subscription does not renew")
            if now < subscription.current_period_end:
                raise ValueError(
                    f"the period ends at {subscription.current_period_end.isoformat()}, "
                    f"the clock says {now.isoformat()}: advance the clock first"
                )
            if subscription.cancel_at and subscription.cancel_at <= subscription.current_period_end:
                subscription.status = "canceled"
                subscription.ended_at = subscription.cancel_at
                return
            if subscription.status == "trialing":
                subscription.status = "active"
            subscription.start_period(subscription.current_period_end)

        return self._change(subscription_id, change, by_request=False)

    def cancel(self, subscription_id: str, *, at_period_end: bool = False) -> dict[str, Any]:
        """Cancel now (``customer.subscription.deleted``) or at the period's end (an update)."""
        if at_period_end:
            return self.update_subscription(subscription_id, cancel_at_period_end=True)

        def change(subscription: Subscription, now: datetime) -> None:
            subscription.status = "canceled"
            subscription.canceled_at = subscription.ended_at = now
            subscription.cancel_at_period_end = False
            subscription.cancellation_reason = "cancellation_requested"

        return self._change(subscription_id, change)

    def fail_payment(self, subscription_id: str) -> dict[str, Any]:
        """An invoice payment failed: ``past_due``."""
        return self._set_status(subscription_id, "past_due")

    def recover_payment(self, subscription_id: str) -> dict[str, Any]:
        """The customer paid the open invoice: ``active`` again."""
        return self._set_status(subscription_id, "active")

    def trial_will_end(self, subscription_id: str) -> dict[str, Any]:
        """``customer.subscription.trial_will_end``, which Stripe sends three days ahead."""
        with self._store.lock:
            subscription = find(self._store.subscriptions, subscription_id, "subscription")
            if subscription.status != "trialing":
                raise ValueError(f"{subscription_id} is {subscription.status}, not trialing")
            return self._emit(
                new_event(
                    "customer.subscription.trial_will_end",
                    subscription.to_stripe(),
                    self.clock(),
                )
            )

    # -- webhooks --------------------------------------------------------

    def signed_delivery(
        self, event: dict[str, Any], secret: str, *, timestamp: int | None = None
    ) -> tuple[bytes, dict[str, str]]:
        """The body and headers Stripe posts for ``event``, signed with ``secret`` at
        ``timestamp`` (Unix seconds; by default the clock's)."""
        return delivery(event, secret, unix(self.clock()) if timestamp is None else timestamp)

    # -- inspection and HTTP ---------------------------------------------

    def subscription(self, subscription_id: str) -> dict[str, Any]:
        with self._store.lock:
            return find(self._store.subscriptions, subscription_id, "subscription").to_stripe()

    def _list_subscriptions(self, params: Params) -> dict[str, Any]:
        status = forms.text(params, "status")
        if status is not None and status not in LIST_STATUSES:
            raise ApiError(
                400, f"Invalid status: must be one of {', '.join(LIST_STATUSES)}", param="status"
            )
        customer = forms.text(params, "customer")
        price = forms.text(params, "price")

        def keep(subscription: dict[str, Any]) -> bool:
            if status is None:
                # Stripe's default: every subscription that is not canceled.
                wanted = subscription["status"] != "canceled"
            elif status == "ended":
                wanted = subscription["status"] in ("canceled", "incomplete_expired")
            else:
                wanted = status == "all" or subscription["status"] == status
            prices = {item["price"]["id"] for item in subscription["items"]["data"]}
            return (
                wanted
                and customer in (None, subscription["customer"])
                and (price is None or price in prices)
            )

        with self._store.lock:
            newest_first = [s.to_stripe() for s in reversed(self._store.subscriptions.values())]
        return forms.page(
            newest_first, params, url="/v1/subscriptions", noun="subscription", keep=keep
        )

    def _get_subscription(self, params: Params, subscription_id: str) -> dict[str, Any]:
        return self._expanded(self.subscription(subscription_id), params)

    def _get_event(self, params: Params, event_id: str) -> dict[str, Any]:
        with self._store.lock:
            return copy.deepcopy(find(self._store.events, event_id, "event"))

    # -- internals -------------------------------------------------------

    def _expanded(self, obj: dict[str, Any], params: Params) -> dict[str, Any]:
        """``obj`` with its ``customer`` or ``subscription`` id replaced by the object
        when ``expand[]`` asks, as Stripe does; other expansions are ignored."""
        for name in forms.strings(params, "expand"):
            value = obj.get(name)
            with self._store.lock:
                if name == "customer" and isinstance(value, str):
                    obj[name] = copy.deepcopy(find(self._store.customers, value, "customer"))
                elif name == "subscription" and isinstance(value, str):
                    obj[name] = self.subscription(value)
        return obj

    def _subscribe(
        self,
        customer: str,
        line_items: LineItems,
        metadata: dict[str, str],
        trial_days: int | None,
        now: datetime,
    ) -> Subscription:
        trial_end = now + timedelta(days=trial_days) if trial_days else None
        subscription = Subscription(
            id=new_id("sub"),
            customer=customer,
            created=now,
            # A trial's end anchors the cycle: the first paid period starts then.
            billing_cycle_anchor=trial_end or now,
            current_period_start=now,
            current_period_end=trial_end or now,
            items=[
                SubscriptionItem(new_id("si"), price, quantity, now)
                for price, quantity in line_items
            ],
            metadata=dict(metadata),
            status="trialing" if trial_end else "active",
            trial_start=now if trial_end else None,
            trial_end=trial_end,
        )
        if trial_end is None:
            subscription.start_period(now)
        self._store.subscriptions[subscription.id] = subscription
        return subscription

    def _switch_plan(self, subscription: Subscription, plan: str) -> None:
        for usage_type, lookup_key in (("licensed", plan), ("metered", f"{plan}_usage")):
            item = subscription.item(usage_type)
            if item is None:
                continue
            price = self._price_by_lookup_key(lookup_key)
            if price is None or price["recurring"]["usage_type"] != usage_type:
                raise ValueError(f"no active {usage_type} price with the lookup key {lookup_key!r}")
            item.price = price

    def _set_status(self, subscription_id: str, status: str) -> dict[str, Any]:
        def change(subscription: Subscription, now: datetime) -> None:
            subscription.status = status

        return self._change(subscription_id, change, by_request=False)

    def _change(
        self,
        subscription_id: str,
        change: Callable[[Subscription, datetime], None],
        *,
        by_request: bool = True,
    ) -> dict[str, Any]:
        """Apply ``change`` and return the event it makes Stripe send.

        ``by_request`` says whether an API request (the portal, the Dashboard)
        made the change, which the event's ``request.id`` shows, or Stripe's own
        clockwork did (a renewal, a payment retry).
        """
        with self._store.lock:
            subscription = find(self._store.subscriptions, subscription_id, "subscription")
            if subscription.status == "canceled":
                raise ValueError(f"{subscription_id} is canceled: Stripe changes it no more")
            now = self.clock()
            # Changed on a copy and kept only if the whole change succeeds: a
            # helper that refuses leaves the subscription as it was.
            draft = copy.deepcopy(subscription)
            change(draft, now)
            before, after = subscription.to_stripe(), draft.to_stripe()
            changed = previous_attributes(before, after)
            if not changed:
                raise ValueError(f"nothing changed on {subscription_id}: Stripe sends no event")
            self._store.subscriptions[subscription_id] = subscription = draft
            request_id = new_id("req") if by_request else None
            if subscription.status == "canceled":
                return self._emit(
                    new_event("customer.subscription.deleted", after, now, request_id=request_id)
                )
            return self._emit(
                new_event(
                    "customer.subscription.updated",
                    after,
                    now,
                    previous_attributes=changed,
                    request_id=request_id,
                )
            )

    def _emit(self, event: dict[str, Any]) -> dict[str, Any]:
        """Keep ``event`` for ``GET /v1/events/{id}`` and hand it to the test."""
        self._store.events[event["id"]] = event
        return event
