from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from portal.usage import check_usage, record_usage
from tests.factories import T0, make_org, make_user


def test_trialing_subscription_gets_its_plans_allowance_not_free(session: Session) -> None:
    user = make_user(session, plan="pro", status="trialing")
    status = check_usage(session, user.id, T0 + timedelta(days=1))
    assert (status.plan.id, status.included, status.remaining) == ("pro", 75, 75)


def test_status_reports_period_days_left_and_projection(session: Session) -> None:
    user = make_user(session, plan="starter")  # period Mar 15 12:00 -> Apr 15 12:00 (31 days)
    now = T0 + timedelta(days=10)
    record_usage(session, user.id, idempotency_key="a", now=now, quantity=10)
    session.commit()
    status = check_usage(session, user.id, now)
    assert (status.period.start, status.period.end) == (T0, T0.replace(month=4))
    assert status.days_remaining == 21
    # 10 used in 10 of 31 days: 31 by the end, 6 over the 25 included.
    assert status.projected_used == 31
    assert status.projected_overage_cost_cents == 6 * 35
    body = status.as_dict()
    assert body["warning_level"] == "ok" and body["percent"] == 40.0
    assert body["billing_subject"] == f"user:{user.email}"


def test_projection_early_in_a_period_is_not_wild(session: Session) -> None:
    user = make_user(session, plan="pro")
    now = T0 + timedelta(minutes=5)
    record_usage(session, user.id, idempotency_key="a", now=now, quantity=2)
    session.commit()
    # Five minutes in, a linear projection would say ~17,000; at least a day is assumed.
    assert check_usage(session, user.id, now).projected_used == 62


def test_levels_and_reasons_across_the_thresholds(session: Session) -> None:
    org = make_org(session, plan="team", seats=2)  # pool of 100, overage 25 cents
    member = make_user(session, org=org)
    now = T0 + timedelta(days=1)
    seen = []
    for n, quantity in enumerate([79, 1, 15, 5, 10]):
        record_usage(session, member.id, idempotency_key=f"k{n}", now=now, quantity=quantity)
        status = check_usage(session, member.id, now)
        seen.append((status.used, str(status.warning_level), str(status.reason), status.allowed))
    assert seen == [
        (79, "ok", "within_quota", True),
        (80, "warning", "within_quota", True),
        (95, "critical", "within_quota", True),
        (100, "exceeded", "overage", True),
        (110, "exceeded", "overage", True),
    ]
    assert check_usage(session, member.id, now).overage_cost_cents == 250


def test_projection_on_a_hard_capped_plan_stops_at_the_cap(session: Session) -> None:
    user = make_user(session)  # free: 5 a calendar month
    now = T0.replace(day=2)
    record_usage(session, user.id, idempotency_key="a", now=now, quantity=4)
    session.commit()
    assert check_usage(session, user.id, now).projected_used == 5
