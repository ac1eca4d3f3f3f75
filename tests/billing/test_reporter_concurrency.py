"""Overlapping runs, and a run killed at the worst moment: still exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from collections import Counter
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.billing import claim, recovery, reporter
from portal.billing.reporter import ReportSummary
from portal.billing.sender import Senders
from portal.billing.settings import DEFAULT_METER_EVENT_NAME
from portal.billing.stripe_client import StripeMeterEventGateway
from portal.extensions import db
from portal.models import UsageEvent, UsageReportBatch
from tests.billing.helpers import (
    API_KEY,
    NOW,
    Usage,
    assert_exactly_once,
    customer_of,
    events_by_state,
    run_reporter,
)
from tests.factories import make_org, make_user
from tests.stripe_standin import Fault, StripeStandIn

PROJECT_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run_in_threads(
    session: Session, gateway: StripeMeterEventGateway, senders: int = 1
) -> list[ReportSummary]:
    """Two reporters started at the same instant, each on a session of its own."""
    barrier = threading.Barrier(2)
    engine = db.engine  # threads have no app context of their own
    results: list[ReportSummary | BaseException | None] = [None, None]

    def reporter(index: int) -> None:
        try:
            with Session(engine) as own:
                barrier.wait()
                results[index] = run_reporter(own, gateway, batch_size=40, senders=senders)
        except BaseException as error:  # handed to the test thread below
            results[index] = error

    threads = [threading.Thread(target=reporter, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return [r for r in results if isinstance(r, ReportSummary)]


def record_plenty(session: Session) -> Usage:
    users = [make_user(session, plan="pro") for _ in range(6)]
    orgs = [make_org(session, plan="business", seats=10) for _ in range(2)]
    members = [(make_user(session, org=org), org) for org in orgs for _ in range(2)]
    session.commit()
    usage = Usage(session)
    for round_ in range(25):
        for user in users:
            usage.record(user, 1 + round_ % 3, billed_to=customer_of(user))
        for member, org in members:
            usage.record(member, 2, billed_to=customer_of(org))
    return usage


def test_two_reporters_at_once_put_each_event_in_exactly_one_sent_batch(
    session: Session,
    standin: StripeStandIn,
    gateway: StripeMeterEventGateway,
) -> None:
    usage = record_plenty(session)
    recorded = session.scalar(select(func.count()).select_from(UsageEvent))

    first, second = run_in_threads(session, gateway)

    assert first.exit_code == second.exit_code == 0
    # Both took part, and between them took every event once.
    assert first.claimed > 0 and second.claimed > 0
    assert first.claimed + second.claimed == recorded
    assert first.events_reported + second.events_reported == recorded
    assert_exactly_once(session, standin, usage.expected)
    assert standin.max_in_flight_per_customer == 1


@pytest.mark.parametrize("senders", [2, 4])
def test_a_run_with_several_senders_sends_each_batch_once_through_faults(
    session: Session,
    standin: StripeStandIn,
    gateway: StripeMeterEventGateway,
    senders: int,
) -> None:
    usage = record_plenty(session)
    standin.add_faults(
        Fault.server_error(500),
        Fault.error_after_record(503),
        Fault.rate_limited(retry_after=0.01),
        Fault.dropped_after_record(),
        Fault.error_after_record(500),
    )

    summary = run_reporter(session, gateway, batch_size=40, senders=senders)

    assert summary.exit_code == 0, summary
    assert summary.claimed == summary.events_reported == 250
    # A retry that meets the next fault may find its event already recorded.
    assert 1 <= summary.retried <= 5
    assert_exactly_once(session, standin, usage.expected)
    assert standin.max_in_flight_per_customer == 1


def test_a_run_that_claims_while_sending_sends_all_it_claimed_within_its_limit(
    session: Session,
    standin: StripeStandIn,
    gateway: StripeMeterEventGateway,
) -> None:
    """With senders, the next claim runs while the last is sent; none is left behind."""
    record_plenty(session)

    summary = run_reporter(session, gateway, batch_size=40, limit=100, senders=2)

    assert summary.exit_code == 0, summary
    assert summary.claimed == summary.events_reported == 100
    assert summary.pending == 0
    # The rest waits in the backlog for the next run, unclaimed.
    assert events_by_state(session) == {"reported": 100, "pending": 150}
    assert (
        session.scalar(
            select(func.count())
            .select_from(UsageReportBatch)
            .where(UsageReportBatch.status != "sent")
        )
        == 0
    )


def test_two_reporters_with_several_senders_each_put_each_event_in_one_sent_batch(
    session: Session,
    standin: StripeStandIn,
    gateway: StripeMeterEventGateway,
) -> None:
    usage = record_plenty(session)

    summaries = run_in_threads(session, gateway, senders=3)

    assert all(s.error is None and s.failed == 0 for s in summaries), summaries
    # A batch one run put aside (its customer busy) may be sent by the other
    # after the first has summed up: that run says "pending", honestly.
    session.expire_all()
    if any(s.pending for s in summaries):
        run_reporter(session, gateway)
    assert_exactly_once(session, standin, usage.expected)
    assert standin.max_in_flight_per_customer == 1


def test_claims_need_no_particular_isolation_level(
    session: Session,
    standin: StripeStandIn,
    gateway: StripeMeterEventGateway,
) -> None:
    # A claim deletes what it takes from the backlog: under REPEATABLE READ a
    # row another claim took would fail the statement, never be taken twice.
    usage = record_plenty(session)
    repeatable_read = db.engine.execution_options(isolation_level="REPEATABLE READ")

    with Session(repeatable_read) as own:
        assert run_reporter(own, gateway, batch_size=40).exit_code == 0

    assert_exactly_once(session, standin, usage.expected)


def report_usage_process(database_url: str, standin: StripeStandIn) -> subprocess.Popen[str]:
    """``flask report-usage`` in a process of its own, as cron runs it."""
    env = {
        **os.environ,
        "PORTAL_ENV": "test",
        "DATABASE_URL": database_url,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": standin.url,
    }
    # The process runs `flask report-usage` on the test's clock, as the stand-in does.
    on_the_tests_clock = (
        "import sys, datetime; from portal import clock; "
        f"clock.now = lambda: datetime.datetime.fromisoformat({NOW.isoformat()!r}); "
        "from flask.cli import main; sys.argv[0] = 'flask'; main()"
    )
    return subprocess.Popen(
        [sys.executable, "-c", on_the_tests_clock, "--app", "wsgi", "report-usage", "--json"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_reporter_killed_after_stripe_accepted_its_batch_loses_and_doubles_nothing(
    session: Session, database_url: str
) -> None:
    now = NOW
    user = make_user(session, plan="starter", anchor=now - timedelta(days=2))
    session.commit()
    usage = Usage(session, now)
    for quantity in (2, 3, 4):
        usage.record(user, quantity, billed_to=customer_of(user))

    with StripeStandIn(api_key=API_KEY).running() as standin:
        # Stripe records the meter event, then the answer is held: the reporter
        # waits for it with the event accepted and its own commit not yet made.
        standin.add_faults(Fault.held_after_record())
        process = report_usage_process(database_url, standin)
        try:
            assert standin.held.wait(timeout=60), process.stderr.read() if process.stderr else ""
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=30)
        finally:
            if process.poll() is None:
                process.kill()
            standin.release()
        assert process.returncode == -signal.SIGKILL
        session.expire_all()
        assert [e.value for e in standin.events] == [9]
        batch = session.scalars(select(UsageReportBatch)).one()
        assert batch.status == "pending"  # the outbox row survived the crash
        assert events_by_state(session) == {"claimed": 3}  # with it, unreported
        session.rollback()

        again = report_usage_process(database_url, standin)
        out, err = again.communicate(timeout=120)
        assert again.returncode == 0, err
        summary = json.loads(out)
        assert (summary["claimed"], summary["batches_sent"], summary["events_reported"]) == (
            0,
            1,
            3,
        )
        assert_exactly_once(session, standin, usage.expected)
        assert len(standin.events) == 1


def test_a_claim_passes_over_the_events_another_claim_holds(
    session: Session,
    standin: StripeStandIn,
    gateway: StripeMeterEventGateway,
) -> None:
    """Two claims at the same moment on two connections take disjoint events.

    The first claims a chunk and has not committed yet when the second runs:
    the second skips the rows the first has locked (``SKIP LOCKED``) and
    takes the rest; once the first commits, its rows are gone for good.
    """
    usage = record_plenty(session)
    total = sum(usage.expected.values())
    statement = claim.CLAIM
    assert statement is not None

    def parameters(size: int) -> dict[str, Any]:
        return claim.claim_parameters(
            size, now=NOW, event_name=DEFAULT_METER_EVENT_NAME, run_id=None
        )

    with Session(db.engine) as first_session, Session(db.engine) as second_session:
        held = first_session.execute(statement, parameters(100)).all()
        assert ("claimed", None, 100) in held  # not committed yet: its rows stay locked
        taken = second_session.execute(statement, parameters(1000)).all()
        second_session.commit()
        first_session.commit()

    assert ("claimed", None, 150) in taken
    assert events_by_state(session) == {"claimed": 250}  # each event in exactly one batch
    assert run_reporter(session, gateway).exit_code == 0
    assert_exactly_once(session, standin, usage.expected)
    assert total == sum(b.value for b in session.scalars(select(UsageReportBatch)))


def hold_what_runs_claim(monkeypatch: pytest.MonkeyPatch, other: Session) -> None:
    """After each claim, ``other`` locks the pending batches, as another run's sender would."""
    run_claim = reporter._Run.claim

    def claim_then_held_elsewhere(run: reporter._Run, size: int) -> int:
        claimed = run_claim(run, size)
        other.execute(
            select(UsageReportBatch).where(UsageReportBatch.status == "pending").with_for_update()
        ).all()
        return claimed

    monkeypatch.setattr(reporter._Run, "claim", claim_then_held_elsewhere)


def test_a_run_sends_its_own_batch_that_another_run_held_and_let_go(
    session: Session,
    standin: StripeStandIn,
    gateway: StripeMeterEventGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Another run's sender holds a batch this run just claimed, then lets it go.

    That happens when the other sender finds the customer busy and puts the
    batch aside: this run's senders passed over it while it was held, so
    without a last look this run would end with its own batch pending.
    """
    user = make_user(session, plan="pro")
    session.commit()
    usage = Usage(session)
    usage.record(user, 2, billed_to=customer_of(user))
    other = Session(db.engine)
    send_deferred = Senders.send_deferred

    def let_go_then_send_deferred(senders: Senders) -> None:
        other.rollback()  # the other run puts it aside
        send_deferred(senders)

    hold_what_runs_claim(monkeypatch, other)
    monkeypatch.setattr(Senders, "send_deferred", let_go_then_send_deferred)
    try:
        summary = run_reporter(session, gateway, senders=1)
    finally:
        monkeypatch.undo()
        other.close()

    assert (summary.exit_code, summary.pending, summary.batches_sent) == (0, 0, 1)
    assert_exactly_once(session, standin, usage.expected)


def test_waiting_for_a_batch_another_run_holds_ends_with_the_time_budget(
    session: Session,
    standin: StripeStandIn,
    gateway: StripeMeterEventGateway,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A batch another run holds (and keeps) is not waited for past ``--max-seconds``."""
    user = make_user(session, plan="pro")
    session.commit()
    usage = Usage(session)
    usage.record(user, 2, billed_to=customer_of(user))
    other = Session(db.engine)
    hold_what_runs_claim(monkeypatch, other)
    try:
        # Were the wait not bounded by the budget, the run would block on the
        # other session's lock until the test runner gave up: no timing needed.
        summary = run_reporter(session, gateway, senders=1, max_seconds=2)
    finally:
        monkeypatch.undo()
        other.close()

    # Still held by the other run when this one ends: the other answers for it.
    assert (summary.exit_code, summary.pending, summary.batches_sent) == (0, 0, 0)
    assert standin.requests == []
    assert run_reporter(session, gateway).exit_code == 0  # the next run sends it
    assert_exactly_once(session, standin, usage.expected)


def test_two_requeues_at_once_put_unbilled_usage_back_once(
    session: Session,
    standin: StripeStandIn,
    gateway: StripeMeterEventGateway,
) -> None:
    team = make_org(session, customer=None)
    member = make_user(session, org=team)
    session.commit()
    usage = Usage(session)
    usage.record(member, 3)
    assert run_reporter(session, gateway).skipped_reasons == {"no_customer": 1}
    team.stripe_customer_id = "cus_set_later"
    session.commit()

    with Session(db.engine) as first, Session(db.engine) as second:
        assert recovery.requeue_unbilled(first, NOW) == 1  # not committed yet
        results: list[int] = []
        waiting = threading.Thread(target=lambda: results.append(requeue(second)))
        waiting.start()
        waiting.join(timeout=1)
        assert waiting.is_alive()  # it waits for the first to finish with the skip
        first.commit()
        waiting.join(timeout=30)

    assert results == [0]
    assert run_reporter(session, gateway).exit_code == 0
    assert_exactly_once(session, standin, Counter({"cus_set_later": 3}))


def requeue(session: Session) -> int:
    requeued = recovery.requeue_unbilled(session, NOW)
    session.commit()
    return requeued
