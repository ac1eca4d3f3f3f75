"""Billing Meters: the meter-event endpoint's rules and the faults tests script for it."""

from __future__ import annotations

import enum
import secrets
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tests.stripe_standin.errors import ApiError

MAX_PAST = timedelta(days=35)
MAX_FUTURE = timedelta(minutes=5)
MAX_LENGTH = 100
METER_EVENTS_PATH = "/v1/billing/meter_events"


class FaultKind(enum.StrEnum):
    ERROR = "error"
    """Answer ``status`` without recording the event."""
    ERROR_AFTER_RECORD = "error_after_record"
    """Record the event, then answer ``status`` anyway."""
    RATE_LIMITED = "rate_limited"
    """429 with ``Retry-After``, nothing recorded."""
    SLOW_AFTER_RECORD = "slow_after_record"
    """Record the event, wait ``delay`` seconds (past the client's timeout), then answer."""
    DROP_AFTER_RECORD = "drop_after_record"
    """Record the event, then close the connection without an answer."""
    HOLD_AFTER_RECORD = "hold_after_record"
    """Record the event, then hold the answer until ``release()``; then drop the connection."""


@dataclass(frozen=True)
class Fault:
    kind: FaultKind
    status: int = 500
    retry_after: float | None = None
    delay: float = 0.0
    customer: str | None = None
    """Only a request for this customer triggers the fault (any request when ``None``)."""

    @classmethod
    def server_error(cls, status: int = 500, customer: str | None = None) -> Fault:
        return cls(FaultKind.ERROR, status=status, customer=customer)

    @classmethod
    def error_after_record(cls, status: int = 500, customer: str | None = None) -> Fault:
        return cls(FaultKind.ERROR_AFTER_RECORD, status=status, customer=customer)

    @classmethod
    def rate_limited(cls, retry_after: float = 1.0, customer: str | None = None) -> Fault:
        return cls(FaultKind.RATE_LIMITED, status=429, retry_after=retry_after, customer=customer)

    @classmethod
    def slow_after_record(cls, delay: float, customer: str | None = None) -> Fault:
        return cls(FaultKind.SLOW_AFTER_RECORD, delay=delay, customer=customer)

    @classmethod
    def dropped_after_record(cls, customer: str | None = None) -> Fault:
        return cls(FaultKind.DROP_AFTER_RECORD, customer=customer)

    @classmethod
    def held_after_record(cls, customer: str | None = None) -> Fault:
        return cls(FaultKind.HOLD_AFTER_RECORD, customer=customer)


@dataclass(frozen=True)
class RecordedEvent:
    identifier: str
    event_name: str
    stripe_customer_id: str
    value: int
    timestamp: int
    received_at: datetime


@dataclass(frozen=True)
class ReceivedRequest:
    """One request as the stand-in saw it, and what it answered."""

    identifier: str | None
    stripe_customer_id: str | None
    status: int | None
    """HTTP status answered; ``None`` when the connection was dropped."""
    fault: FaultKind | None
    recorded: bool


def validate_meter_event(
    form: dict[str, str], now: datetime, missing_customers: Collection[str]
) -> RecordedEvent:
    """The meter event a request asks for at ``now``, or the ``ApiError`` Stripe would answer."""
    for name in ("event_name", "payload[stripe_customer_id]", "payload[value]"):
        if not form.get(name):
            raise ApiError(
                400, f"Missing required param: {name}.", code="parameter_missing", param=name
            )
    event_name = form["event_name"]
    customer = form["payload[stripe_customer_id]"]
    raw_value = form["payload[value]"]
    identifier = form.get("identifier") or f"standin_{secrets.token_hex(12)}"
    for name, text in (("event_name", event_name), ("identifier", identifier)):
        if len(text) > MAX_LENGTH:
            raise ApiError(
                400,
                f"Invalid string: {text[:20]}...; must be at most {MAX_LENGTH} characters",
                code="string_length_exceeds_maximum",
                param=name,
            )
    if not (raw_value.isascii() and raw_value.isdigit()):
        raise ApiError(
            400,
            f"The value `{raw_value}` for `payload[value]` must be a whole number.",
            code="parameter_invalid_integer",
            param="payload[value]",
        )
    raw_timestamp = form.get("timestamp") or str(int(now.timestamp()))
    try:
        timestamp = int(raw_timestamp)
    except ValueError:
        raise ApiError(
            400,
            f"Invalid integer: {raw_timestamp}",
            code="parameter_invalid_integer",
            param="timestamp",
        ) from None
    if timestamp < (now - MAX_PAST).timestamp():
        raise ApiError(
            400,
            "The event timestamp cannot be more than 35 days in past. Please provide a "
            "timestamp that is within the last 35 days.",
            code="timestamp_too_far_in_past",
            param="timestamp",
        )
    if timestamp > (now + MAX_FUTURE).timestamp():
        raise ApiError(
            400,
            "The event timestamp cannot be more than 5 minutes in the future.",
            code="timestamp_in_future",
            param="timestamp",
        )
    if customer in missing_customers:
        raise ApiError(
            400,
            f"No such customer: '{customer}'",
            code="resource_missing",
            param="payload[stripe_customer_id]",
        )
    return RecordedEvent(identifier, event_name, customer, int(raw_value), timestamp, now)


def fault_error(fault: Fault) -> ApiError:
    if fault.status == 503:
        return ApiError(503, "Stripe is temporarily unavailable.", type_="api_error")
    return ApiError(
        fault.status,
        "An unknown error occurred. Please retry the request.",
        type_="api_error",
    )


def meter_event_body(event: RecordedEvent) -> dict[str, Any]:
    return {
        "object": "billing.meter_event",
        "created": int(event.received_at.timestamp()),
        "event_name": event.event_name,
        "identifier": event.identifier,
        "livemode": False,
        "payload": {"stripe_customer_id": event.stripe_customer_id, "value": str(event.value)},
        "timestamp": event.timestamp,
    }
