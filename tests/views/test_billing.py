"""Subscriptions come from Stripe: Checkout, the Billing Portal and signed webhook events,
through the Stripe stand-in and the real ``stripe`` library."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal import clock
from portal.apikeys import create_api_key
from portal.models import MemberUsage, Organization, StripeEvent, UsageRecord, UserSubscription
from portal.usage import check_usage, record_usage
from tests.billing.helpers import (
    API_KEY,
    CLIENT_TIMEOUT,
    Usage,
    assert_exactly_once,
    run_reporter,
)
from tests.factories import FrozenClock, make_org, make_user
from tests.stripe_standin import StripeStandIn
from tests.views.conftest import PASSWORD, csrf_token

SECRET = "whsec_standin0123456789"
SignIn = Callable[[str], FlaskClient]


@pytest.fixture
def standin(app: Flask, clock: FrozenClock) -> Iterator[StripeStandIn]:
    """The stand-in with the plans' prices, and the portal set up to use it."""
    with StripeStandIn(api_key=API_KEY, clock=clock).running() as server:
        server.add_portal_catalogue()
        app.config.update(
            STRIPE_API_KEY=API_KEY, STRIPE_API_BASE=server.url, STRIPE_WEBHOOK_SECRET=SECRET
        )
        yield server


def deliver(app: Flask, standin: StripeStandIn, event: dict[str, Any], secret: str = SECRET) -> Any:
    """Post one event to the portal's webhook, signed as Stripe signs it."""
    body, headers = standin.signed_delivery(event, secret)
    return app.test_client().post("/stripe/webhook", data=body, headers=headers)


def post_form(client: FlaskClient, path: str, **fields: str) -> Any:
    token = csrf_token(client.get("/usage").get_data(as_text=True))
    return client.post(path, data={"csrf_token": token, **fields})


def checkout(client: FlaskClient, path: str, plan: str) -> str:
    """Start a checkout as the signed-in user; the Checkout Session's id."""
    started = post_form(client, path, plan=plan)
    assert started.status_code == 303, started.get_data(as_text=True)[:300]
    found = re.search(r"/pay/(cs_test_\w+)$", started.headers["Location"])
    assert found, started.headers["Location"]
    return found.group(1)


def region(client: FlaskClient, path: str = "/usage/current") -> str:
    return re.sub(r"\s+", " ", client.get(path).get_data(as_text=True))


def subscribe(app: Flask, standin: StripeStandIn, client: FlaskClient, plan: str, **kw: Any) -> str:
    """Pay a checkout and deliver Stripe's events; the subscription's id."""
    session_id = checkout(client, "/billing/checkout", plan)
    events = standin.complete_checkout(session_id, **kw)
    for event in events:
        assert deliver(app, standin, event).status_code == 200
    return str(standin.checkout_session(session_id)["subscription"])


def test_a_free_user_upgrades_to_pro(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn
) -> None:
    user = make_user(session, password=PASSWORD)
    _, key = create_api_key(session, "backend", clock.now())
    session.commit()
    browser = signed_in(user.email)
    page = region(browser, "/usage")
    assert "Upgrade to Starter" in page and "Upgrade to Pro" in page and "€15.00 a month" in page

    session_id = checkout(browser, "/billing/checkout", "pro")
    paid = standin.checkout_session(session_id)
    assert paid["client_reference_id"] == f"user:{user.id}"
    assert paid["success_url"].endswith("/usage?upgrading=pro")
    # Back from Stripe before the webhook: the page says so, and polls.
    assert "Finishing your upgrade" in region(browser, "/usage?upgrading=pro")

    completed, created = standin.complete_checkout(session_id)
    assert json.loads(deliver(app, standin, completed).data)["outcome"] == "applied"
    assert json.loads(deliver(app, standin, created).data)["outcome"] == "unchanged"

    answer = app.test_client().get(
        f"/api/v1/users/{user.email}/usage", headers={"Authorization": f"Bearer {key}"}
    )
    usage = json.loads(answer.data)
    assert (usage["plan"], usage["included"], usage["allowed"]) == ("pro", 75, True)
    poll = region(browser, "/usage/current?upgrading=pro")
    assert "Pro plan" in poll and "Finishing your upgrade" not in poll
    assert "Manage billing" in poll and "Upgrade to" not in poll
    subscription = session.scalars(select(UserSubscription)).one()
    stripe_side = standin.subscription(subscription.stripe_subscription_id)
    item = stripe_side["items"]["data"][0]
    assert subscription.current_period_start.timestamp() == item["current_period_start"]


def test_a_capped_user_is_offered_the_upgrade_where_they_hit_the_cap(
    session: Session, standin: StripeStandIn, signed_in: SignIn
) -> None:
    user = make_user(session, password=PASSWORD)
    session.commit()
    record_usage(session, user.id, idempotency_key="all", now=clock.now(), quantity=5)
    page = region(signed_in(user.email), "/usage")
    assert "Monthly limit reached" in page
    assert 'action="/billing/checkout"' in page and 'value="starter"' in page


def test_manage_billing_opens_stripes_portal_for_the_customer(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn
) -> None:
    user = make_user(session, password=PASSWORD)
    session.commit()
    browser = signed_in(user.email)
    assert post_form(browser, "/billing/manage").status_code == 404  # nothing to manage yet
    subscribe(app, standin, browser, "starter")
    opened = post_form(browser, "/billing/manage")
    assert opened.status_code == 303 and opened.headers["Location"].startswith(standin.url)
    assert browser.post("/billing/manage").status_code == 400  # no CSRF token


def test_a_team_adds_seats_and_the_pool_grows(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn
) -> None:
    org = make_org(session, plan="team", seats=2, customer=None)
    admin = make_user(session, org=org, role="admin", password=PASSWORD)
    member = make_user(session, org=org, password=PASSWORD)
    session.commit()
    browser = signed_in(admin.email)
    session_id = checkout(browser, f"/orgs/{org.slug}/billing/checkout", "team")
    events = standin.complete_checkout(session_id)
    for event in events:
        deliver(app, standin, event)
    subscription_id = str(standin.checkout_session(session_id)["subscription"])
    assert check_usage(session, member.id, clock.now()).included == 100

    deliver(app, standin, standin.update_subscription(subscription_id, quantity=5))
    session.expire_all()
    assert check_usage(session, member.id, clock.now()).included == 250
    assert session.get(Organization, org.id).seats == 5
    managed = post_form(browser, f"/orgs/{org.slug}/billing/manage")
    assert managed.status_code == 303


def test_only_admins_may_start_billing_for_an_organization(
    session: Session, standin: StripeStandIn, signed_in: SignIn
) -> None:
    org = make_org(session, plan="team", seats=2)
    member = make_user(session, org=org, password=PASSWORD)
    stranger = make_user(session, password=PASSWORD)
    session.commit()
    for path in (f"/orgs/{org.slug}/billing/checkout", f"/orgs/{org.slug}/billing/manage"):
        assert post_form(signed_in(member.email), path, plan="team").status_code == 403
        assert post_form(signed_in(stranger.email), path, plan="team").status_code == 404


def test_a_failed_payment_shows_until_it_recovers(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn
) -> None:
    user = make_user(session, password=PASSWORD)
    session.commit()
    browser = signed_in(user.email)
    subscription_id = subscribe(app, standin, browser, "pro")
    deliver(app, standin, standin.fail_payment(subscription_id))
    failed = region(browser)
    assert "Your last payment failed" in failed and "Manage billing" in failed
    assert check_usage(session, user.id, clock.now()).plan.id == "pro"  # past_due keeps the plan
    deliver(app, standin, standin.recover_payment(subscription_id))
    assert "Your last payment failed" not in region(browser)


def test_a_cancellation_at_period_end_falls_back_at_the_periods_end(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn, clock: FrozenClock
) -> None:
    user = make_user(session, password=PASSWORD)
    session.commit()
    browser = signed_in(user.email)
    subscription_id = subscribe(app, standin, browser, "pro")
    deliver(app, standin, standin.cancel(subscription_id, at_period_end=True))
    status = check_usage(session, user.id, clock())
    assert "Ends on " in region(browser) and "· then Free" in region(browser)
    assert status.plan.id == "pro"

    clock.now = status.period.end  # the period is over; Stripe's event may lag
    assert check_usage(session, user.id, clock()).plan.id == "free"
    ended = standin.renew(subscription_id)
    assert ended["type"] == "customer.subscription.deleted"
    deliver(app, standin, ended)
    session.expire_all()
    assert session.scalars(select(UserSubscription.status)).one() == "canceled"
    assert check_usage(session, user.id, clock()).plan.id == "free"


def test_a_trial_shows_its_end_and_gives_the_plans_allowance(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn
) -> None:
    user = make_user(session, password=PASSWORD)
    session.commit()
    browser = signed_in(user.email)
    subscribe(app, standin, browser, "pro", trial_days=14)
    status = check_usage(session, user.id, clock.now())
    assert (status.plan.id, status.included, status.trialing) == ("pro", 75, True)
    assert status.period.end - status.period.start == timedelta(days=14)
    end = status.period.end
    assert f"Ends {end:%b} {end.day}, {end.year}; then €15.00 a month" in region(browser)


def test_replayed_reordered_and_badly_signed_events(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn
) -> None:
    org = make_org(session, plan="team", seats=2, customer=None)
    admin = make_user(session, org=org, role="admin", password=PASSWORD)
    session.commit()
    session_id = checkout(signed_in(admin.email), f"/orgs/{org.slug}/billing/checkout", "team")
    completed, created = standin.complete_checkout(session_id)
    subscription_id = str(standin.checkout_session(session_id)["subscription"])
    grown = standin.update_subscription(subscription_id, quantity=7)

    # Badly signed: refused, nothing kept.
    refused = deliver(app, standin, grown, secret="whsec_someoneelse0000")
    assert refused.status_code == 400
    assert session.scalar(select(func.count()).select_from(StripeEvent)) == 0
    # Newest first, then the older ones: the newest state stays.
    for event in (grown, created, completed):
        assert deliver(app, standin, event).status_code == 200
    session.expire_all()
    assert session.get(Organization, org.id).seats == 7
    # Twice: acknowledged, and nothing changes.
    replay = deliver(app, standin, completed)
    assert json.loads(replay.data)["outcome"] == "replayed"
    assert session.scalar(select(func.count()).select_from(StripeEvent)) == 3


def test_a_stale_signature_cannot_be_made_fresh_with_a_second_timestamp(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn, clock: FrozenClock
) -> None:
    user = make_user(session, password=PASSWORD)
    session.commit()
    completed, _ = standin.complete_checkout(
        checkout(signed_in(user.email), "/billing/checkout", "pro")
    )
    an_hour_ago = int(clock().timestamp()) - 3600
    body, headers = standin.signed_delivery(completed, SECRET, timestamp=an_hour_ago)
    stale = headers["Stripe-Signature"]

    def post(signature: str) -> Any:
        return app.test_client().post(
            "/stripe/webhook", data=body, headers={"Stripe-Signature": signature}
        )

    # The library checks the HMAC with the first t=; the age is read from that one too.
    assert post(stale).status_code == 400
    assert post(f"{stale},t={int(clock().timestamp())}").status_code == 400
    fresh = standin.signed_delivery(completed, SECRET)[1]["Stripe-Signature"]
    assert post(f"{fresh},t={int(clock().timestamp())}").status_code == 400  # two t=: refused
    assert session.scalar(select(func.count()).select_from(StripeEvent)) == 0
    assert post(fresh).status_code == 200


def test_without_a_webhook_secret_the_endpoint_is_not_there(
    app: Flask, standin: StripeStandIn
) -> None:
    app.config["STRIPE_WEBHOOK_SECRET"] = None
    event = standin.complete_checkout(
        standin_checkout(standin, customer_email="someone@example.com")
    )[0]
    body, headers = standin.signed_delivery(event, SECRET)
    assert app.test_client().post("/stripe/webhook", data=body, headers=headers).status_code == 404


def standin_checkout(standin: StripeStandIn, **params: Any) -> str:
    """A Checkout Session made in Stripe without the portal (another app, the Dashboard)."""
    from portal.billing.settings import load_stripe_settings
    from portal.billing.stripe_client import build_stripe_client

    client = build_stripe_client(
        load_stripe_settings({"STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": standin.url})
    )
    prices = client.v1.prices.list(params={"lookup_keys": ["pro", "pro_usage"]}).data
    made = client.v1.checkout.sessions.create(
        params={
            "mode": "subscription",
            "line_items": [
                {"price": price.id, **({"quantity": 1} if price.lookup_key == "pro" else {})}
                for price in prices
            ],
            "success_url": "https://elsewhere.example/done",
            "cancel_url": "https://elsewhere.example/cancel",
            **params,
        }
    )
    return str(made.id)


def test_an_unknown_customer_is_acknowledged_and_shown_to_an_operator(
    app: Flask, session: Session, standin: StripeStandIn
) -> None:
    completed, created = standin.complete_checkout(
        standin_checkout(standin, customer_email="stranger@elsewhere.example")
    )
    subscription_id = created["data"]["object"]["id"]
    for event in (completed, created):
        answer = deliver(app, standin, event)
        assert answer.status_code == 200
        assert json.loads(answer.data)["outcome"] == "unmatched"
    assert session.scalar(select(func.count()).select_from(UserSubscription)) == 0
    status = app.test_cli_runner().invoke(args=["stripe-status"])
    assert status.exit_code == 0
    assert "unmatched 2" in status.output and subscription_id in status.output
    listed = json.loads(app.test_cli_runner().invoke(args=["stripe-status", "--json"]).output)
    assert {event["outcome"] for event in listed["needs_attention"]} == {"unmatched"}


def test_a_lost_webhook_is_repaired_by_sync_subscriptions(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn
) -> None:
    org = make_org(session, plan="team", seats=2, customer=None)
    admin = make_user(session, org=org, role="admin", password=PASSWORD)
    session.commit()
    session_id = checkout(signed_in(admin.email), f"/orgs/{org.slug}/billing/checkout", "team")
    standin.complete_checkout(session_id)  # the webhook never arrives
    subscription_id = str(standin.checkout_session(session_id)["subscription"])
    standin.update_subscription(subscription_id, quantity=4)
    runner = app.test_cli_runner()

    repaired = runner.invoke(args=["sync-subscriptions", "--json"])
    assert repaired.exit_code == 0, repaired.output
    summary = json.loads(repaired.output)
    assert summary["outcomes"]["applied"] == 1 and summary["problems"] == []
    session.expire_all()
    assert (session.get(Organization, org.id).seats, session.get(Organization, org.id).plan_id) == (
        4,
        "team",
    )
    again = runner.invoke(args=["sync-subscriptions", "--json"])
    assert json.loads(again.output)["outcomes"] == {
        "applied": 0,
        "unchanged": 1,
        "ignored": 0,
        "unmatched": 0,
        "failed": 0,
    }
    app.config["STRIPE_API_KEY"] = None
    without_key = runner.invoke(args=["sync-subscriptions"], env={"STRIPE_API_KEY": ""})
    assert without_key.exit_code == 2 and "STRIPE_API_KEY" in without_key.output


def resubscribed(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn
) -> tuple[int, dict[str, Any]]:
    """A user who took Starter, canceled it at once, then Pro: the user's id and the
    cancellation's event."""
    user = make_user(session, password=PASSWORD)
    session.commit()
    browser = signed_in(user.email)
    starter = subscribe(app, standin, browser, "starter")
    canceled = standin.cancel(starter)
    assert deliver(app, standin, canceled).status_code == 200
    subscribe(app, standin, browser, "pro")
    assert check_usage(session, user.id, clock.now()).plan.id == "pro"
    return user.id, canceled


def test_sync_keeps_a_resubscribed_user_on_the_new_subscription(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn
) -> None:
    user_id, _ = resubscribed(app, session, standin, signed_in)
    # Stripe lists newest first: the canceled Starter comes last.
    synced = app.test_cli_runner().invoke(args=["sync-subscriptions", "--json"])
    assert synced.exit_code == 0, synced.output
    summary = json.loads(synced.output)
    assert (summary["outcomes"]["unchanged"], summary["outcomes"]["ignored"]) == (1, 1)
    session.expire_all()
    assert check_usage(session, user_id, clock.now()).plan.id == "pro"


def test_a_late_event_about_an_old_subscription_changes_nothing(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn
) -> None:
    user_id, canceled = resubscribed(app, session, standin, signed_in)
    retried = dict(canceled, id="evt_a_later_event_about_the_old_subscription")
    answer = deliver(app, standin, retried)
    assert (answer.status_code, json.loads(answer.data)["outcome"]) == (200, "ignored")
    session.expire_all()
    assert check_usage(session, user_id, clock.now()).plan.id == "pro"
    row = session.get(StripeEvent, retried["id"])
    assert row is not None and "has ended" in str(row.message)


def test_subscribing_again_after_a_period_end_cancellation_applies_before_stripes_deletion(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn, clock: FrozenClock
) -> None:
    user = make_user(session, password=PASSWORD)
    session.commit()
    browser = signed_in(user.email)
    starter = subscribe(app, standin, browser, "starter")
    deliver(app, standin, standin.cancel(starter, at_period_end=True))
    clock.now = check_usage(session, user.id, clock()).period.end  # over; the deletion lags
    assert check_usage(session, user.id, clock()).plan.id == "free"
    browser = signed_in(user.email)  # a month on: the earlier sign-in has expired
    completed, _ = standin.complete_checkout(checkout(browser, "/billing/checkout", "pro"))
    # The held subscription governs no more: no second request to Stripe, no pending event.
    assert json.loads(deliver(app, standin, completed).data)["outcome"] == "applied"
    session.expire_all()
    assert check_usage(session, user.id, clock()).plan.id == "pro"
    late = json.loads(deliver(app, standin, standin.renew(starter)).data)
    assert late["outcome"] == "ignored"
    session.expire_all()
    assert check_usage(session, user.id, clock()).plan.id == "pro"


@pytest.mark.parametrize("newest_first", [True, False])
def test_a_checkout_paid_twice_follows_the_newest_subscription_and_tells_an_operator(
    app: Flask,
    session: Session,
    standin: StripeStandIn,
    signed_in: SignIn,
    clock: FrozenClock,
    newest_first: bool,
) -> None:
    user = make_user(session, password=PASSWORD)
    session.commit()
    browser = signed_in(user.email)
    first, second = (checkout(browser, "/billing/checkout", plan) for plan in ("starter", "pro"))
    older = standin.complete_checkout(first)
    clock.advance(timedelta(seconds=1))
    newer = standin.complete_checkout(second)
    outcomes = [
        json.loads(deliver(app, standin, event).data)["outcome"]
        for event in ((*newer, *older) if newest_first else (*older, *newer))
    ]
    # Weighing the second against the first takes a second request to Stripe: a
    # delivery leaves that to sync-subscriptions, within its second.
    assert outcomes == ["applied", "unchanged", "pending", "pending"]
    synced = app.test_cli_runner().invoke(args=["sync-subscriptions", "--json"])
    summary = json.loads(synced.output)
    assert synced.exit_code == 1 and "two live subscriptions" in summary["problems"][0]
    assert summary["pending_events"] == ({"ignored": 2} if newest_first else {"unchanged": 2})
    session.expire_all()
    assert check_usage(session, user.id, clock()).plan.id == "pro"


def test_sync_ignores_the_ended_subscriptions_of_customers_the_portal_never_had(
    app: Flask, session: Session, standin: StripeStandIn
) -> None:
    for email in ("gone@elsewhere.example", "also-gone@elsewhere.example"):
        _, created = standin.complete_checkout(standin_checkout(standin, customer_email=email))
        standin.cancel(created["data"]["object"]["id"])
    runner = app.test_cli_runner()
    history = runner.invoke(args=["sync-subscriptions", "--json"])
    assert history.exit_code == 0, history.output
    assert json.loads(history.output)["outcomes"]["ignored"] == 2
    # A live subscription nobody holds is still one to look at.
    standin.complete_checkout(standin_checkout(standin, customer_email="new@elsewhere.example"))
    live = runner.invoke(args=["sync-subscriptions", "--json"])
    assert live.exit_code == 1 and len(json.loads(live.output)["problems"]) == 1


def test_usage_reaches_the_meter_once_across_an_upgrade_mid_period(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn, clock: FrozenClock
) -> None:
    user = make_user(session, password=PASSWORD)
    session.commit()
    browser = signed_in(user.email)
    subscription_id = subscribe(app, standin, browser, "starter")
    usage = Usage(session, clock())
    customer = str(standin.subscription(subscription_id)["customer"])
    usage.record(user, 30, billed_to=customer)  # 5 over starter's 25
    clock.advance(timedelta(days=10))
    upgraded = standin.update_subscription(
        subscription_id, plan_lookup_key="pro", restart_period=True
    )
    deliver(app, standin, upgraded)
    after = check_usage(session, user.id, clock())
    assert (after.plan.id, after.used, after.period.start) == ("pro", 0, clock())
    usage.now = clock()
    usage.record(user, 4, billed_to=customer)

    from portal.billing.settings import load_stripe_settings
    from portal.billing.stripe_client import StripeMeterEventGateway

    settings = load_stripe_settings({"STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": standin.url})
    gateway = StripeMeterEventGateway.from_settings(settings, timeout=CLIENT_TIMEOUT)
    summary = run_reporter(session, gateway, clock())
    assert summary.exit_code == 0
    # Both periods' usage, each unit once, in two meter events inside their periods.
    assert standin.totals() == {customer: 34}
    assert len(standin.events) == 2


def test_usage_between_stripes_upgrade_and_a_late_webhook_counts_where_stripe_bills_it(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn, clock: FrozenClock
) -> None:
    user = make_user(session, password=PASSWORD)
    session.commit()
    subscription_id = subscribe(app, standin, signed_in(user.email), "starter")
    customer = str(standin.subscription(subscription_id)["customer"])
    usage = Usage(session, clock())
    usage.record(user, 20, billed_to=customer)
    clock.advance(timedelta(days=10))
    upgraded_at = clock()
    upgraded = standin.update_subscription(
        subscription_id, plan_lookup_key="pro", restart_period=True
    )
    clock.advance(timedelta(minutes=30))  # the webhook is late: retried, or the portal was down
    usage.now = clock()
    usage.record(user, 10, billed_to=customer)
    usage.record(user, 2, event_type="refinement")
    assert check_usage(session, user.id, clock()).plan.id == "starter"  # as far as it knows

    deliver(app, standin, upgraded)
    session.expire_all()
    status = check_usage(session, user.id, clock())
    assert (status.plan.id, status.period.start, status.used) == ("pro", upgraded_at, 10)
    totals = session.execute(select(UsageRecord.plan_id, UsageRecord.used)).tuples().all()
    assert sorted(totals) == [("pro", 10), ("starter", 20)]
    assert json.loads(deliver(app, standin, dict(upgraded, id="evt_again")).data)["outcome"] == (
        "unchanged"  # moved once
    )

    from portal.billing.settings import load_stripe_settings
    from portal.billing.stripe_client import StripeMeterEventGateway

    settings = load_stripe_settings({"STRIPE_API_KEY": API_KEY, "STRIPE_API_BASE": standin.url})
    gateway = StripeMeterEventGateway.from_settings(settings, timeout=CLIENT_TIMEOUT)
    assert run_reporter(session, gateway, clock()).exit_code == 0
    assert_exactly_once(session, standin, usage.expected)
    # Each period's usage in its own meter event, timestamped inside Stripe's period.
    by_value = {event.value: event.timestamp for event in standin.events}
    assert by_value[20] < upgraded_at.timestamp() <= by_value[10]


def test_a_pools_usage_recorded_before_the_webhook_moves_with_each_members_share(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn, clock: FrozenClock
) -> None:
    org = make_org(session, plan="team", seats=2, customer=None)
    admin = make_user(session, org=org, role="admin", password=PASSWORD)
    member = make_user(session, org=org, password=PASSWORD)
    session.commit()
    session_id = checkout(signed_in(admin.email), f"/orgs/{org.slug}/billing/checkout", "team")
    for event in standin.complete_checkout(session_id):
        deliver(app, standin, event)
    subscription_id = str(standin.checkout_session(session_id)["subscription"])
    usage = Usage(session, clock())
    usage.record(member, 7)
    clock.advance(timedelta(days=3))
    upgraded = standin.update_subscription(
        subscription_id, plan_lookup_key="business", restart_period=True
    )
    clock.advance(timedelta(minutes=5))
    usage.now = clock()
    usage.record(member, 3)
    usage.record(admin, 4)

    deliver(app, standin, upgraded)
    session.expire_all()
    status = check_usage(session, member.id, clock())
    assert (status.plan.id, status.used, status.member_used) == ("business", 7, 3)
    assert check_usage(session, admin.id, clock()).member_used == 4
    pool = session.execute(select(UsageRecord.plan_id, UsageRecord.used)).tuples().all()
    assert sorted(pool) == [("business", 7), ("team", 7)]
    shares = session.execute(
        select(MemberUsage.period_start, MemberUsage.user_id, MemberUsage.used)
    ).tuples()
    assert {(start == status.period.start, user, used) for start, user, used in shares} == {
        (False, member.id, 7),
        (False, admin.id, 0),
        (True, member.id, 3),
        (True, admin.id, 4),
    }


def test_an_event_stripe_cannot_be_asked_about_is_acknowledged_and_left_pending(
    app: Flask,
    session: Session,
    standin: StripeStandIn,
    signed_in: SignIn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from portal.billing.stripe_client import StripeBilling, StripeUnavailable

    user = make_user(session, password=PASSWORD)
    session.commit()
    session_id = checkout(signed_in(user.email), "/billing/checkout", "pro")
    completed, _ = standin.complete_checkout(session_id)
    retrieve = StripeBilling.retrieve_subscription

    def unreachable(self: StripeBilling, subscription_id: str) -> Any:
        raise StripeUnavailable("connection refused")

    monkeypatch.setattr(StripeBilling, "retrieve_subscription", unreachable)
    answer = deliver(app, standin, completed)
    assert (answer.status_code, json.loads(answer.data)["outcome"]) == (200, "pending")
    assert session.scalars(select(StripeEvent.outcome)).one() == "pending"
    assert check_usage(session, user.id, clock.now()).plan.id == "free"

    # Should Stripe deliver it again all the same, the delivery finishes it.
    monkeypatch.setattr(StripeBilling, "retrieve_subscription", retrieve)
    assert json.loads(deliver(app, standin, completed).data)["outcome"] == "applied"
    session.expire_all()
    assert check_usage(session, user.id, clock.now()).plan.id == "pro"


def test_a_slow_stripe_leaves_the_event_pending_for_sync_within_the_webhooks_second(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn
) -> None:
    user = make_user(session, password=PASSWORD)
    session.commit()
    completed, _ = standin.complete_checkout(
        checkout(signed_in(user.email), "/billing/checkout", "pro")
    )
    standin.delay_billing(1.5)  # past the webhook's 0.8 s, within the pages' 3 s
    answer = deliver(app, standin, completed)
    assert (answer.status_code, json.loads(answer.data)["outcome"]) == (200, "pending")
    assert check_usage(session, user.id, clock.now()).plan.id == "free"

    synced = app.test_cli_runner().invoke(args=["sync-subscriptions", "--pending-only", "--json"])
    assert synced.exit_code == 0, synced.output
    assert json.loads(synced.output)["pending_events"] == {"applied": 1}
    session.expire_all()
    assert check_usage(session, user.id, clock.now()).plan.id == "pro"
    row = session.scalars(select(StripeEvent)).one()
    assert row.outcome == "applied" and f"user:{user.id}" in str(row.message)


def test_sync_handles_each_pending_event_and_records_its_real_outcome(
    app: Flask,
    session: Session,
    standin: StripeStandIn,
    signed_in: SignIn,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from portal.billing.stripe_client import StripeBilling, StripeUnavailable

    user = make_user(session, password=PASSWORD)
    session.commit()
    ours, _ = standin.complete_checkout(checkout(signed_in(user.email), "/billing/checkout", "pro"))
    strangers, _ = standin.complete_checkout(
        standin_checkout(standin, customer_email="stranger@elsewhere.example")
    )
    retrieve = StripeBilling.retrieve_subscription

    def unreachable(self: StripeBilling, subscription_id: str) -> Any:
        raise StripeUnavailable("connection refused")

    monkeypatch.setattr(StripeBilling, "retrieve_subscription", unreachable)
    for event in (ours, strangers):
        deliver(app, standin, event)
    runner = app.test_cli_runner()
    # Stripe lists, but cannot be asked about one subscription: the events stay
    # pending, said to be, rather than marked applied unhandled.
    still = runner.invoke(args=["sync-subscriptions", "--json"])
    assert still.exit_code == 1
    assert sum("still pending" in line for line in json.loads(still.output)["problems"]) == 2
    assert set(session.scalars(select(StripeEvent.outcome))) == {"pending"}

    monkeypatch.setattr(StripeBilling, "retrieve_subscription", retrieve)
    synced = runner.invoke(args=["sync-subscriptions", "--pending-only", "--json"])
    assert synced.exit_code == 0  # the unmatched one is for stripe-status, as a delivery's is
    assert json.loads(synced.output)["pending_events"] == {"unchanged": 1, "unmatched": 1}
    session.expire_all()
    assert check_usage(session, user.id, clock.now()).plan.id == "pro"
    outcomes = dict(session.execute(select(StripeEvent.id, StripeEvent.outcome)).tuples().all())
    assert outcomes == {ours["id"]: "applied", strangers["id"]: "unmatched"}
    again = runner.invoke(args=["sync-subscriptions", "--pending-only", "--json"])
    assert json.loads(again.output)["pending_events"] == {}


def test_the_organization_page_offers_billing_to_its_admins(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn
) -> None:
    org = make_org(session, plan="team", seats=2, customer=None)
    admin = make_user(session, org=org, role="admin", password=PASSWORD)
    session.commit()
    browser = signed_in(admin.email)
    before = region(browser, f"/orgs/{org.slug}/usage")
    assert "Subscribe to Team" in before and "Manage billing" not in before
    session_id = checkout(browser, f"/orgs/{org.slug}/billing/checkout", "team")
    for event in standin.complete_checkout(session_id, trial_days=7):
        deliver(app, standin, event)
    after = region(browser, f"/orgs/{org.slug}/usage")
    assert "Manage billing" in after and "Trial" in after and "Subscribe to" not in after
    subscription_id = str(standin.checkout_session(session_id)["subscription"])
    deliver(app, standin, standin.cancel(subscription_id, at_period_end=True))
    assert "· then members are on Free" in region(browser, f"/orgs/{org.slug}/usage")


def test_an_organization_subscribes_once_and_again_after_its_subscription_ends(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn
) -> None:
    org = make_org(session, plan="team", seats=2, customer=None)
    admin = make_user(session, org=org, role="admin", password=PASSWORD)
    session.commit()
    browser = signed_in(admin.email)
    page = f"/orgs/{org.slug}/usage"
    session_id = checkout(browser, f"/orgs/{org.slug}/billing/checkout", "team")
    for event in standin.complete_checkout(session_id):
        deliver(app, standin, event)

    # Subscribed: a second Checkout would bill a second subscription.
    again = post_form(browser, f"/orgs/{org.slug}/billing/checkout", plan="business")
    assert again.status_code == 302 and again.headers["Location"] == page
    assert "is on the Team plan: change it in Manage billing" in region(browser, page)

    # Ended (canceled now): the customer stays, and the organization may subscribe anew.
    subscription_id = str(standin.checkout_session(session_id)["subscription"])
    deliver(app, standin, standin.cancel(subscription_id))
    ended = region(browser, page)
    assert "Subscribe to Team" in ended and "Manage billing" in ended
    assert checkout(browser, f"/orgs/{org.slug}/billing/checkout", "business")


def test_a_failed_payment_of_a_pool_sends_members_to_their_admins(
    app: Flask, session: Session, standin: StripeStandIn, signed_in: SignIn
) -> None:
    org = make_org(session, plan="team", seats=2, customer=None)
    admin = make_user(session, org=org, role="admin", password=PASSWORD)
    member = make_user(session, org=org, password=PASSWORD)
    session.commit()
    admins = signed_in(admin.email)
    session_id = checkout(admins, f"/orgs/{org.slug}/billing/checkout", "team")
    for event in standin.complete_checkout(session_id):
        deliver(app, standin, event)
    deliver(
        app,
        standin,
        standin.fail_payment(str(standin.checkout_session(session_id)["subscription"])),
    )

    members = signed_in(member.email)
    seen = region(members)
    assert f"The last payment for {org.name} failed" in seen
    assert "Ask your organization's admins" in seen and "Manage billing" not in seen
    assert post_form(members, "/billing/manage").status_code == 404  # what it used to offer
    told = region(admins)
    manage = f'action="/orgs/{org.slug}/billing/manage"'
    assert manage in told and "Ask your organization's admins" not in told
    assert post_form(admins, f"/orgs/{org.slug}/billing/manage").status_code == 303


def test_start_up_says_when_stripe_webhooks_are_not_set_up(
    database_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    from portal import create_app

    with caplog.at_level("WARNING", logger="portal"):
        create_app({"SQLALCHEMY_DATABASE_URI": database_url, "STRIPE_WEBHOOK_SECRET": None})
    assert "STRIPE_WEBHOOK_SECRET is not set: POST /stripe/webhook answers 404" in caplog.text
