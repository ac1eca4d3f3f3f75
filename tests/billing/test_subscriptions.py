"""A Stripe subscription, as the portal reads it and applies it to its billing subjects."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.orm import Session

from portal.billing.subscriptions import (
    NotUnderstood,
    Outcome,
    SubjectRef,
    apply_subscription,
    read_subscription,
)
from portal.models import UserSubscription
from portal.usage import SubjectKind, check_usage
from tests.factories import make_org, make_user

START = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)
END = datetime(2026, 4, 10, 9, 0, tzinfo=UTC)


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
    applied = apply_subscription(session, read_subscription(stripe_subscription()), named=subject)
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
    again = apply_subscription(session, read_subscription(stripe_subscription()))
    assert (again.outcome, again.subject) == (Outcome.UNCHANGED, subject)


def test_seats_and_status_follow_for_an_organization(session: Session) -> None:
    org = make_org(session, plan="team", seats=2, customer=None)
    member = make_user(session, org=org)
    session.commit()
    named = stripe_subscription(
        "team", quantity=5, metadata={"portal_subject": f"organization:{org.id}"}
    )
    assert apply_subscription(session, read_subscription(named)).outcome is Outcome.APPLIED
    assert check_usage(session, member.id, START + timedelta(days=1)).included == 250
    canceled = stripe_subscription("team", quantity=5, status="canceled")
    apply_subscription(session, read_subscription(canceled))
    session.commit()
    assert check_usage(session, member.id, START + timedelta(days=1)).plan.id == "free"


def test_a_plan_for_the_wrong_kind_of_subject_fails(session: Session) -> None:
    user = make_user(session)
    session.commit()
    applied = apply_subscription(
        session,
        read_subscription(stripe_subscription("team")),
        named=SubjectRef(SubjectKind.USER, user.id),
    )
    assert applied.outcome is Outcome.FAILED and "not for a user" in applied.message
    assert session.get(UserSubscription, user.id) is None


def test_a_subscription_nobody_holds_is_unmatched(session: Session) -> None:
    applied = apply_subscription(session, read_subscription(stripe_subscription()))
    assert applied.outcome is Outcome.UNMATCHED and "cus_1" in applied.message


def test_canceled_at_period_end_governs_until_then_and_shows_it(session: Session) -> None:
    org = make_org(session, plan="team", seats=2)
    user = make_user(session, org=org)
    session.commit()
    ending = stripe_subscription(cancel_at_period_end=True)
    apply_subscription(
        session, read_subscription(ending), named=SubjectRef(SubjectKind.USER, user.id)
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
