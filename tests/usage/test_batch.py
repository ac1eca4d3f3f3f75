from __future__ import annotations

from collections import Counter
from datetime import timedelta
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from portal.extensions import db
from portal.models import UsageEvent
from portal.usage import check_usage, record_usage
from portal.usage.batch import BatchItem, BatchResult, record_usage_batch
from portal.usage.recording import record_request
from portal.usage.requests import UsageRequest, validate_usage_request
from tests.factories import T0, make_org, make_user
from tests.usage.test_recording import counts, run_concurrently

NOW = T0 + timedelta(days=3)


def item(email: str, key: str, quantity: int = 1, event_type: str = "suggestion") -> BatchItem:
    request = validate_usage_request(
        idempotency_key=key, quantity=quantity, event_type=event_type, now=NOW
    )
    return BatchItem(email, request)


def test_a_batch_mixes_every_outcome_and_one_bad_item_spoils_nothing(session: Session) -> None:
    free = make_user(session)
    pro = make_user(session, plan="pro")
    record_usage(session, pro.id, idempotency_key="earlier", now=NOW)
    session.commit()
    results = record_usage_batch(
        session,
        [
            item(free.email, "f1", 3),
            item(pro.email, "earlier"),  # recorded by an earlier request
            item("ghost@example.com", "g1"),
            item(free.email, "f2", 3),  # 3 + 3 > 5: refused
            item(free.email, "f3", 2),  # still fits after the refusal
            item(pro.email.upper(), "p1", 4),
            item(pro.email, "p1", 4),  # same key twice in one batch
            item(pro.email, "earlier", 9),  # key reused for other usage
            item(free.email, "r1", event_type="refinement"),
        ],
        NOW,
    )
    session.commit()
    assert [r.result for r in results] == [
        BatchResult.CREATED,
        BatchResult.DUPLICATE,
        BatchResult.INVALID,
        BatchResult.LIMIT_REACHED,
        BatchResult.CREATED,
        BatchResult.CREATED,
        BatchResult.DUPLICATE,
        BatchResult.INVALID,
        BatchResult.CREATED,
    ]
    assert results[2].errors == {"user_email": "no such user"}
    assert results[7].errors is not None and "idempotency_key" in results[7].errors
    assert results[6].event_id == results[5].event_id
    assert check_usage(session, free.id, NOW).used == 5
    assert check_usage(session, pro.id, NOW).used == 5
    assert counts(session) == (5, 10, 0)  # f1, f3, r1, earlier, p1


def test_team_members_in_a_batch_draw_on_one_pool(session: Session) -> None:
    org = make_org(session, plan="team", seats=1)
    alice, bob = make_user(session, org=org), make_user(session, org=org)
    session.commit()
    batch = [item(alice.email, f"a{n}", 10) for n in range(3)] + [item(bob.email, "b", 25)]
    results = record_usage_batch(session, batch, NOW)
    session.commit()
    assert Counter(r.result for r in results) == {BatchResult.CREATED: 4}
    status = check_usage(session, alice.id, NOW)
    assert (status.used, status.member_used, status.overage_count) == (55, 30, 5)
    assert counts(session) == (4, 55, 55)


def test_hard_cap_is_exact_across_concurrent_batches(session: Session) -> None:
    engine = db.engine
    email = make_user(session).email
    session.commit()

    def work(worker: int) -> list[BatchResult]:
        with Session(engine) as own:
            results = record_usage_batch(
                own, [item(email, f"w{worker}-{n}") for n in range(4)], NOW
            )
            own.commit()
            return [r.result for r in results]

    outcomes = Counter(r for batch in run_concurrently(8, work) for r in batch)
    assert outcomes == {BatchResult.CREATED: 5, BatchResult.LIMIT_REACHED: 27}
    assert counts(session) == (5, 5, 0)


def test_concurrent_batches_sharing_keys_record_each_once(session: Session) -> None:
    engine = db.engine
    emails = [make_user(session, plan="pro").email for _ in range(3)]
    session.commit()

    def work(worker: int) -> Counter[BatchResult]:
        # Every worker sends the same 30 events, in its own order.
        batch = [item(emails[n % 3], f"shared-{n}") for n in range(30)]
        batch = batch[worker:] + batch[:worker]
        with Session(engine) as own:
            results = record_usage_batch(own, batch, NOW)
            own.commit()
        return Counter(r.result for r in results)

    totals: Counter[BatchResult] = Counter()
    for outcome in run_concurrently(6, work):
        totals.update(outcome)
    assert totals == {BatchResult.CREATED: 30, BatchResult.DUPLICATE: 150}
    assert counts(session) == (30, 30, 0)


def test_a_batch_is_committed_when_record_usage_batch_returns(session: Session) -> None:
    user = make_user(session, plan="pro")
    session.commit()
    record_usage_batch(session, [item(user.email, f"c{n}", 2) for n in range(3)], NOW)
    # No commit by the caller: another connection already sees every item.
    with Session(db.engine) as other:
        assert counts(other) == (3, 6, 0)


def test_a_batch_stores_each_event_as_recording_it_alone_would(session: Session) -> None:
    org = make_org(session, plan="team", seats=2)
    member, pro = make_user(session, org=org), make_user(session, plan="pro")
    session.commit()
    last_period = NOW - timedelta(days=5)  # before the anchor: the previous billing period
    usages: list[dict[str, Any]] = [
        {"user": pro, "quantity": 2},
        {"user": pro, "occurred_at": last_period},
        {"user": pro, "occurred_at": NOW - timedelta(hours=1), "event_type": "refinement"},
        {"user": member, "metadata": {"channel": "C042", "draft": {"words": 118}}},
        {"user": member, "occurred_at": last_period, "quantity": 3},
    ]

    def request(key: str, usage: dict[str, Any]) -> UsageRequest:
        fields = {name: value for name, value in usage.items() if name != "user"}
        return validate_usage_request(idempotency_key=key, now=NOW, **fields)

    for n, usage in enumerate(usages):
        record_request(session, usage["user"].email, request(f"alone-{n}", usage), NOW)
    batch = [
        BatchItem(usage["user"].email, request(f"batch-{n}", usage))
        for n, usage in enumerate(usages)
    ]
    results = record_usage_batch(session, batch, NOW)
    assert {r.result for r in results} == {BatchResult.CREATED}
    assert len({r.event_id for r in results}) == len(usages)

    stored = {
        event.idempotency_key: (
            event.user_id,
            event.organization_id,
            event.plan_id,
            event.event_type,
            event.quantity,
            event.occurred_at,
            event.recorded_at,
            event.period_start,
            event.period_end,
            event.event_metadata,
        )
        for event in session.scalars(select(UsageEvent))
    }
    for n in range(len(usages)):
        assert stored[f"batch-{n}"] == stored[f"alone-{n}"]
    assert {event_id.version for event_id in session.scalars(select(UsageEvent.id))} == {7}
    assert sorted({row[7] for row in stored.values()})[1:] == [T0]  # and the period before
    assert counts(session) == (10, 14, 8)  # the backlog holds each event with its period
