"""Stripe settings, read from the environment and checked before any work.

A missing key stops only what needs it: ``flask report-usage`` and ``flask
sync-subscriptions`` exit 2 with a message naming the variable; the pages
then offer no upgrade or billing portal; without ``STRIPE_WEBHOOK_SECRET``
the webhook endpoint answers 404. The reporter's dry run sends nothing: it
reads the meter's event name only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from portal.config import ConfigError

DEFAULT_METER_EVENT_NAME = "ai_suggestion"
MAX_EVENT_NAME_LENGTH = 100
"""Stripe's limit on ``event_name``."""

# Secret (sk_) and restricted (rk_) keys can write meter events; a
# publishable key (pk_) or a webhook secret (whsec_) cannot.
API_KEY_PATTERN = re.compile(r"^(sk|rk)_(test|live)_[0-9A-Za-z]{8,}$")
WEBHOOK_SECRET_PATTERN = re.compile(r"^whsec_[0-9A-Za-z+/=_-]{8,}$")
EVENT_NAME_PATTERN = re.compile(r"^[!-~]+$")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


@dataclass(frozen=True)
class StripeSettings:
    api_key: str
    meter_event_name: str
    api_base: str | None
    """Base URL standing in for both ``api.stripe.com`` and ``meter-events.stripe.com``."""

    @property
    def livemode(self) -> bool:
        return self.api_key.split("_")[1] == "live"

    def __repr__(self) -> str:
        # Never print the key itself, not even in a traceback.
        mode = "live" if self.livemode else "test"
        return (
            f"StripeSettings(api_key=<{mode} key>, meter_event_name={self.meter_event_name!r}, "
            f"api_base={self.api_base!r})"
        )


def stripe_environ(config: Mapping[str, object]) -> dict[str, str]:
    """The environment, overridden by ``STRIPE_*`` settings an app was created with."""
    configured = {
        name: str(value)
        for name, value in config.items()
        if name.startswith("STRIPE_") and value is not None
    }
    return {**os.environ, **configured}


def load_webhook_secret(environ: Mapping[str, str]) -> str | None:
    """``STRIPE_WEBHOOK_SECRET`` (``whsec_…``), or ``None`` when webhooks are not set up."""
    secret = environ.get("STRIPE_WEBHOOK_SECRET", "").strip()
    if not secret:
        return None
    if not WEBHOOK_SECRET_PATTERN.match(secret):
        raise ConfigError(
            "STRIPE_WEBHOOK_SECRET must be the endpoint's signing secret (whsec_…), "
            "as Stripe shows it for the webhook endpoint"
        )
    return secret


def load_meter_event_name(environ: Mapping[str, str]) -> str:
    """The meter's event name from ``STRIPE_METER_EVENT_NAME``; ``ConfigError`` if malformed."""
    event_name = environ.get("STRIPE_METER_EVENT_NAME", "").strip() or DEFAULT_METER_EVENT_NAME
    if len(event_name) > MAX_EVENT_NAME_LENGTH or not EVENT_NAME_PATTERN.match(event_name):
        raise ConfigError(
            f"STRIPE_METER_EVENT_NAME must be 1 to {MAX_EVENT_NAME_LENGTH} printable characters "
            f"without spaces (the meter's event name), got {event_name[:40]!r}"
        )
    return event_name


def load_stripe_settings(environ: Mapping[str, str]) -> StripeSettings:
    """Stripe settings from ``STRIPE_*`` variables; ``ConfigError`` names the bad one."""
    api_key = environ.get("STRIPE_API_KEY", "").strip()
    if not api_key:
        raise ConfigError(
            "STRIPE_API_KEY is not set: give the secret key (sk_test_… or sk_live_…) or a "
            "restricted key (rk_…) of the Stripe account that bills the usage"
        )
    if not API_KEY_PATTERN.match(api_key):
        # Show only the key's kind, never the key.
        kind = api_key.split("_", 1)[0][:6] + "_…" if "_" in api_key else "no prefix"
        raise ConfigError(
            "STRIPE_API_KEY must be a secret key (sk_test_…/sk_live_…) or a restricted key "
            f"(rk_test_…/rk_live_…), got a value of another form ({kind})"
        )

    event_name = load_meter_event_name(environ)

    api_base = environ.get("STRIPE_API_BASE", "").strip().rstrip("/") or None
    if api_base is not None:
        parts = urlsplit(api_base)
        loopback = parts.hostname in LOOPBACK_HOSTS
        # The key travels in a header: plain http only to this machine.
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"STRIPE_API_BASE must be a URL like http://127.0.0.1:12111, got {api_base!r}"
            )
        if parts.scheme == "http" and not loopback:
            raise ConfigError(
                "STRIPE_API_BASE may use plain http only for 127.0.0.1 or localhost; "
                f"use https for {parts.hostname}"
            )
        if parts.query or parts.fragment:
            raise ConfigError(f"STRIPE_API_BASE must not have a query or fragment: {api_base!r}")
    return StripeSettings(api_key=api_key, meter_event_name=event_name, api_base=api_base)
