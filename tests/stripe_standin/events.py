"""Webhook events: their shape, and the signature Stripe puts on each delivery."""

from __future__ import annotations

import copy
import hashlib
import hmac
import json
from datetime import datetime
from typing import Any

from tests.stripe_standin.store import new_id, unix

API_VERSION = "2026-10-28.endive"


def new_event(
    type_: str,
    obj: dict[str, Any],
    created: datetime,
    *,
    previous_attributes: dict[str, Any] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """An event object; ``request_id`` is ``None`` when Stripe acted by itself (a renewal)."""
    data: dict[str, Any] = {"object": copy.deepcopy(obj)}
    if previous_attributes is not None:
        data["previous_attributes"] = copy.deepcopy(previous_attributes)
    return {
        "id": new_id("evt"),
        "object": "event",
        "api_version": API_VERSION,
        "created": unix(created),
        "data": data,
        "livemode": False,
        "pending_webhooks": 1,
        "request": {"id": request_id, "idempotency_key": None},
        "type": type_,
    }


def signature_header(payload: bytes, secret: str, timestamp: int) -> str:
    """``Stripe-Signature``: an HMAC-SHA256 of ``<timestamp>.<payload>`` keyed by the secret."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def delivery(event: dict[str, Any], secret: str, timestamp: int) -> tuple[bytes, dict[str, str]]:
    """The body and headers of one webhook delivery of ``event``."""
    # Stripe posts the event pretty-printed; the signature covers these exact bytes.
    body = json.dumps(event, indent=2).encode()
    headers = {
        "Stripe-Signature": signature_header(body, secret, timestamp),
        "Content-Type": "application/json",
    }
    return body, headers
