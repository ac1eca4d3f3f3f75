"""Fixtures for the reporter: the Stripe stand-in, and the real stripe client pointed at it."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from portal.billing.settings import load_stripe_settings
from portal.billing.stripe_client import StripeMeterEventGateway
from tests.billing.helpers import API_KEY, CLIENT_TIMEOUT
from tests.factories import FrozenClock
from tests.stripe_standin import StripeStandIn


@pytest.fixture
def standin(clock: FrozenClock) -> Iterator[StripeStandIn]:
    """The Stripe stand-in on a loopback port, for one test."""
    with StripeStandIn(api_key=API_KEY, clock=clock).running() as server:
        yield server


@pytest.fixture
def gateway(standin: StripeStandIn) -> StripeMeterEventGateway:
    """The real stripe client, talking HTTP to the stand-in, with a short timeout."""
    settings = load_stripe_settings({"STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": standin.url})
    return StripeMeterEventGateway.from_settings(settings, timeout=CLIENT_TIMEOUT)
