"""A Stripe subscription, as the portal reads it and applies it to its billing subjects."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session

from portal.billing.subscriptions import (
    HeldSubscription,
    NotUnderstood,
    Outcome,
    SubjectRef,
    Subscription,
    apply_subscription,
    read_subscription,
    supersedes,
)
from portal.models import UserSubscription
from portal.usage import SubjectKind, check_usage
from tests.factories import make_org, make_user

START = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
END = datetime(2026, 4, 10, 9, 0, tzinfo=UTC)


class Stripe:
    """Stripe as these tests have it: the subscriptions given, by id."""

    def __init__(self, *subscriptions: Mapping[str, Any]) -> None:
        self.subscriptions = {str(s["id"]): s for s in subscriptions}
        self.asked: list[str] = []

    def retrieve_subscription(self, subscription_id: str) -> Mapping[str, Any] | None:
        self.asked.append(subscription_id)
        return self.subscriptions.get(subscription_id)


NO_STRIPE = Stripe()


def stripe_subscription(
    plan: str = "pro", *, quantity: int = 1, status: str = "active", **fields: Any
) -> dict[str, Any]:
    """A subscription object in the shape of Stripe's API (2026-10-28)."""

    def item(lookup_key: str, usage_type: str, quantity: int | None) -> dict[str, Any]:
        price = {
            "id": f"price_{lookup_key}",
            "lookup_key": lookup_key,
            "recurring": {"usage_type": usage_type, "interval": "month"},
        }
        found: dict[str, Any] = {
            "id": f"si_{lookup_key}",
            "price": price,
            "current_period_start": int(START.timestamp()),
            "current_period_end": int(END.timestamp()),
        }
        if quantity is not None:
            found["quantity"] = quantity
        return found

    return {
        "id": "sub_1",
        "object": "subscription",
        "customer": "cus_1",
        "status": status,
        "created": int(START.timestamp()),
        "billing_cycle_anchor": int(START.timestamp()),
        "cancel_at_period_end": False,
        "trial_end": None,
        "metadata": {},
        "items": {
            "data": [item(plan, "licensed", quantity), item(f"{plan}_usage", "metered", None)]
        },
        **fields,
    }


def test_the_licensed_prices_lookup_key_names_the_plan_and_its_quantity_the_seats() -> None:
    read = read_subscription(stripe_subscription("team", quantity=12))
    assert (read.plan.id, read.seats, read.status) == ("team", 12, "active")
    assert (read.period_start, read.period_end, read.anchor) == (START, END, START)


@pytest.mark.parametrize(
    "items",
    [[], [{"price": {"lookup_key": "enterprise", "recurring": {"usage_type": "licensed"}}}]],
)
def test_a_subscription_without_a_known_plan_is_not_understood(items: list[Any]) -> None:
    with pytest.raises(NotUnderstood):
        read_subscription(stripe_subscription(items={"data": items}))


def test_a_new_subscription_gives_the_user_its_plan_and_stripes_period(session: Session) -> None:
    user = make_user(session)
    session.commit()
    subject = SubjectRef(SubjectKind.USER, user.id)
    applied = apply_subscription(
        session, read_subscription(stripe_subscription()), NO_STRIPE, START, named=subject
    )
    session.commit()
    assert applied.outcome is Outcome.APPLIED
    status = check_usage(session, user.id, START + timedelta(days=1))
    assert (status.plan.id, status.included, status.period.start, status.period.end) == (
        "pro",
        75,
        START,
        END,
    )
    # The same state again changes nothing.
    again = apply_subscription(session, read_subscription(stripe_subscription()), NO_STRIPE, START)
    assert (again.outcome, again.subject) == (Outcome.UNCHANGED, subject)


def test_seats_and_status_follow_for_an_organization(session: Session) -> None:
    org = make_org(session, plan="team", seats=2, customer=None)
    member = make_user(session, org=org)
    session.commit()
    named = stripe_subscription(
        "team", quantity=5, metadata={"portal_subject": f"organization:{org.id}"}
    )
    assert (
        apply_subscription(session, read_subscription(named), NO_STRIPE, START).outcome
        is Outcome.APPLIED
    )
    assert check_usage(session, member.id, START + timedelta(days=1)).included == 250
    canceled = stripe_subscription("team", quantity=5, status="canceled")
    apply_subscription(session, read_subscription(canceled), NO_STRIPE, START)
    session.commit()
    assert check_usage(session, member.id, START + timedelta(days=1)).plan.id == "free"


def test_a_plan_for_the_wrong_kind_of_subject_fails(session: Session) -> None:
    user = make_user(session)
    session.commit()
    applied = apply_subscription(
        session,
        read_subscription(stripe_subscription("team")),
        NO_STRIPE,
        START,
        named=SubjectRef(SubjectKind.USER, user.id),
    )
    assert applied.outcome is Outcome.FAILED and "not for a user" in applied.message
    assert session.get(UserSubscription, user.id) is None


def test_a_subscription_nobody_holds_is_unmatched(session: Session) -> None:
    applied = apply_subscription(
        session, read_subscription(stripe_subscription()), NO_STRIPE, START
    )
    assert applied.outcome is Outcome.UNMATCHED and "cus_1" in applied.message


def test_canceled_at_period_end_governs_until_then_and_shows_it(session: Session) -> None:
    org = make_org(session, plan="team", seats=2)
    user = make_user(session, org=org)
    session.commit()
    ending = stripe_subscription(cancel_at_period_end=True)
    apply_subscription(
        session,
        read_subscription(ending),
        NO_STRIPE,
        START,
        named=SubjectRef(SubjectKind.USER, user.id),
    )
    session.commit()
    before = check_usage(session, user.id, END - timedelta(minutes=1))
    assert (before.plan.id, before.ends_at, before.fallback.id) == ("pro", END, "team")
    after = check_usage(session, user.id, END)  # even before Stripe's webhook says so
    assert after.plan.id == "team"


def test_subject_references_are_parsed_strictly() -> None:
    assert SubjectRef.parse("user:12") == SubjectRef(SubjectKind.USER, 12)
    assert SubjectRef.parse("organization:3") == SubjectRef(SubjectKind.ORGANIZATION, 3)
    for text in (None, "", "user:", "user:x", "admin:1", "user:1:2", "user:99999999999", 12):
        assert SubjectRef.parse(text) is None, text


def _read(
    subscription_id: str, *, status: str = "active", created: datetime = START
) -> Subscription:
    return read_subscription(
        stripe_subscription(id=subscription_id, status=status, created=int(created.timestamp()))
    )


def test_a_subject_follows_its_newest_live_subscription_whatever_the_order() -> None:
    old = HeldSubscription("sub_old", "active", START)
    new = HeldSubscription("sub_new", "active", START + timedelta(minutes=1))
    assert supersedes(_read("sub_new", created=START + timedelta(minutes=1)), old) is None
    assert "older than sub_new" in str(supersedes(_read("sub_old"), new))
    # The same second: the greater id wins, whichever arrives first.
    twin = HeldSubscription("sub_b", "active", START)
    assert supersedes(_read("sub_a"), twin) is not None
    assert supersedes(_read("sub_b"), HeldSubscription("sub_a", "active", START)) is None


def test_an_ended_subscription_changes_only_the_subject_that_follows_it() -> None:
    held = HeldSubscription("sub_new", "active", START)
    assert "has ended" in str(supersedes(_read("sub_old", status="canceled"), held))
    assert "holds none" in str(supersedes(_read("sub_old", status="canceled"), None))
    assert supersedes(_read("sub_new", status="canceled"), held) is None  # its own end
    # A live one replaces one that has ended, however old it is.
    ended = HeldSubscription("sub_new", "canceled", START + timedelta(days=1))
    assert supersedes(_read("sub_other"), ended) is None


def test_applying_an_old_subscription_asks_stripe_about_the_held_one(session: Session) -> None:
    user = make_user(session)
    session.commit()
    subject = SubjectRef(SubjectKind.USER, user.id)
    newer = stripe_subscription(id="sub_new", created=int((START + timedelta(hours=1)).timestamp()))
    older = stripe_subscription("starter", id="sub_old")
    stripe = Stripe(newer, older)
    assert apply_subscription(
        session, read_subscription(newer), stripe, START, named=subject
    ).outcome is (Outcome.APPLIED)
    assert stripe.asked == []  # nothing held yet: nothing to ask
    ignored = apply_subscription(session, read_subscription(older), stripe, START, named=subject)
    assert (ignored.outcome, stripe.asked) == (Outcome.IGNORED, ["sub_new"])
    assert "two live subscriptions" in ignored.message
    session.commit()
    assert check_usage(session, user.id, START + timedelta(days=1)).plan.id == "pro"
