from __future__ import annotations

import threading
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session

from portal.extensions import db
from portal.models import (
    Membership,
    MemberUsage,
    UsageEvent,
    UsageRecord,
    UserSubscription,
    new_event_id,
    new_event_ids,
    usage_report_backlog,
)
from portal.usage import (
    IdempotencyKeyReused,
    InvalidUsage,
    RecordResult,
    UnknownUser,
    check_usage,
    record_usage,
)
from tests.factories import NOW as CLOCK_START
from tests.factories import T0, FrozenClock, make_org, make_user

NOW = T0 + timedelta(days=3)
T = TypeVar("T")


def counts(session: Session) -> tuple[int, int, int]:
    """(events, sum of usage_records.used, sum of member_usage.used).

    Also checks that each recorded event waits in the reporter's backlog,
    once, with its billing subject and period (no reporter runs here), and
    that nothing refused or repeated got there.
    """
    events = {
        (e.id, e.organization_id, e.user_id, e.period_start)
        for e in session.scalars(select(UsageEvent))
    }
    waiting = session.execute(
        select(
            usage_report_backlog.c.event_id,
            usage_report_backlog.c.organization_id,
            usage_report_backlog.c.user_id,
            usage_report_backlog.c.period_start,
        )
    ).all()
    assert len(waiting) == len(events) and {tuple(row) for row in waiting} == events
    return (
        session.scalar(select(func.count()).select_from(UsageEvent)) or 0,
        session.scalar(select(func.coalesce(func.sum(UsageRecord.used), 0))) or 0,
        session.scalar(select(func.coalesce(func.sum(MemberUsage.used), 0))) or 0,
    )


def run_concurrently(workers: int, work: Callable[[int], T]) -> list[T]:
    """Run ``work(i)`` in ``workers`` threads released at the same instant."""
    barrier = threading.Barrier(workers)
    results: list[T | BaseException] = [RuntimeError("not run")] * workers

    def target(i: int) -> None:
        barrier.wait()
        try:
            results[i] = work(i)
        except BaseException as error:  # handed back to the test thread below
            results[i] = error

    threads = [threading.Thread(target=target, args=(i,)) for i in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results  # type: ignore[return-value]


def record_in_own_session(engine: Engine, user_id: int, key: str, **kwargs: object) -> RecordResult:
    with Session(engine) as own:
        outcome = record_usage(own, user_id, idempotency_key=key, now=NOW, **kwargs)
        own.commit()
        return outcome.result


def test_recording_counts_the_event_in_its_billing_period(session: Session) -> None:
    user = make_user(session, plan="starter")
    session.commit()
    outcome = record_usage(session, user.id, idempotency_key="a", now=NOW, quantity=3)
    session.commit()
    assert outcome.result is RecordResult.CREATED
    assert outcome.status.used == 3 and outcome.status.remaining == 22
    event = session.get(UsageEvent, outcome.event_id)
    assert event is not None
    assert (event.quantity, event.period_start) == (3, T0)
    # ... and waits in the reporter's backlog.
    waiting = session.execute(select(usage_report_backlog)).one()
    assert (waiting.event_id, waiting.user_id, waiting.organization_id) == (event.id, user.id, None)
    record = session.scalars(select(UsageRecord)).one()
    assert (record.user_id, record.used, record.included, record.plan_id) == (
        user.id,
        3,
        25,
        "starter",
    )


def test_same_idempotency_key_counts_once_and_returns_the_original_event(session: Session) -> None:
    user = make_user(session, plan="pro")
    first = record_usage(session, user.id, idempotency_key="retry-me", now=NOW)
    session.commit()
    again = record_usage(
        session, user.email, idempotency_key="retry-me", now=NOW + timedelta(hours=5)
    )
    session.commit()
    assert again.result is RecordResult.DUPLICATE
    assert again.event_id == first.event_id
    assert again.status.used == 1
    assert counts(session) == (1, 1, 0)


def test_idempotency_key_reused_for_other_usage_is_refused(session: Session) -> None:
    user = make_user(session, plan="pro")
    record_usage(session, user.id, idempotency_key="k", now=NOW)
    session.commit()
    with pytest.raises(IdempotencyKeyReused):
        record_usage(session, user.id, idempotency_key="k", now=NOW, quantity=2)
    session.rollback()
    assert counts(session) == (1, 1, 0)


def test_free_plan_is_hard_capped_and_a_refusal_records_nothing(session: Session) -> None:
    user = make_user(session)
    for i in range(5):
        assert (
            record_usage(session, user.id, idempotency_key=f"k{i}", now=NOW).result
            is RecordResult.CREATED
        )
        session.commit()
    refused = record_usage(session, user.id, idempotency_key="k5", now=NOW)
    session.commit()
    assert refused.result is RecordResult.LIMIT_REACHED
    assert refused.event_id is None
    assert not refused.status.allowed and str(refused.status.reason) == "limit_reached"
    assert counts(session) == (5, 5, 0)
    # A retry of an event that was counted is still a duplicate at the cap.
    assert (
        record_usage(session, user.id, idempotency_key="k4", now=NOW).result
        is RecordResult.DUPLICATE
    )


def test_quantity_larger_than_what_is_left_is_refused_whole(session: Session) -> None:
    user = make_user(session)
    record_usage(session, user.id, idempotency_key="a", now=NOW, quantity=3)
    session.commit()
    assert (
        record_usage(session, user.id, idempotency_key="b", now=NOW, quantity=3).result
        is RecordResult.LIMIT_REACHED
    )
    assert (
        record_usage(session, user.id, idempotency_key="c", now=NOW, quantity=2).result
        is RecordResult.CREATED
    )
    session.commit()
    assert counts(session) == (2, 5, 0)


def test_paid_plan_goes_into_overage_and_prices_it(session: Session) -> None:
    user = make_user(session, plan="starter")
    outcome = record_usage(session, user.id, idempotency_key="big", now=NOW, quantity=30)
    session.commit()
    status = outcome.status
    assert outcome.result is RecordResult.CREATED and status.allowed
    assert (status.used, status.included, status.overage_count) == (30, 25, 5)
    assert status.overage_cost_cents == 5 * 35
    assert str(status.reason) == "overage" and str(status.warning_level) == "exceeded"


def test_team_members_draw_on_one_pool_and_keep_their_own_share(session: Session) -> None:
    org = make_org(session, plan="team", seats=2)
    alice, bob = make_user(session, org=org), make_user(session, org=org)
    record_usage(session, alice.id, idempotency_key="a1", now=NOW, quantity=30)
    outcome = record_usage(session, bob.id, idempotency_key="b1", now=NOW, quantity=50)
    session.commit()
    assert (outcome.status.used, outcome.status.included, outcome.status.member_used) == (
        80,
        100,
        50,
    )
    assert check_usage(session, alice.id, NOW).member_used == 30
    assert counts(session) == (2, 80, 80)


def test_refinements_are_recorded_but_not_counted(session: Session) -> None:
    user = make_user(session)
    outcome = record_usage(session, user.id, idempotency_key="r", now=NOW, event_type="refinement")
    session.commit()
    assert outcome.result is RecordResult.CREATED and outcome.status.used == 0
    assert counts(session) == (1, 0, 0)


def test_backdated_event_counts_in_the_period_it_occurred_in(session: Session) -> None:
    user = make_user(session, plan="pro")
    now = T0 + timedelta(minutes=30)  # just after the period began
    record_usage(
        session, user.id, idempotency_key="late", now=now, occurred_at=T0 - timedelta(seconds=1)
    )
    session.commit()
    record = session.scalars(select(UsageRecord)).one()
    assert record.period_end == T0 and record.used == 1
    assert check_usage(session, user.id, now).used == 0


@pytest.mark.parametrize(
    ("field", "kwargs"),
    [
        ("quantity", {"quantity": 0}),
        ("quantity", {"quantity": -2}),
        ("quantity", {"quantity": 1.5}),
        ("quantity", {"quantity": True}),
        ("quantity", {"quantity": 10**9}),
        ("event_type", {"event_type": "teleport"}),
        ("idempotency_key", {"idempotency_key": ""}),
        ("idempotency_key", {"idempotency_key": "x" * 256}),
        ("occurred_at", {"occurred_at": NOW + timedelta(hours=1)}),
        ("occurred_at", {"occurred_at": NOW - timedelta(days=30)}),
        ("occurred_at", {"occurred_at": datetime(2026, 3, 18)}),
        ("metadata", {"metadata": ["not", "an", "object"]}),
        ("metadata", {"metadata": {"blob": "x" * 5000}}),
    ],
)
def test_bad_input_is_refused_with_the_field_named_and_changes_nothing(
    session: Session, field: str, kwargs: dict[str, object]
) -> None:
    user = make_user(session, plan="pro")
    session.commit()
    arguments: dict[str, object] = {"idempotency_key": "ok", **kwargs}
    with pytest.raises(InvalidUsage) as raised:
        record_usage(session, user.id, now=NOW, **arguments)  # type: ignore[arg-type]
    session.rollback()
    assert field in raised.value.errors
    assert counts(session) == (0, 0, 0)


def test_all_field_errors_are_reported_together(session: Session) -> None:
    with pytest.raises(InvalidUsage) as raised:
        record_usage(session, 1, idempotency_key="", quantity=0, event_type="?", now=NOW)
    assert set(raised.value.errors) == {"idempotency_key", "quantity", "event_type"}


def test_unknown_user_records_nothing(session: Session) -> None:
    with pytest.raises(UnknownUser):
        record_usage(session, "ghost@example.com", idempotency_key="g", now=NOW)
    session.rollback()
    assert counts(session) == (0, 0, 0)


def committed_counts() -> tuple[int, int, int]:
    """``counts`` as another connection sees them: only what is committed."""
    with Session(db.engine) as other:
        return counts(other)


@pytest.mark.parametrize("plan", ["pro", "free", "team"])
def test_recorded_usage_is_committed_when_record_usage_returns(session: Session, plan: str) -> None:
    org = make_org(session, plan="team") if plan == "team" else None
    user = make_user(session, plan="free" if org else plan, org=org)
    session.commit()
    outcome = record_usage(session, user.id, idempotency_key="durable", now=NOW)
    assert outcome.result is RecordResult.CREATED
    # No commit by the caller: another backend already sees the usage.
    assert committed_counts() == (1, 1, 1 if org else 0)
    session.rollback()  # and the caller cannot take it back by accident
    assert committed_counts() == (1, 1, 1 if org else 0)


def test_the_session_is_ready_for_a_new_transaction_after_recording(session: Session) -> None:
    user_id = make_user(session, plan="pro").id
    session.commit()
    record_usage(session, user_id, idempotency_key="then-begin", now=NOW)
    assert not session.in_transaction()
    with session.begin():  # as after any commit
        assert counts(session) == (1, 1, 0)


def test_recording_on_a_session_bound_to_one_connection_commits_too(session: Session) -> None:
    """A backend process may hold one connection and bind its session to it."""
    user_id = make_user(session, plan="pro").id
    session.commit()
    with db.engine.connect() as connection, Session(bind=connection) as own:
        first = record_usage(own, user_id, idempotency_key="bound-1", now=NOW)
        again = record_usage(own, user_id, idempotency_key="bound-1", now=NOW)
        assert (first.result, again.result) == (RecordResult.CREATED, RecordResult.DUPLICATE)
        assert committed_counts() == (1, 1, 0)
        assert not own.in_transaction()


def test_a_duplicate_and_a_refusal_leave_nothing_uncommitted(session: Session) -> None:
    user = make_user(session, plan="free")
    session.commit()
    for i in range(5):
        record_usage(session, user.id, idempotency_key=f"k{i}", now=NOW)
    again = record_usage(session, user.id, idempotency_key="k0", now=NOW)
    refused = record_usage(session, user.id, idempotency_key="k5", now=NOW)
    assert (again.result, refused.result) == (RecordResult.DUPLICATE, RecordResult.LIMIT_REACHED)
    assert committed_counts() == (5, 5, 0)


def test_changes_the_caller_left_pending_are_committed_with_the_usage(session: Session) -> None:
    user = make_user(session, plan="free")
    session.commit()
    session.add(
        UserSubscription(user_id=user.id, plan_id="pro", status="active", billing_anchor=T0)
    )
    outcome = record_usage(session, user.id, idempotency_key="after-upgrade", now=NOW)
    assert outcome.status.plan.id == "pro"
    with Session(db.engine) as other:
        assert other.scalar(select(func.count()).select_from(UserSubscription)) == 1
    assert committed_counts() == (1, 1, 0)


def test_an_uncommitted_caller_does_not_hold_the_running_total(session: Session) -> None:
    """A backend that never commits after recording must not stall every other one."""
    user_id = make_user(session, plan="pro").id
    session.commit()
    record_usage(session, user_id, idempotency_key="first", now=NOW)
    with Session(db.engine) as other:
        other.execute(text("SET lock_timeout = '2s'"))
        other.commit()
        second = record_usage(other, user_id, idempotency_key="second", now=NOW)
    assert second.status.used == 2


# Real concurrency: threads with their own sessions and connections.


def test_concurrent_increments_for_one_user_are_all_counted(session: Session) -> None:
    engine = db.engine
    threads, per_thread = 16, 500
    user_id = make_user(session, plan="pro").id
    session.commit()

    def work(worker: int) -> int:
        with Session(engine) as own:
            for i in range(per_thread):
                record_usage(own, user_id, idempotency_key=f"{worker}-{i}", now=NOW)
                own.commit()
        return per_thread

    run_concurrently(threads, work)
    assert check_usage(session, user_id, NOW).used == threads * per_thread
    assert counts(session) == (threads * per_thread, threads * per_thread, 0)


def test_hard_cap_holds_under_concurrent_calls(session: Session) -> None:
    engine = db.engine
    org = make_org(session, plan="team", seats=1)  # overage plan: control group
    free_user_id = make_user(session).id
    record_usage(session, free_user_id, idempotency_key="warm", now=NOW)
    session.commit()
    del org

    # 4 left on the free plan's 5; 50 callers race for them.
    results = run_concurrently(
        50, lambda i: record_in_own_session(engine, free_user_id, f"race-{i}")
    )
    assert Counter(results) == {RecordResult.CREATED: 4, RecordResult.LIMIT_REACHED: 46}
    assert counts(session) == (5, 5, 0)


def test_five_left_and_fifty_concurrent_callers_record_exactly_five(session: Session) -> None:
    engine = db.engine
    user_id = make_user(session).id
    session.commit()
    results = run_concurrently(50, lambda i: record_in_own_session(engine, user_id, f"race-{i}"))
    assert Counter(results)[RecordResult.CREATED] == 5
    assert check_usage(session, user_id, NOW).used == 5
    assert counts(session)[0] == 5


def test_one_idempotency_key_from_eight_threads_records_once(session: Session) -> None:
    engine = db.engine
    org = make_org(session, plan="business", seats=1)
    user_id = make_user(session, org=org).id
    session.commit()
    results = run_concurrently(
        8, lambda i: record_in_own_session(engine, user_id, "same-key", quantity=2)
    )
    assert Counter(results) == {RecordResult.CREATED: 1, RecordResult.DUPLICATE: 7}
    assert counts(session) == (1, 2, 2)


def test_pool_cap_and_counts_hold_when_members_race(session: Session) -> None:
    engine = db.engine
    org = make_org(session, plan="team", seats=1)
    members = [make_user(session, org=org).id for _ in range(4)]
    session.commit()
    results = run_concurrently(
        20, lambda i: record_in_own_session(engine, members[i % 4], f"m-{i}", quantity=5)
    )
    assert Counter(results) == {RecordResult.CREATED: 20}
    assert counts(session) == (20, 100, 100)
    assert check_usage(session, members[0], NOW).member_used == 25


def test_recorded_times_are_utc(session: Session) -> None:
    user = make_user(session, plan="pro")
    outcome = record_usage(session, user.id, idempotency_key="tz", now=NOW)
    session.commit()
    session.expire_all()
    event = session.get(UsageEvent, outcome.event_id)
    assert event is not None and event.occurred_at == NOW and event.occurred_at.tzinfo is UTC


# -- the plan in force when the recording statement runs governs --------------
# On PostgreSQL each process remembers a user's last resolved plan and the
# recording statement checks it still holds; these changes between two
# recordings must each be seen at once.


def test_upgrade_between_recordings_counts_on_the_new_plan(session: Session) -> None:
    user = make_user(session)
    session.commit()
    assert record_usage(session, user.id, idempotency_key="f", now=NOW).status.plan.id == "free"
    session.commit()
    subscription = UserSubscription(
        user_id=user.id, plan_id="pro", status="active", billing_anchor=T0
    )
    session.add(subscription)
    session.commit()
    outcome = record_usage(session, user.email.upper(), idempotency_key="p", now=NOW)
    session.commit()
    assert outcome.status.plan.id == "pro" and outcome.status.used == 1
    assert outcome.status.included == 75


def test_joining_an_organization_moves_usage_to_its_pool(session: Session) -> None:
    user = make_user(session)
    org = make_org(session, plan="team", seats=3)
    session.commit()
    record_usage(session, user.id, idempotency_key="alone", now=NOW)
    session.commit()
    session.add(Membership(user_id=user.id, organization_id=org.id, role="member"))
    session.commit()
    outcome = record_usage(session, user.id, idempotency_key="pooled", now=NOW)
    session.commit()
    assert outcome.status.subject.kind == "organization" and outcome.status.subject.id == org.id
    assert (outcome.status.used, outcome.status.included, outcome.status.member_used) == (
        1,
        150,
        1,
    )  # 3 seats x 50


def test_seats_bought_mid_period_raise_the_pool_at_once(session: Session) -> None:
    org = make_org(session, plan="team", seats=1)
    user = make_user(session, org=org)
    session.commit()
    assert record_usage(session, user.id, idempotency_key="1", now=NOW).status.included == 50
    session.commit()
    org.seats = 4
    session.commit()
    outcome = record_usage(session, user.id, idempotency_key="4", now=NOW)
    session.commit()
    assert (outcome.status.used, outcome.status.included) == (2, 200)
    assert session.scalar(select(UsageRecord.included)) == 200


def test_a_user_deleted_after_recording_is_unknown(session: Session) -> None:
    user = make_user(session)
    session.commit()
    record_usage(session, user.id, idempotency_key="before", now=NOW)
    session.commit()
    session.execute(delete(usage_report_backlog))
    session.execute(delete(UsageEvent))
    session.execute(delete(UsageRecord))
    session.delete(user)
    session.commit()
    with pytest.raises(UnknownUser):
        record_usage(session, user.id, idempotency_key="after", now=NOW)
    session.rollback()
    assert counts(session) == (0, 0, 0)


def test_event_ids_are_time_ordered_version_7_uuids(clock: FrozenClock) -> None:
    first = new_event_ids(1000)
    clock.advance(timedelta(milliseconds=2))
    later = new_event_id()
    assert len(set(first)) == 1000
    assert {(i.version, i.variant) for i in [*first, later]} == {(7, uuid.RFC_4122)}
    # The first 48 bits are the recording time in Unix milliseconds.
    assert {i.int >> 80 for i in first} == {int(CLOCK_START.timestamp() * 1000)}
    assert max(first) < later  # index order is recording order


def test_totals_past_32_bits_keep_counting(session: Session) -> None:
    org = make_org(session, plan="team", seats=1)
    user = make_user(session, org=org)
    session.commit()
    record_usage(session, user.id, idempotency_key="first", now=NOW)
    near = 2**31 - 5_000
    session.execute(update(UsageRecord).values(used=near))
    session.execute(update(MemberUsage).values(used=near))
    session.commit()
    outcome = record_usage(session, user.id, idempotency_key="big", now=NOW, quantity=10_000)
    assert outcome.result is RecordResult.CREATED
    assert (outcome.status.used, outcome.status.member_used) == (near + 10_000, near + 10_000)
    assert check_usage(session, user.id, NOW).used == near + 10_000
