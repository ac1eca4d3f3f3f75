"""The stand-in answers the real stripe library the way Stripe does."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
import stripe

from portal.billing.gateway import DeliveryStatus, MeterEvent
from portal.billing.settings import load_stripe_settings
from portal.billing.stripe_client import StripeMeterEventGateway, build_stripe_client
from tests.billing.helpers import API_KEY, NOW
from tests.stripe_standin import Fault, StripeStandIn


def event(identifier: str = "evt-1", *, value: int = 3, timestamp: int | None = None) -> MeterEvent:
    moment = int(NOW.timestamp()) if timestamp is None else timestamp
    return MeterEvent("ai_suggestion", "cus_1", value, identifier, moment)


def raw_client(standin: StripeStandIn) -> stripe.StripeClient:
    settings = load_stripe_settings({"STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": standin.url})
    return build_stripe_client(settings, timeout=2)


def test_a_repeated_identifier_gets_stripes_duplicate_answer(standin: StripeStandIn) -> None:
    client = raw_client(standin)
    params = {
        "event_name": "ai_suggestion",
        "payload": {"stripe_customer_id": "cus_1", "value": "3"},
        "identifier": "evt-1",
        "timestamp": int(NOW.timestamp()),
    }
    created = client.v1.billing.meter_events.create(params=params)  # type: ignore[arg-type]
    assert (created.identifier, created.payload["value"]) == ("evt-1", "3")

    with pytest.raises(stripe.InvalidRequestError) as raised:
        client.v1.billing.meter_events.create(params=params)  # type: ignore[arg-type]
    error = raised.value
    assert error.http_status == 400
    assert error.user_message == "An event already exists with identifier evt-1."
    assert error.headers["Stripe-Should-Retry"] == "false"
    assert error.request_id and error.request_id.startswith("req_")
    assert error.json_body["error"]["type"] == "invalid_request_error"  # type: ignore[index]
    assert standin.totals() == {"cus_1": 3}


def test_values_must_be_whole_numbers(standin: StripeStandIn) -> None:
    with pytest.raises(stripe.InvalidRequestError, match="whole number"):
        raw_client(standin).v1.billing.meter_events.create(
            params={
                "event_name": "ai_suggestion",
                "payload": {"stripe_customer_id": "cus_1", "value": "1.5"},
                "identifier": "evt-2",
            }
        )
    assert standin.events == []


def test_timestamps_outside_stripes_window_are_refused(
    standin: StripeStandIn, gateway: StripeMeterEventGateway
) -> None:
    now = int(NOW.timestamp())
    too_old = gateway.send(event("old", timestamp=now - 35 * 86400 - 1))
    too_new = gateway.send(event("new", timestamp=now + 301))
    edge = gateway.send(event("edge", timestamp=now - 35 * 86400 + 1))
    assert too_old.status is too_new.status is DeliveryStatus.REJECTED
    assert too_old.message and too_old.message.startswith(
        "The event timestamp cannot be more than 35 days in past"
    )
    assert edge.status is DeliveryStatus.ACCEPTED


def test_the_gateway_reads_each_answer(
    standin: StripeStandIn, gateway: StripeMeterEventGateway
) -> None:
    standin.add_faults(
        Fault.server_error(503),
        Fault.rate_limited(retry_after=3),
        Fault.slow_after_record(1.0),
        Fault.dropped_after_record(),
    )
    answers = [gateway.send(event(f"e{i}")) for i in range(4)]
    assert [a.status for a in answers] == [DeliveryStatus.RETRYABLE] * 4
    assert [a.http_status for a in answers] == [503, 429, None, None]
    assert answers[1].retry_after == 3
    # The slow and the dropped ones were recorded all the same.
    time.sleep(0.8)
    assert {e.identifier for e in standin.events} == {"e2", "e3"}
    again = gateway.send(event("e2"))
    assert again.status is DeliveryStatus.DUPLICATE

    standin.missing_customers.add("cus_1")
    missing = gateway.send(event("e9"))
    assert (missing.status, missing.message) == (
        DeliveryStatus.REJECTED,
        "No such customer: 'cus_1'",
    )
    standin.api_key = "sk_test_another0000000000"
    assert gateway.send(event("e10")).status is DeliveryStatus.UNAUTHORIZED


# -- Billing: the catalogue --------------------------------------------------

T_NOW = int(NOW.timestamp())


def refusal(call: Callable[[], Any]) -> stripe.InvalidRequestError:
    with pytest.raises(stripe.InvalidRequestError) as raised:
        call()
    assert raised.value.request_id and raised.value.request_id.startswith("req_")
    return raised.value


def test_prices_are_found_by_lookup_key(standin: StripeStandIn) -> None:
    catalogue = standin.add_portal_catalogue()
    assert set(catalogue) == {
        f"{plan}{suffix}"
        for plan in ("starter", "pro", "team", "business")
        for suffix in ("", "_usage")
    }
    assert [catalogue[p]["unit_amount"] for p in ("starter", "pro", "team", "business")] == [
        900,
        1500,
        1200,
        1800,
    ]
    client = raw_client(standin)

    found = client.v1.prices.list(params={"lookup_keys": ["pro", "pro_usage"], "active": True})
    assert (found.object, found.has_more, found.url) == ("list", False, "/v1/prices")
    by_key = {price.lookup_key: price for price in found.data}
    assert set(by_key) == {"pro", "pro_usage"}
    pro, usage = by_key["pro"], by_key["pro_usage"]
    assert (pro.object, pro.active, pro.currency, pro.type, pro.billing_scheme) == (
        "price",
        True,
        "eur",
        "recurring",
        "per_unit",
    )
    assert pro.recurring.to_dict() == {
        "interval": "month",
        "interval_count": 1,
        "meter": None,
        "trial_period_days": None,
        "usage_type": "licensed",
    }
    assert pro.id.startswith("price_") and pro.product.startswith("prod_")
    assert usage.recurring.usage_type == "metered" and usage.recurring.meter.startswith("mtr_")
    # As at Stripe, a price shows its tiers only when asked to.
    assert (usage.billing_scheme, usage.unit_amount, "tiers" in usage) == ("tiered", None, False)
    expanded = client.v1.prices.retrieve(usage.id, params={"expand": ["tiers"]})
    assert [(t.up_to, t.unit_amount) for t in expanded.tiers] == [(75, 0), (None, 30)]
    team_usage = catalogue["team_usage"]
    assert (team_usage["unit_amount"], team_usage["metadata"]) == (25, {"included_per_seat": "50"})

    standin.add_price("legacy", unit_amount=500, active=False)
    assert [p.lookup_key for p in client.v1.prices.list(params={"active": False}).data] == [
        "legacy"
    ]
    assert len(client.v1.prices.list(params={"limit": 100}).data) == 9
    missing = refusal(lambda: client.v1.prices.retrieve("price_nope"))
    assert (missing.http_status, missing.code, missing.param) == (404, "resource_missing", "id")


def test_customers_are_created_and_read(standin: StripeStandIn) -> None:
    client = raw_client(standin)
    created = client.v1.customers.create(
        params={"email": "ada@example.com", "name": "Ada", "metadata": {"user_id": "7"}}
    )
    assert created.id.startswith("cus_") and created.object == "customer"
    read = client.v1.customers.retrieve(created.id)
    assert (read.email, read.name, read.metadata.to_dict(), read.livemode) == (
        "ada@example.com",
        "Ada",
        {"user_id": "7"},
        False,
    )
    assert read.created == T_NOW

    missing = refusal(lambda: client.v1.customers.retrieve("cus_nope"))
    assert (missing.http_status, missing.code, missing.param) == (404, "resource_missing", "id")
    assert missing.user_message == "No such customer: 'cus_nope'"
    # A misspelt parameter is refused, as Stripe refuses it.
    typo = refusal(lambda: client.v1.customers.create(params={"emial": "x"}))  # type: ignore[arg-type]
    assert (typo.http_status, typo.code, typo.param) == (400, "parameter_unknown", "emial")


def test_billing_endpoints_check_the_key_and_the_url(standin: StripeStandIn) -> None:
    standin.add_portal_catalogue()
    settings = load_stripe_settings(
        {"STRIPE_API_KEY": "sk_test_another0000000000", "STRIPE_API_BASE": standin.url}
    )
    with pytest.raises(stripe.AuthenticationError):
        build_stripe_client(settings, timeout=2).v1.prices.list()
    unknown = refusal(lambda: raw_client(standin).v1.invoices.retrieve("in_1"))
    assert unknown.http_status == 404
    assert unknown.user_message == "Unrecognized request URL (GET: /v1/invoices/in_1)."
