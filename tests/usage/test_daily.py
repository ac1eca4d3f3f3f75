"""The current period day by day: UTC days, zeros where nothing was used, a running total."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any

from sqlalchemy import event, update
from sqlalchemy.orm import Session

from portal.extensions import db
from portal.models import UsageEvent
from portal.periods import BillingPeriod
from portal.plans import get_plan
from portal.usage import check_usage, record_usage
from portal.usage.daily import DailyUsage, daily_usage, member_daily_usage, pool_daily_usage
from portal.usage.organizations import organization_period
from portal.usage.status import projected_used
from portal.usage.subjects import SubjectKind, resolve_effective_plan
from tests.factories import make_org, make_user

NOV_7 = datetime(2026, 11, 7, tzinfo=UTC)
"""A billing anchor at midnight: the period's days are whole UTC days, Nov 7 – Dec 6."""
_keys = itertools.count()


def use(session: Session, user_id: int, at: datetime, quantity: int = 1, **kwargs: object) -> None:
    record_usage(
        session,
        user_id,
        idempotency_key=f"k{next(_keys)}",
        now=at,
        occurred_at=at,
        quantity=quantity,
        **kwargs,
    )
    session.commit()


def own_daily(session: Session, user_id: int, now: datetime) -> DailyUsage:
    """The user's own billing subject day by day, as the dashboard reads it."""
    status = check_usage(session, user_id, now)
    return daily_usage(
        session, status.subject, status.period, now, plan=status.plan, included=status.included
    )


def figures(daily: DailyUsage) -> list[tuple[date, int, int]]:
    return [(d.day, d.suggestions, d.running_total) for d in daily.days]


def test_days_without_usage_show_zero_and_the_running_total_carries_on(
    session: Session,
) -> None:
    user = make_user(session, plan="pro", anchor=NOV_7)
    use(session, user.id, datetime(2026, 11, 7, 10, tzinfo=UTC), 3)
    use(session, user.id, datetime(2026, 11, 9, 8, tzinfo=UTC), 2)
    use(session, user.id, datetime(2026, 11, 10, 9, tzinfo=UTC), 4)
    now = datetime(2026, 11, 10, 12, tzinfo=UTC)

    daily = own_daily(session, user.id, now)

    assert figures(daily) == [
        (date(2026, 11, 7), 3, 3),
        (date(2026, 11, 8), 0, 3),
        (date(2026, 11, 9), 2, 5),
        (date(2026, 11, 10), 4, 9),
    ]
    status = check_usage(session, user.id, now)
    assert daily.used == status.used == 9
    assert daily.projected_used == status.projected_used


def test_a_day_is_a_utc_day_whatever_offset_the_usage_was_sent_with(session: Session) -> None:
    user = make_user(session, plan="pro", anchor=NOV_7)
    use(session, user.id, datetime(2026, 11, 8, 23, 59, 59, tzinfo=UTC))
    use(session, user.id, datetime(2026, 11, 9, 0, 0, tzinfo=UTC), 10)
    # 01:00 on Nov 10 in Athens is 23:00 on Nov 9 in UTC.
    use(session, user.id, datetime(2026, 11, 10, 1, tzinfo=timezone(timedelta(hours=2))), 100)

    daily = own_daily(session, user.id, datetime(2026, 11, 10, 6, tzinfo=UTC))

    assert [d.suggestions for d in daily.days] == [0, 1, 110, 0]


def test_the_first_hour_of_a_period_is_its_first_day(session: Session) -> None:
    user = make_user(session, plan="pro", anchor=NOV_7)
    now = NOV_7 + timedelta(hours=1)
    use(session, user.id, NOV_7 + timedelta(minutes=30), 2)

    daily = own_daily(session, user.id, now)

    assert figures(daily) == [(date(2026, 11, 7), 2, 2)]
    assert daily.projected_used == check_usage(session, user.id, now).projected_used == 60


def test_a_period_without_usage_is_all_zeros(session: Session) -> None:
    user = make_user(session, plan="starter", anchor=NOV_7)
    daily = own_daily(session, user.id, datetime(2026, 11, 12, 18, tzinfo=UTC))
    assert figures(daily) == [(date(2026, 11, d), 0, 0) for d in range(7, 13)]
    assert (daily.used, daily.included, daily.projected_used) == (0, 25, 0)


def test_a_pool_counts_its_members_and_a_member_only_their_own_part(session: Session) -> None:
    org = make_org(session, plan="team", seats=2, anchor=NOV_7)
    alice, bob = make_user(session, org=org), make_user(session, org=org)
    # Dave is a member, but pays for his own Pro plan: his usage is never the pool's.
    dave = make_user(session, org=org, plan="pro", anchor=NOV_7)
    session.commit()
    use(session, alice.id, datetime(2026, 11, 7, 9, tzinfo=UTC), 5)
    use(session, bob.id, datetime(2026, 11, 8, 9, tzinfo=UTC), 7)
    use(session, alice.id, datetime(2026, 11, 8, 10, tzinfo=UTC), 1)
    use(session, dave.id, datetime(2026, 11, 8, 11, tzinfo=UTC), 40)
    now = datetime(2026, 11, 8, 12, tzinfo=UTC)
    period = organization_period(org, now)

    pool = pool_daily_usage(session, org, period, now)
    alices = member_daily_usage(session, org, alice.id, now)
    daves = own_daily(session, dave.id, now)

    assert figures(pool) == [(date(2026, 11, 7), 5, 5), (date(2026, 11, 8), 8, 13)]
    assert pool.included == 100 and pool.used == check_usage(session, bob.id, now).used
    assert figures(alices) == [(date(2026, 11, 7), 5, 5), (date(2026, 11, 8), 1, 6)]
    assert alices.included == 50  # one seat's allowance, as the member's levels use
    assert figures(daves) == [(date(2026, 11, 7), 0, 0), (date(2026, 11, 8), 40, 40)]


def test_an_individual_does_not_see_the_pool_they_left(session: Session) -> None:
    """The same user's events, pooled then billed alone, land in different subjects."""
    org = make_org(session, plan="team", seats=1, anchor=NOV_7)
    erin = make_user(session, org=org)
    session.commit()
    use(session, erin.id, datetime(2026, 11, 7, 9, tzinfo=UTC), 3)
    now = datetime(2026, 11, 7, 12, tzinfo=UTC)
    effective = resolve_effective_plan(session, erin.id, now)
    assert effective.subject.kind is SubjectKind.ORGANIZATION

    alone = daily_usage(
        session,
        resolve_effective_plan(session, make_user(session).id, now).subject,
        effective.period_at(now),
        now,
        plan=effective.plan,
        included=50,
    )
    assert alone.used == 0
    assert pool_daily_usage(session, org, effective.period_at(now), now).used == 3


def test_refinements_are_recorded_but_not_counted(session: Session) -> None:
    user = make_user(session, plan="pro", anchor=NOV_7)
    use(session, user.id, NOV_7 + timedelta(hours=2), 4)
    use(session, user.id, NOV_7 + timedelta(hours=3), 9, event_type="refinement")
    assert own_daily(session, user.id, NOV_7 + timedelta(hours=5)).used == 4


def test_a_hard_capped_plan_never_projects_past_its_cap(session: Session) -> None:
    user = make_user(session)  # free: 5 a calendar month, hard cap
    use(session, user.id, datetime(2026, 11, 1, 9, tzinfo=UTC), 4)
    daily = own_daily(session, user.id, datetime(2026, 11, 2, 9, tzinfo=UTC))
    assert daily.days[0].running_total == 4
    assert daily.projected_used == 5


def test_a_period_that_starts_at_noon_keeps_the_morning_it_ends_on(session: Session) -> None:
    anchor = datetime(2026, 3, 15, 12, tzinfo=UTC)  # periods Mar 15 12:00 – Apr 15 12:00
    user = make_user(session, plan="pro", anchor=anchor)
    use(session, user.id, datetime(2026, 4, 15, 9, tzinfo=UTC), 6)
    daily = own_daily(session, user.id, datetime(2026, 4, 15, 10, tzinfo=UTC))
    assert daily.days[0].day == date(2026, 3, 15) and daily.days[-1].day == date(2026, 4, 15)
    assert len(daily.days) == 32 and daily.days[-1].suggestions == 6


def test_a_period_that_is_over_shows_every_day_and_projects_nothing(session: Session) -> None:
    org = make_org(session, plan="team", seats=1, anchor=NOV_7)
    member = make_user(session, org=org)
    session.commit()
    use(session, member.id, datetime(2026, 11, 20, 9, tzinfo=UTC), 12)
    now = datetime(2026, 12, 10, tzinfo=UTC)
    last = organization_period(org, now).previous()

    daily = pool_daily_usage(session, org, last, now)

    assert len(daily.days) == 30 and daily.days[-1].day == date(2026, 12, 6)
    assert daily.used == 12 and daily.projected_used is None


def test_usage_a_plan_change_left_past_its_periods_end_counts_on_its_last_day(
    session: Session,
) -> None:
    # The reporter had claimed it before the webhook ended the period early, so the
    # refile left it in the period it was recorded in (billing.refile).
    org = make_org(session, plan="team", seats=1, anchor=NOV_7)
    member = make_user(session, org=org)
    session.commit()
    use(session, member.id, datetime(2026, 11, 20, 9, tzinfo=UTC), 5)
    use(session, member.id, datetime(2026, 12, 8, 9, tzinfo=UTC), 3)  # the next period
    session.execute(
        update(UsageEvent)
        .where(UsageEvent.quantity == 3)
        .values(period_start=NOV_7, occurred_at=datetime(2026, 12, 8, 9, tzinfo=UTC))
    )
    now = datetime(2026, 12, 10, tzinfo=UTC)
    last = organization_period(org, now).previous()

    daily = pool_daily_usage(session, org, last, now)

    assert daily.used == 8  # the period's whole total, as its running total ends
    assert daily.days[-1].day == date(2026, 12, 6) and daily.days[-1].suggestions == 3


def test_a_hard_cap_never_projects_below_what_is_used(session: Session) -> None:
    free = get_plan("free")
    period = BillingPeriod(NOV_7, datetime(2026, 12, 7, tzinfo=UTC), NOV_7)
    # An allowance that shrank within the period: 9 used of 5.
    assert projected_used(free, 9, 5, period, datetime(2026, 11, 20, tzinfo=UTC)) == 9


def plan_of_the_statement_sent(call: Callable[[], object]) -> str:
    """PostgreSQL's plan for the last statement ``call`` sends, sequential scans priced out
    (the test's tables are too small for an index to be worth it otherwise)."""
    sent: list[tuple[str, Any]] = []

    def before(*args: Any) -> None:
        sent.append((args[2], args[3]))

    event.listen(db.engine, "before_cursor_execute", before)
    try:
        call()
    finally:
        event.remove(db.engine, "before_cursor_execute", before)
    statement, parameters = sent[-1]
    with db.engine.connect() as connection:
        connection.exec_driver_sql("SET enable_seqscan = off")
        rows = connection.exec_driver_sql(f"EXPLAIN {statement}", parameters).all()
    return "\n".join(row[0] for row in rows)


def test_each_subjects_days_are_found_through_its_index(session: Session) -> None:
    org = make_org(session, anchor=NOV_7)
    alice = make_user(session, org=org)
    solo = make_user(session, plan="pro", anchor=NOV_7)
    session.commit()
    now = NOV_7 + timedelta(days=2)
    period = organization_period(org, now)

    pool = plan_of_the_statement_sent(lambda: pool_daily_usage(session, org, period, now))
    member = plan_of_the_statement_sent(lambda: member_daily_usage(session, org, alice.id, now))
    individual = plan_of_the_statement_sent(lambda: own_daily(session, solo.id, now))

    assert re.search(r"Index Scan (using|on) ix_usage_events_pool_day ", pool), pool
    assert re.search(r"Index Scan (using|on) ix_usage_events_pool_day ", member), member
    # The member's part is found by the index's key, not filtered out of the pool's.
    assert any("Index Cond" in line and "user_id = " in line for line in member.splitlines()), (
        member
    )
    assert re.search(r"Index Scan (using|on) ix_usage_events_user_day ", individual), individual
