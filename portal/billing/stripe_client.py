"""The Stripe client: the one module of the portal that imports ``stripe``.

``StripeMeterEventGateway`` makes exactly one HTTP attempt per ``send`` and
turns every answer into a ``Delivery``. The client is built with
``max_network_retries=0`` on purpose: the reporter retries by itself, so it
can honour ``Retry-After`` (which stripe-python ignores), retry a 429 (which
stripe-python does not), count every attempt, and stay inside its time budget.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import stripe

from portal.billing.gateway import Delivery, DeliveryStatus, MeterEvent
from portal.billing.settings import StripeSettings

DEFAULT_TIMEOUT_SECONDS = 20.0
"""Per request. Long enough for Stripe's slow moments, short enough for a cron run."""

DUPLICATE_MESSAGE = "An event already exists with identifier"


def build_stripe_client(
    settings: StripeSettings, *, timeout: float = DEFAULT_TIMEOUT_SECONDS
) -> stripe.StripeClient:
    """A ``StripeClient`` for these settings: one attempt per call, ``timeout`` per request."""
    base_addresses: Any = None
    if settings.api_base is not None:
        # A stand-in serves both hosts the library knows for meter events.
        base_addresses = {"api": settings.api_base, "meter_events": settings.api_base}
    return stripe.StripeClient(
        settings.api_key,
        base_addresses=base_addresses,
        max_network_retries=0,
        http_client=stripe.RequestsClient(timeout=timeout),
    )


class StripeMeterEventGateway:
    """Sends meter events with ``POST /v1/billing/meter_events``."""

    def __init__(self, client: stripe.StripeClient) -> None:
        self._client = client

    @classmethod
    def from_settings(
        cls, settings: StripeSettings, *, timeout: float = DEFAULT_TIMEOUT_SECONDS
    ) -> StripeMeterEventGateway:
        return cls(build_stripe_client(settings, timeout=timeout))

    def send(self, event: MeterEvent) -> Delivery:
        try:
            created = self._client.v1.billing.meter_events.create(
                params={
                    "event_name": event.event_name,
                    "payload": {
                        "stripe_customer_id": event.stripe_customer_id,
                        "value": str(event.value),
                    },
                    "identifier": event.identifier,
                    "timestamp": event.timestamp,
                }
            )
        except stripe.APIConnectionError as error:
            # Timeout or dropped connection: Stripe may or may not have the event.
            return Delivery(DeliveryStatus.RETRYABLE, None, _message(error), None)
        except stripe.StripeError as error:
            return classify_error(error, event.identifier)
        response = created.last_response
        return Delivery(
            DeliveryStatus.ACCEPTED,
            response.code if response else 200,
            None,
            response.request_id if response else None,
        )


def classify_error(error: stripe.StripeError, identifier: str) -> Delivery:
    """What an error answer from Stripe means for the batch that got it."""
    status = error.http_status
    message = _message(error)
    request_id = error.request_id
    headers = _lower(error.headers)
    retry_after = _retry_after(headers.get("retry-after"))
    if status is None:
        return Delivery(DeliveryStatus.RETRYABLE, None, message, request_id)
    if status in (401, 403):
        return Delivery(DeliveryStatus.UNAUTHORIZED, status, message, request_id)
    if status == 400 and message.startswith(DUPLICATE_MESSAGE) and identifier in message:
        return Delivery(DeliveryStatus.DUPLICATE, status, message, request_id)
    # Stripe's own verdict (Stripe-Should-Retry) wins over the status code.
    should_retry = headers.get("stripe-should-retry")
    transient = status in (409, 429) or status >= 500
    if should_retry == "true" or (transient and should_retry != "false"):
        return Delivery(DeliveryStatus.RETRYABLE, status, message, request_id, retry_after)
    return Delivery(DeliveryStatus.REJECTED, status, message, request_id)


def _message(error: stripe.StripeError) -> str:
    text = error.user_message or type(error).__name__
    return " ".join(str(text).split())[:1000]


def _lower(headers: Mapping[str, str] | None) -> dict[str, str]:
    return {name.lower(): value for name, value in (headers or {}).items()}


def _retry_after(value: str | None) -> float | None:
    """``Retry-After`` in seconds; the HTTP-date form, which Stripe does not use, is ignored."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None
