from __future__ import annotations

from datetime import timedelta

from sqlalchemy.orm import Session

from portal.usage import get_usage_history, record_usage
from portal.usage.recording import record_for
from portal.usage.requests import UsageRequest
from portal.usage.subjects import resolve_effective_plan
from tests.factories import T0, make_org, make_user


def backfill(session: Session, user_id: int, when_and_quantity: list[tuple[int, int]]) -> None:
    """Record usage ``days`` after T0, as if it had been recorded at the time."""
    effective = resolve_effective_plan(session, user_id, T0)
    for n, (days, quantity) in enumerate(when_and_quantity):
        moment = T0 + timedelta(days=days)
        request = UsageRequest(f"{user_id}-{n}", "suggestion", quantity, moment, None)
        record_for(session, effective, request, moment)
    session.commit()


def test_history_lists_twelve_periods_newest_first_without_gaps(session: Session) -> None:
    user = make_user(session, plan="starter")  # anchored at T0 = Mar 15th 12:00
    backfill(session, user.id, [(1, 10), (2, 20), (65, 7)])  # two in period 0, one in period 2
    now = T0 + timedelta(days=70)
    history = get_usage_history(session, user.id, now)
    rows = history.periods
    assert len(rows) == 12
    assert rows[0].is_current and rows[0].period.start == T0.replace(month=5)
    assert [r.period.start for r in rows] == sorted((r.period.start for r in rows), reverse=True)
    for newer, older in zip(rows, rows[1:], strict=False):
        assert older.period.end == newer.period.start
    assert [r.used for r in rows[:4]] == [7, 0, 30, 0]
    assert rows[2].overage_count == 5 and rows[2].overage_cost_cents == 175
    assert rows[1].included == 25 and rows[1].warning_level == "ok"


def test_history_of_a_team_member_is_the_pool_history_with_their_own_part(
    session: Session,
) -> None:
    org = make_org(session, plan="team", seats=1)
    alice, bob = make_user(session, org=org), make_user(session, org=org)
    session.commit()
    now = T0 + timedelta(days=2)
    record_usage(session, alice.id, idempotency_key="a", now=now, quantity=30)
    record_usage(session, bob.id, idempotency_key="b", now=now, quantity=25)
    session.commit()
    current = get_usage_history(session, alice.id, now).periods[0]
    assert (current.used, current.included, current.overage_count) == (55, 50, 5)
    assert current.overage_cost_cents == 125
    assert current.member_used == 30
    assert get_usage_history(session, bob.id, now).periods[0].member_used == 25
    assert get_usage_history(session, bob.id, now).periods[1].member_used == 0


def test_free_history_uses_calendar_months(session: Session) -> None:
    user = make_user(session)
    history = get_usage_history(session, user.id, T0, periods=3)
    assert [r.period.start.day for r in history.periods] == [1, 1, 1]
    assert [r.period.start.month for r in history.periods] == [3, 2, 1]
