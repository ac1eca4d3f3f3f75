"""What the reporter asks of Stripe, and the answers it understands.

The reporter depends on this interface only; ``stripe_client`` implements it
with the real ``stripe`` library, and tests hand it the same library pointed
at a local stand-in. ``StripeUnavailable`` is here too, so the domain can
catch it without loading the library.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Protocol


class StripeUnavailable(RuntimeError):
    """Stripe could not be asked (network, timeout, 5xx, a refused key); try again later."""


@dataclass(frozen=True)
class MeterEvent:
    """One billing meter event, exactly as sent: every attempt sends the same one."""

    event_name: str
    stripe_customer_id: str
    value: int
    identifier: str
    timestamp: int
    """Unix seconds."""


class DeliveryStatus(enum.StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    """Stripe already holds an event with this identifier: an earlier attempt got through."""
    RETRYABLE = "retryable"
    """Timeout, dropped connection, 409, 429 or 5xx: send the same event again later."""
    REJECTED = "rejected"
    """Any other 4xx: sending it again would fail again until someone fixes the cause."""
    UNAUTHORIZED = "unauthorized"
    """401/403: the API key is wrong or lacks permission; nothing can be sent."""


@dataclass(frozen=True)
class Delivery:
    """Stripe's answer to one attempt."""

    status: DeliveryStatus
    http_status: int | None = None
    message: str | None = None
    request_id: str | None = None
    retry_after: float | None = None
    """Seconds Stripe asked to wait (``Retry-After``), when it did."""

    def describe(self) -> str:
        """One line for logs and ``last_error``: status, message, request id."""
        status = f"HTTP {self.http_status}" if self.http_status else "no HTTP answer"
        request = f" (request {self.request_id})" if self.request_id else ""
        return f"{status}: {self.message or self.status.value}{request}"


class MeterEventGateway(Protocol):
    def send(self, event: MeterEvent) -> Delivery:
        """Make one attempt to create ``event`` at Stripe; never raises for Stripe's answers."""
        ...
