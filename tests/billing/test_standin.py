"""The stand-in answers the real stripe library the way Stripe does."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import stripe

from portal.billing.gateway import DeliveryStatus, MeterEvent
from portal.billing.settings import load_stripe_settings
from portal.billing.stripe_client import (
    InvalidSignature,
    StripeMeterEventGateway,
    build_stripe_client,
    verified_event,
)
from tests.billing.helpers import API_KEY, NOW
from tests.factories import FrozenClock
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


# -- Billing: the catalogue, Checkout, subscriptions, webhooks ---------------

SECRET = "whsec_standin_test_secret"
T_NOW = int(NOW.timestamp())
MONTH_LATER = int(datetime(2026, 4, 18, 12, 0, tzinfo=UTC).timestamp())


def checkout(
    standin: StripeStandIn, plan: str = "pro", *, seats: int = 1, **params: Any
) -> stripe.checkout.Session:
    """A Checkout Session for ``plan`` (licensed and metered price), made over HTTP."""
    prices = {p.lookup_key: p.id for p in raw_client(standin).v1.prices.list().data}
    if not prices:
        prices = {key: p["id"] for key, p in standin.add_portal_catalogue().items()}
    params = {
        "mode": "subscription",
        "line_items": [
            {"price": prices[plan], "quantity": seats},
            {"price": prices[f"{plan}_usage"]},
        ],
        "customer_email": "ada@example.com",
        "success_url": "https://portal.test/billing/done?session={CHECKOUT_SESSION_ID}",
        "cancel_url": "https://portal.test/billing",
        **params,
    }
    return raw_client(standin).v1.checkout.sessions.create(params=params)  # type: ignore[arg-type]


def subscribe(standin: StripeStandIn, plan: str = "pro", **params: Any) -> dict[str, Any]:
    """A paid subscription to ``plan``, as ``customer.subscription.created`` shows it."""
    events = standin.complete_checkout(checkout(standin, plan, **params).id)
    subscription: dict[str, Any] = events[1]["data"]["object"]
    return subscription


def period(subscription: dict[str, Any] | stripe.Subscription) -> tuple[int, int]:
    """The current period, which this API version keeps on each item (all alike here)."""
    periods = {
        (item["current_period_start"], item["current_period_end"])
        for item in subscription["items"]["data"]
    }
    assert len(periods) == 1
    return periods.pop()


def answered(obj: stripe.StripeObject) -> Any:
    """The JSON the stand-in answered (``to_dict`` turns decimal strings into ``Decimal``)."""
    assert obj.last_response is not None
    return json.loads(obj.last_response.body)


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


def test_a_checkout_session_answers_like_stripe(standin: StripeStandIn) -> None:
    session = checkout(
        standin,
        client_reference_id="user-7",
        metadata={"plan": "pro"},
        subscription_data={"metadata": {"user_id": "7"}, "trial_period_days": 14},
    )
    assert session.id.startswith("cs_test_")
    assert (session.object, session.status, session.mode, session.payment_status) == (
        "checkout.session",
        "open",
        "subscription",
        "unpaid",
    )
    assert session.url == f"{standin.url}/pay/{session.id}"
    assert session.success_url == f"https://portal.test/billing/done?session={session.id}"
    assert (session.cancel_url, session.client_reference_id) == (
        "https://portal.test/billing",
        "user-7",
    )
    assert (session.customer, session.customer_email, session.subscription) == (
        None,
        "ada@example.com",
        None,
    )
    assert session.metadata.to_dict() == {"plan": "pro"}
    assert (session.created, session.expires_at) == (T_NOW, T_NOW + 24 * 3600)
    again = raw_client(standin).v1.checkout.sessions.retrieve(session.id)
    assert answered(again) == answered(session)


Edit = Callable[[dict[str, Any], StripeStandIn], object]
REFUSED_CHECKOUTS: dict[str, tuple[Edit, str | None, str, str]] = {
    # name: (what the request gets wrong, Stripe's code, the param it names, its message)
    "a quantity on a metered price": (
        lambda params, _: params["line_items"][1].update(quantity=1),
        None,
        "line_items[1][quantity]",
        "Quantity should not be specified where usage_type is `metered`. "
        "Remove quantity from `line_items[1]`.",
    ),
    "no quantity on a licensed price": (
        lambda params, _: params["line_items"][0].pop("quantity"),
        "parameter_missing",
        "line_items[0][quantity]",
        "Quantity is required. Add `quantity` to `line_items[0]`",
    ),
    "an unknown price": (
        lambda params, _: params["line_items"][0].update(price="price_nope"),
        "resource_missing",
        "line_items[0][price]",
        "No such price: 'price_nope'",
    ),
    "an inactive price": (
        lambda params, standin: params["line_items"][0].update(
            price=standin.add_price("old_pro", unit_amount=1000, active=False)["id"]
        ),
        "resource_missing",
        "line_items[0][price]",
        "The price specified is inactive. This field only accepts active prices.",
    ),
    "payment mode": (
        lambda params, _: params.update(mode="payment"),
        None,
        "mode",
        "You specified `payment` mode but passed a recurring price.",
    ),
    "no mode": (
        lambda params, _: params.pop("mode"),
        "parameter_missing",
        "mode",
        "Missing required param: mode.",
    ),
    "a customer and an email": (
        lambda params, standin: params.update(customer=standin.add_customer()["id"]),
        None,
        "customer_email",
        "You may only specify one of these parameters: customer, customer_email.",
    ),
    "an unknown customer": (
        lambda params, _: params.update(customer="cus_nope", customer_email=None),
        "resource_missing",
        "customer",
        "No such customer: 'cus_nope'",
    ),
    "a misspelt trial": (
        lambda params, _: params.update(subscription_data={"trial_days": 3}),
        "parameter_unknown",
        "subscription_data[trial_days]",
        "Received unknown parameter: subscription_data[trial_days]",
    ),
}


@pytest.mark.parametrize("case", REFUSED_CHECKOUTS)
def test_checkout_refuses_what_stripe_refuses(standin: StripeStandIn, case: str) -> None:
    edit, code, param, message = REFUSED_CHECKOUTS[case]
    catalogue = standin.add_portal_catalogue()
    params: dict[str, Any] = {
        "mode": "subscription",
        "line_items": [
            {"price": catalogue["pro"]["id"], "quantity": 1},
            {"price": catalogue["pro_usage"]["id"]},
        ],
        "customer_email": "ada@example.com",
    }
    edit(params, standin)
    create = raw_client(standin).v1.checkout.sessions.create
    refused = refusal(lambda: create(params=params))  # type: ignore[arg-type]
    assert (refused.http_status, refused.code, refused.param) == (400, code, param)
    assert refused.user_message and refused.user_message.startswith(message)


def test_completing_a_checkout_subscribes_the_customer(standin: StripeStandIn) -> None:
    session = checkout(
        standin,
        "team",
        seats=3,
        client_reference_id="org-4",
        subscription_data={"metadata": {"organization_id": "4"}},
    )
    completed, created = standin.complete_checkout(session.id)

    assert [completed["type"], created["type"]] == [
        "checkout.session.completed",
        "customer.subscription.created",
    ]
    for event in (completed, created):
        assert event["id"].startswith("evt_") and event["object"] == "event"
        assert (event["api_version"], event["created"], event["livemode"]) == (
            "2026-10-28.endive",
            T_NOW,
            False,
        )
        assert event["pending_webhooks"] == 1 and set(event["request"]) == {"id", "idempotency_key"}
    assert completed["id"] != created["id"]
    paid = completed["data"]["object"]
    subscription = created["data"]["object"]
    assert (paid["status"], paid["payment_status"], paid["url"]) == ("complete", "paid", None)
    assert (paid["customer"], paid["subscription"]) == (
        subscription["customer"],
        subscription["id"],
    )
    assert paid["client_reference_id"] == "org-4"

    client = raw_client(standin)
    customer = client.v1.customers.retrieve(subscription["customer"])
    assert customer.email == "ada@example.com"
    read = client.v1.subscriptions.retrieve(
        subscription["id"], params={"expand": ["latest_invoice"]}
    )
    assert answered(read) == subscription
    assert (read.object, read.status, read.livemode, read.cancel_at_period_end) == (
        "subscription",
        "active",
        False,
        False,
    )
    assert (read.created, read.start_date, read.billing_cycle_anchor) == (T_NOW, T_NOW, T_NOW)
    assert (read.trial_start, read.trial_end, read.cancel_at, read.canceled_at, read.ended_at) == (
        None,
        None,
        None,
        None,
        None,
    )
    assert read.metadata.to_dict() == {"organization_id": "4"}
    licensed, metered = read["items"].data
    assert licensed.id.startswith("si_") and licensed.object == "subscription_item"
    assert (licensed.price.lookup_key, licensed.quantity) == ("team", 3)
    # Stripe shows no quantity on a metered item.
    assert metered.price.lookup_key == "team_usage" and "quantity" not in metered
    assert period(read) == (T_NOW, MONTH_LATER)
    done = client.v1.checkout.sessions.retrieve(
        session.id, params={"expand": ["subscription", "customer"]}
    )
    assert done.status == "complete"
    assert (done.subscription.status, done.customer.email) == ("active", "ada@example.com")
    with pytest.raises(ValueError, match="complete, not open"):
        standin.complete_checkout(session.id)


def test_a_trial_is_the_first_period_and_anchors_the_cycle(
    standin: StripeStandIn, clock: FrozenClock
) -> None:
    session = checkout(standin, subscription_data={"trial_period_days": 14})
    completed, created = standin.complete_checkout(session.id)
    subscription = created["data"]["object"]
    trial_end = T_NOW + 14 * 86400
    assert completed["data"]["object"]["payment_status"] == "no_payment_required"
    assert subscription["status"] == "trialing"
    assert (subscription["trial_start"], subscription["trial_end"]) == (T_NOW, trial_end)
    assert subscription["billing_cycle_anchor"] == trial_end
    assert period(subscription) == (T_NOW, trial_end)
    assert standin.trial_will_end(subscription["id"])["type"] == (
        "customer.subscription.trial_will_end"
    )
    # A refused change leaves the subscription as it was, seats included.
    with pytest.raises(ValueError, match="trial"):
        standin.update_subscription(subscription["id"], quantity=4, restart_period=True)
    assert standin.subscription(subscription["id"]) == subscription

    clock.advance(timedelta(days=14))
    renewed = standin.renew(subscription["id"])
    after = renewed["data"]["object"]
    assert renewed["type"] == "customer.subscription.updated"
    assert after["status"] == "active"
    first_paid_end = int(datetime(2026, 5, 1, 12, 0, tzinfo=UTC).timestamp())
    assert period(after) == (trial_end, first_paid_end)
    previous = renewed["data"]["previous_attributes"]
    assert previous["status"] == "trialing" and period(previous) == (T_NOW, trial_end)
    # Stripe renewed it by itself: no API request caused the event.
    assert renewed["request"]["id"] is None
    with pytest.raises(ValueError, match="not trialing"):
        standin.trial_will_end(subscription["id"])

    # The helper's trial wins over the session's.
    other = standin.complete_checkout(checkout(standin).id, trial_days=7)[1]["data"]["object"]
    assert (other["status"], other["trial_end"]) == ("trialing", T_NOW + 7 * 86400 + 14 * 86400)


@pytest.mark.parametrize(
    ("anchor", "boundaries"),
    [
        (
            datetime(2027, 1, 31, 9, tzinfo=UTC),
            ["2027-02-28", "2027-03-31", "2027-04-30", "2027-05-31"],
        ),
        (
            datetime(2028, 1, 31, 9, tzinfo=UTC),
            ["2028-02-29", "2028-03-31", "2028-04-30", "2028-05-31"],
        ),
        (
            datetime(2026, 8, 30, 9, tzinfo=UTC),
            ["2026-09-30", "2026-10-30", "2026-11-30", "2026-12-30"],
        ),
    ],
)
def test_a_month_end_anchor_clamps_then_returns(
    standin: StripeStandIn, clock: FrozenClock, anchor: datetime, boundaries: list[str]
) -> None:
    clock.advance(anchor - clock.now)
    subscription_id = subscribe(standin)["id"]
    ends = []
    for _ in boundaries:
        start, end = period(standin.subscription(subscription_id))
        # Each period starts where the one before ended.
        assert start == (ends[-1] if ends else int(anchor.timestamp()))
        ends.append(end)
        clock.advance(datetime.fromtimestamp(end, UTC) - clock.now)
        standin.renew(subscription_id)
    expected = [f"{day}T09:00:00+00:00" for day in boundaries]
    assert [datetime.fromtimestamp(end, UTC).isoformat() for end in ends] == expected


def test_subscriptions_are_listed_in_pages(standin: StripeStandIn) -> None:
    made = [subscribe(standin)["id"] for _ in range(5)]
    standin.cancel(made[1])
    client = raw_client(standin)

    first = client.v1.subscriptions.list(params={"limit": 2})
    assert (first.url, first.has_more, [s.id for s in first.data]) == (
        "/v1/subscriptions",
        True,
        [made[4], made[3]],
    )
    # Newest first; canceled ones only when asked for, as at Stripe.
    assert [s.id for s in first.auto_paging_iter()] == [made[4], made[3], made[2], made[0]]
    every = client.v1.subscriptions.list(params={"status": "all", "limit": 2})
    assert [s.id for s in every.auto_paging_iter()] == made[::-1]
    canceled = client.v1.subscriptions.list(params={"status": "canceled"})
    assert [s.id for s in canceled.data] == [made[1]]
    customer = standin.subscription(made[2])["customer"]
    mine = client.v1.subscriptions.list(params={"customer": customer})
    assert [s.id for s in mine.data] == [made[2]]
    after = client.v1.subscriptions.list(params={"starting_after": made[1], "limit": 1})
    assert ([s.id for s in after.data], after.has_more) == ([made[0]], False)
    before = client.v1.subscriptions.list(params={"ending_before": made[0], "limit": 2})
    assert ([s.id for s in before.data], before.has_more) == ([made[3], made[2]], True)

    for params, param in (
        ({"limit": 101}, "limit"),
        ({"starting_after": "sub_nope"}, "starting_after"),
        ({"status": "gone"}, "status"),
    ):
        refused = refusal(lambda p=params: client.v1.subscriptions.list(params=p))  # type: ignore[misc]
        assert (refused.http_status, refused.param) == (400, param)


def test_plan_seat_and_status_changes_are_updates(
    standin: StripeStandIn, clock: FrozenClock
) -> None:
    subscription = subscribe(standin, "pro")
    item_ids = [item["id"] for item in subscription["items"]["data"]]

    switched = standin.update_subscription(subscription["id"], plan_lookup_key="starter")
    after = switched["data"]["object"]
    assert switched["type"] == "customer.subscription.updated"
    assert [i["price"]["lookup_key"] for i in after["items"]["data"]] == [
        "starter",
        "starter_usage",
    ]
    assert [i["id"] for i in after["items"]["data"]] == item_ids
    previous = switched["data"]["previous_attributes"]
    assert list(previous) == ["items"]
    assert [i["price"]["lookup_key"] for i in previous["items"]["data"]] == ["pro", "pro_usage"]
    # The Billing Portal made the change through an API request.
    assert switched["request"]["id"].startswith("req_")

    team = subscribe(standin, "team", seats=2)
    seats = standin.update_subscription(team["id"], quantity=5)
    assert seats["data"]["object"]["items"]["data"][0]["quantity"] == 5
    assert seats["data"]["previous_attributes"]["items"]["data"][0]["quantity"] == 2

    unpaid = standin.update_subscription(team["id"], status="unpaid")
    assert unpaid["data"]["previous_attributes"] == {"status": "active"}
    assert raw_client(standin).v1.subscriptions.retrieve(team["id"]).status == "unpaid"

    clock.advance(timedelta(days=10))
    restarted = standin.update_subscription(subscription["id"], restart_period=True)
    now = T_NOW + 10 * 86400
    assert restarted["data"]["object"]["billing_cycle_anchor"] == now
    assert period(restarted["data"]["object"]) == (
        now,
        int(datetime(2026, 4, 28, 12, tzinfo=UTC).timestamp()),
    )
    assert set(restarted["data"]["previous_attributes"]) == {"billing_cycle_anchor", "items"}

    with pytest.raises(ValueError, match="nothing changed"):
        standin.update_subscription(team["id"], quantity=5)
    with pytest.raises(ValueError, match="cancel"):
        standin.update_subscription(team["id"], status="canceled")


def test_a_cancellation_at_period_end_takes_effect_at_renewal(
    standin: StripeStandIn, clock: FrozenClock
) -> None:
    subscription = subscribe(standin)
    with pytest.raises(ValueError, match="advance the clock"):
        standin.renew(subscription["id"])
    clock.advance(timedelta(days=31))
    renewed = standin.renew(subscription["id"])["data"]["object"]
    second_end = int(datetime(2026, 5, 18, 12, tzinfo=UTC).timestamp())
    assert (renewed["status"], period(renewed)) == ("active", (MONTH_LATER, second_end))

    requested = standin.cancel(subscription["id"], at_period_end=True)
    at = T_NOW + 31 * 86400
    assert requested["type"] == "customer.subscription.updated"
    after = requested["data"]["object"]
    assert (after["status"], after["cancel_at_period_end"]) == ("active", True)
    assert (after["cancel_at"], after["canceled_at"]) == (second_end, at)
    assert requested["data"]["previous_attributes"]["cancel_at_period_end"] is False

    clock.advance(timedelta(days=30))
    deleted = standin.renew(subscription["id"])
    gone = deleted["data"]["object"]
    assert deleted["type"] == "customer.subscription.deleted"
    assert "previous_attributes" not in deleted["data"]
    assert (gone["status"], gone["ended_at"], gone["canceled_at"]) == ("canceled", second_end, at)
    for change in (standin.renew, standin.fail_payment, standin.cancel):
        with pytest.raises(ValueError, match="canceled"):
            change(subscription["id"])


def test_a_cancellation_can_be_withdrawn_and_one_can_cancel_now(
    standin: StripeStandIn, clock: FrozenClock
) -> None:
    subscription = subscribe(standin)
    standin.update_subscription(subscription["id"], cancel_at_period_end=True)
    kept = standin.update_subscription(subscription["id"], cancel_at_period_end=False)
    after = kept["data"]["object"]
    assert (after["cancel_at_period_end"], after["cancel_at"], after["canceled_at"]) == (
        False,
        None,
        None,
    )

    clock.advance(timedelta(hours=5))
    deleted = standin.cancel(subscription["id"])
    gone = deleted["data"]["object"]
    assert deleted["type"] == "customer.subscription.deleted"
    now = T_NOW + 5 * 3600
    assert (gone["status"], gone["canceled_at"], gone["ended_at"]) == ("canceled", now, now)
    assert gone["cancellation_details"]["reason"] == "cancellation_requested"


def test_a_failed_payment_makes_it_past_due_until_paid(standin: StripeStandIn) -> None:
    subscription = subscribe(standin)
    failed = standin.fail_payment(subscription["id"])
    assert (failed["type"], failed["data"]["object"]["status"]) == (
        "customer.subscription.updated",
        "past_due",
    )
    assert failed["data"]["previous_attributes"] == {"status": "active"}
    assert failed["request"]["id"] is None
    recovered = standin.recover_payment(subscription["id"])
    assert recovered["data"]["object"]["status"] == "active"
    assert recovered["data"]["previous_attributes"] == {"status": "past_due"}


def test_billing_portal_sessions(standin: StripeStandIn) -> None:
    client = raw_client(standin)
    customer = standin.add_customer(email="ada@example.com")["id"]
    portal = client.v1.billing_portal.sessions.create(
        params={"customer": customer, "return_url": "https://portal.test/billing"}
    )
    assert portal.id.startswith("bps_") and portal.object == "billing_portal.session"
    assert (portal.customer, portal.return_url, portal.created, portal.livemode) == (
        customer,
        "https://portal.test/billing",
        T_NOW,
        False,
    )
    assert portal.url.startswith(standin.url)
    unknown = refusal(
        lambda: client.v1.billing_portal.sessions.create(params={"customer": "cus_nope"})
    )
    assert (unknown.http_status, unknown.code, unknown.param) == (
        400,
        "resource_missing",
        "customer",
    )


def test_signed_deliveries_pass_stripes_verification(standin: StripeStandIn) -> None:
    event = standin.complete_checkout(checkout(standin).id)[0]
    body, headers = standin.signed_delivery(event, SECRET)
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == event
    signature = headers["Stripe-Signature"]
    assert re.fullmatch(rf"t={T_NOW},v1=[0-9a-f]{{64}}", signature)

    # The portal verifies as Stripe's library does (the HMAC), with the age
    # counted on the portal's clock, which the stand-in shares.
    now = standin.clock()
    verified = verified_event(body, signature, SECRET, now)
    assert (verified["id"], verified["type"]) == (event["id"], "checkout.session.completed")
    assert verified["data"]["object"]["id"] == event["data"]["object"]["id"]
    with pytest.raises(InvalidSignature, match="expected signature"):
        verified_event(body, signature, "whsec_wrong0000000", now)
    with pytest.raises(InvalidSignature):
        verified_event(body.replace(b"complete", b"open"), signature, SECRET, now)
    old_body, old_headers = standin.signed_delivery(event, SECRET, timestamp=T_NOW - 301)
    with pytest.raises(InvalidSignature, match="not within five minutes"):
        verified_event(old_body, old_headers["Stripe-Signature"], SECRET, now)
    recent_body, recent_headers = standin.signed_delivery(event, SECRET, timestamp=T_NOW - 299)
    verified_event(recent_body, recent_headers["Stripe-Signature"], SECRET, now)

    assert answered(raw_client(standin).v1.events.retrieve(event["id"])) == event


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
