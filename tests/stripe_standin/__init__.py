"""A local stand-in for Stripe's API, for tests and benchmarks.

No offline Stripe server knows Billing Meters, so this one implements what the
reporter relies on, the way Stripe answers it:

* ``POST /v1/billing/meter_events`` (form-encoded, ``Authorization: Bearer``);
* identifier dedupe: a repeated identifier gets HTTP 400
  ``invalid_request_error`` "An event already exists with identifier …" and
  ``Stripe-Should-Retry: false``;
* the timestamp window (35 days back, 5 minutes ahead), whole-number values,
  unknown customers, error bodies in Stripe's ``{"error": {...}}`` shape and a
  ``Request-Id`` header on every answer;
* one request at a time per customer and meter (a second concurrent one gets
  429, as in live mode);
* scriptable faults, consumed one per request in order: 500/503 before
  recording, 500 after recording, 429 with ``Retry-After``, a reply slower than
  the client's timeout after the event was recorded, a connection dropped
  after the event was recorded, and a reply held until the test releases it
  (to kill a reporter while Stripe has accepted its event).

Stripe Billing, enough for the portal's subscriptions, the same way:

* prices, which tests add in process (``add_price``, ``add_portal_catalogue``)
  and the portal reads with ``GET /v1/prices`` (``lookup_keys[]``);
* customers (``POST /v1/customers``, ``GET /v1/customers/{id}``);
* Checkout Sessions in subscription mode (``POST /v1/checkout/sessions``,
  ``GET /v1/checkout/sessions/{id}``, ``expand[]`` of its subscription and
  customer), validated as Stripe validates them;
* subscriptions in the ``2026-10-28.endive`` shape, periods on the items
  (``GET /v1/subscriptions`` and ``/v1/subscriptions/{id}``);
* Billing Portal sessions (``POST /v1/billing_portal/sessions``) and
  ``GET /v1/events/{id}``;
* unknown parameters refused with ``parameter_unknown``, using the stripe
  library's own list of each endpoint's parameters;
* Billing answers held back on request (``delay_billing``), past a client's
  timeout.

What the customer and Stripe's clockwork do (paying a Checkout Session, a
renewal, a failed payment, a change in the Billing Portal) are test helpers
(``complete_checkout``, ``renew``, ``fail_payment``, ``update_subscription``…):
each returns the webhook events Stripe would send, without delivering them;
``signed_delivery`` signs one as Stripe does, for the test to post. Times come
from ``clock`` (the portal's clock by default), never the wall clock.

The real ``stripe`` library talks to it over HTTP; tests read its state in
process (``events`` and ``totals()`` for meter events, ``requests``,
``subscription(id)``, ``checkout_session(id)``).
"""

from __future__ import annotations

from tests.stripe_standin.errors import ApiError
from tests.stripe_standin.meters import Fault, FaultKind, ReceivedRequest, RecordedEvent
from tests.stripe_standin.server import StripeStandIn, main

__all__ = [
    "ApiError",
    "Fault",
    "FaultKind",
    "ReceivedRequest",
    "RecordedEvent",
    "StripeStandIn",
    "main",
]
