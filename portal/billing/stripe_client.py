"""The Stripe client: the one module of the portal that imports ``stripe``.

``StripeMeterEventGateway`` makes exactly one HTTP attempt per ``send`` and
turns every answer into a ``Delivery``. The client is built with
``max_network_retries=0`` on purpose: the reporter retries by itself, so it
can honour ``Retry-After`` (which stripe-python ignores), retry a 429 (which
stripe-python does not), count every attempt, and stay inside its time budget.

``StripeBilling`` does the rest: verifying webhook signatures with the
library's own ``construct_event``, reading subscriptions, and starting
Checkout and Billing Portal sessions. It hands the rest of the portal plain
dictionaries, so nothing else needs ``stripe``'s types.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

import stripe

from portal.billing.gateway import Delivery, DeliveryStatus, MeterEvent
from portal.billing.gateway import StripeUnavailable as StripeUnavailable  # the pages catch it
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


class InvalidSignature(ValueError):
    """A webhook delivery whose ``Stripe-Signature`` does not verify, or is too old."""


WEBHOOK_TOLERANCE_SECONDS = 300
"""Stripe's own default: a signature older than five minutes is refused (replays)."""
PAGE_TIMEOUT_SECONDS = 3.0
"""Starting Checkout or the Billing Portal: a person waits on the page."""
WEBHOOK_FETCH_TIMEOUT_SECONDS = 0.8
"""A webhook delivery fetches the subscription it is about, and answers within a second:
past this the event stays pending for ``sync-subscriptions``."""


def verified_event(
    payload: bytes, signature: str | None, secret: str, now: datetime
) -> dict[str, Any]:
    """The event a webhook delivery carries, once its signature verifies and is fresh.

    The library checks the signature (HMAC-SHA256 of the timestamp and the
    body, compared in constant time, ``v1`` scheme). Freshness (five minutes,
    against replays) is checked against the portal's clock, the one every
    other rule of the portal reads, rather than the library's own reading of
    the time.
    """
    try:
        stripe.WebhookSignature.verify_header(payload, signature, secret, tolerance=None)
        signed_at = _signature_timestamp(signature or "")
        event = stripe.Webhook.construct_event_without_verification(payload)
    except (stripe.SignatureVerificationError, ValueError) as error:
        raise InvalidSignature(str(error)) from None
    age = now.timestamp() - signed_at
    if not -WEBHOOK_TOLERANCE_SECONDS <= age <= WEBHOOK_TOLERANCE_SECONDS:
        raise InvalidSignature(f"the signature is {age:.0f} seconds old: not within five minutes")
    return dict(event.to_dict())


def _signature_timestamp(header: str) -> float:
    """The ``t=`` of a ``Stripe-Signature`` header: the one the library signed with.

    The library checks the HMAC against the header's first ``t``; the age must
    be read from that same ``t``, or a stale signature could be made to look
    fresh by appending a later one. Stripe sends exactly one, so a header with
    several is refused.
    """
    stamps = [part[2:] for part in header.split(",") if part.startswith("t=")]
    if len(stamps) != 1:
        raise ValueError(f"the signature header has {len(stamps)} timestamps, not one")
    return float(stamps[0])


class StripeBilling:
    """Subscriptions, Checkout and the Billing Portal, through ``StripeClient``."""

    def __init__(self, client: stripe.StripeClient) -> None:
        self._client = client

    @classmethod
    def from_settings(
        cls, settings: StripeSettings, *, timeout: float = PAGE_TIMEOUT_SECONDS
    ) -> StripeBilling:
        return cls(build_stripe_client(settings, timeout=timeout))

    def retrieve_subscription(self, subscription_id: str) -> dict[str, Any] | None:
        """The subscription as Stripe has it now; ``None`` if Stripe does not know it."""
        try:
            found = self._client.v1.subscriptions.retrieve(subscription_id)
        except stripe.InvalidRequestError as error:
            if error.http_status == 404:
                return None
            raise StripeUnavailable(_message(error)) from None
        except stripe.StripeError as error:
            raise StripeUnavailable(_message(error)) from None
        return dict(found.to_dict())

    def retrieve_event(self, event_id: str) -> dict[str, Any] | None:
        """The event as Stripe keeps it (30 days); ``None`` if Stripe does not know it."""
        try:
            found = self._client.v1.events.retrieve(event_id)
        except stripe.InvalidRequestError as error:
            if error.http_status == 404:
                return None
            raise StripeUnavailable(_message(error)) from None
        except stripe.StripeError as error:
            raise StripeUnavailable(_message(error)) from None
        return dict(found.to_dict())

    def list_subscriptions(self) -> Iterator[dict[str, Any]]:
        """Every subscription of the account, whatever its status, a page at a time."""
        try:
            pages = self._client.v1.subscriptions.list(params={"status": "all", "limit": 100})
            for subscription in pages.auto_paging_iter():
                yield dict(subscription.to_dict())
        except stripe.StripeError as error:
            raise StripeUnavailable(_message(error)) from None

    def price_ids(self, lookup_keys: list[str]) -> dict[str, str]:
        """The ids of the active prices with these lookup keys."""
        try:
            prices = self._client.v1.prices.list(
                params={"lookup_keys": lookup_keys, "active": True, "limit": 100}
            )
        except stripe.StripeError as error:
            raise StripeUnavailable(_message(error)) from None
        return {str(price.lookup_key): str(price.id) for price in prices.data if price.lookup_key}

    def checkout_url(self, params: dict[str, Any]) -> str:
        """Start a Checkout Session; the page the customer pays on."""
        try:
            checkout = self._client.v1.checkout.sessions.create(params=params)  # type: ignore[arg-type]
        except stripe.StripeError as error:
            raise StripeUnavailable(_message(error)) from None
        return str(checkout.url)

    def billing_portal_url(self, customer_id: str, return_url: str) -> str:
        """Start a Billing Portal session for the customer; the page it opens."""
        try:
            portal = self._client.v1.billing_portal.sessions.create(
                params={"customer": customer_id, "return_url": return_url}
            )
        except stripe.StripeError as error:
            raise StripeUnavailable(_message(error)) from None
        return str(portal.url)


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
