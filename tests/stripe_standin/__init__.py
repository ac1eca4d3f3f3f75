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

Prices, which tests add in process (``add_price``, ``add_portal_catalogue``)
and the portal reads with ``GET /v1/prices`` (``lookup_keys[]``), and
customers (``POST /v1/customers``, ``GET /v1/customers/{id}``), answered the
same way; a parameter an endpoint does not have gets ``parameter_unknown``,
using the stripe library's own list of each endpoint's parameters.

The real ``stripe`` library talks to it over HTTP; tests read its state in
process (``events``, ``totals()``, ``requests``).
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
