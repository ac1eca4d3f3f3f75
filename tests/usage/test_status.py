from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy.orm import Session

from portal.usage import UnknownUser, check_usage, record_usage
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


JAN_31 = datetime(2026, 1, 31, 9, 30, tzinfo=UTC)
"""An anchor on the 31st: periods end on Feb 28, Mar 31, Apr 30 …"""


def use(session: Session, user_id: int, quantity: int, at: datetime) -> None:
    record_usage(session, user_id, idempotency_key=f"{user_id}-{at}", now=at, quantity=quantity)
    session.commit()


def test_status_reads_the_total_of_the_period_containing_the_moment(session: Session) -> None:
    user = make_user(session, plan="pro", anchor=JAN_31)
    use(session, user.id, 7, JAN_31 + timedelta(days=3))  # Jan 31 – Feb 28
    use(session, user.id, 11, datetime(2026, 2, 28, 9, 30, tzinfo=UTC))  # exactly the next start
    use(session, user.id, 2, datetime(2026, 3, 30, 23, 0, tzinfo=UTC))
    moments = [
        JAN_31,
        JAN_31 + timedelta(days=3, hours=1),
        datetime(2026, 2, 28, 9, 29, 59, 999999, tzinfo=UTC),  # last instant of period one
        datetime(2026, 2, 28, 9, 30, tzinfo=UTC),
        datetime(2026, 3, 31, 9, 29, tzinfo=UTC),
        datetime(2026, 3, 31, 9, 30, tzinfo=UTC),  # a new period, nothing used yet
        datetime(2026, 6, 1, tzinfo=UTC),
    ]
    seen = [check_usage(session, user.id, moment).used for moment in moments]
    # Running totals per period: the one containing each moment, whenever it was used.
    assert seen == [7, 7, 7, 13, 13, 0, 0]


def test_status_of_every_kind_of_subject(session: Session) -> None:
    at = JAN_31 + timedelta(days=10)
    org = make_org(session, plan="team", seats=3, anchor=JAN_31 - timedelta(days=40))
    member = make_user(session, org=org)
    teammate = make_user(session, org=org)
    idle_member = make_user(session, org=org)
    # An individual paid plan wins over a live membership.
    paying_member = make_user(session, plan="starter", org=org, anchor=JAN_31)
    free = make_user(session)
    session.commit()
    use(session, member.id, 4, at - timedelta(days=1))
    use(session, teammate.id, 9, at - timedelta(hours=1))
    use(session, paying_member.id, 3, at - timedelta(hours=2))
    use(session, free.id, 2, at - timedelta(hours=3))
    use(session, member.id, 5, at - timedelta(days=35))  # the org's previous period

    member_status = check_usage(session, member.id, at)
    assert (member_status.used, member_status.member_used) == (13, 4)
    by_email = check_usage(session, member.email.upper(), at)
    assert by_email == member_status
    idle_status = check_usage(session, idle_member.id, at)
    assert (idle_status.used, idle_status.member_used) == (13, 0)
    paying = check_usage(session, paying_member.id, at)
    assert (paying.plan.id, paying.used, paying.member_used) == ("starter", 3, None)
    assert (check_usage(session, free.id, at).used, check_usage(session, free.id, at).plan.id) == (
        2,
        "free",
    )


def test_an_unknown_user_has_no_status(session: Session) -> None:
    with pytest.raises(UnknownUser):
        check_usage(session, 987654, JAN_31)
    with pytest.raises(UnknownUser):
        check_usage(session, "nobody@example.com", JAN_31)
