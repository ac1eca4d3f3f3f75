"""Starting a subscription or managing one: Stripe Checkout and the Billing Portal.

Upgrades start a new subscription through Checkout, in subscription mode,
with the plan's licensed price (one, or one per seat) and its metered usage
price (no quantity: the meter counts). The session names the billing
subject twice, so the webhook finds it whatever arrives first: as
``client_reference_id`` on the session and as ``portal_subject`` metadata on
the subscription. Changing a plan, seats, the payment method, or canceling
happens in Stripe's Billing Portal, as its configuration allows
(docs/operations.md).
"""

from __future__ import annotations

from typing import Any, Protocol

from portal.billing.subscriptions import SUBJECT_METADATA, SubjectRef
from portal.plans import Plan, price_lookup_keys


class PricesMissing(LookupError):
    """Stripe has no active price with a lookup key the plan needs; the message names it."""


class CheckoutGateway(Protocol):
    def price_ids(self, lookup_keys: list[str]) -> dict[str, str]: ...

    def checkout_url(self, params: dict[str, Any]) -> str: ...


def checkout_url(
    stripe: CheckoutGateway,
    *,
    subject: SubjectRef,
    plan: Plan,
    seats: int,
    customer_id: str | None,
    email: str | None,
    success_url: str,
    cancel_url: str,
) -> str:
    """The Checkout page where the subject subscribes to ``plan``."""
    licensed, metered = price_lookup_keys(plan)
    prices = stripe.price_ids([licensed, metered])
    missing = [key for key in (licensed, metered) if key not in prices]
    if missing:
        raise PricesMissing(
            f"Stripe has no active price with lookup key {', '.join(missing)} "
            "(docs/operations.md: Setting up Stripe)"
        )
    params: dict[str, Any] = {
        "mode": "subscription",
        "line_items": [
            {"price": prices[licensed], "quantity": seats},
            {"price": prices[metered]},
        ],
        "client_reference_id": str(subject),
        "subscription_data": {"metadata": {SUBJECT_METADATA: str(subject)}},
        "success_url": success_url,
        "cancel_url": cancel_url,
    }
    if customer_id is not None:
        params["customer"] = customer_id
    elif email is not None:
        params["customer_email"] = email
    return stripe.checkout_url(params)
