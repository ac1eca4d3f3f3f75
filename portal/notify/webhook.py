"""The signed webhook to the assistant's backend, so it can tell people in Slack.

Each request is ``POST NOTIFY_WEBHOOK_URL`` with a JSON body and the header

    Portal-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the secret>

Stripe's scheme, which receivers already know how to check: recompute the
HMAC over the raw body, compare in constant time, and refuse a timestamp
more than five minutes from now (docs/operations.md has the recipe). The
body's ``id`` is the same on every attempt: a receiver that has seen it
already answers 2xx and does nothing, which makes a repeat harmless.
"""

from __future__ import annotations

import hashlib
import hmac
from datetime import datetime
from urllib.parse import urlsplit

import requests

from portal import encoding
from portal.notify.delivery import Delivered, Outcome
from portal.notify.settings import WebhookSettings

SIGNATURE_HEADER = "Portal-Signature"
TIMEOUT_SECONDS = (3.05, 10.0)
"""To connect, then to wait for the answer."""
RETRIED_STATUSES = frozenset({408, 425, 429})
"""4xx answers that say "later", not "never"."""


def signature(secret: str, body: bytes, timestamp: int) -> str:
    """The ``Portal-Signature`` header's value for ``body`` sent at ``timestamp``."""
    signed = f"{timestamp}.".encode() + body
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def send(
    settings: WebhookSettings, payload: dict[str, object], now: datetime, http: requests.Session
) -> Delivered:
    body = encoding.dump_bytes(payload, sort_keys=True)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: signature(settings.secret, body, int(now.timestamp())),
    }
    try:
        response = http.post(
            settings.url,
            data=body,
            headers=headers,
            timeout=TIMEOUT_SECONDS,
            allow_redirects=False,  # a redirect would carry the signed body somewhere else
        )
    except requests.RequestException as error:
        # The type and the host only: the URL's path or query may hold the receiver's secret.
        host = urlsplit(settings.url).hostname
        return Delivered(Outcome.RETRY, f"webhook at {host} unreachable: {type(error).__name__}")
    status = response.status_code
    if 200 <= status < 300:
        return Delivered(Outcome.SENT)
    retry = status >= 500 or status in RETRIED_STATUSES
    return Delivered(
        Outcome.RETRY if retry else Outcome.FAILED,
        f"webhook answered HTTP {status}: {response.text[:200]!r}",
    )
