"""Overlapping runs, and a run killed at the worst moment: still exactly once."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session

from portal.billing import reporter
from portal.billing.reporter import ReportSummary
from portal.billing.stripe_client import StripeMeterEventGateway
from portal.extensions import db
from portal.models import UsageEvent, UsageReportBatch
from tests.billing.helpers import API_KEY, Usage, assert_exactly_once, customer_of, run_reporter
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
    engine_name: str,
) -> None:
    if engine_name != "postgresql":
        pytest.skip("SQLite runs one reporter at a time (see the next test)")
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


def test_overlapping_runs_on_sqlite_step_aside_and_nothing_is_doubled(
    session: Session,
    standin: StripeStandIn,
    gateway: StripeMeterEventGateway,
    engine_name: str,
) -> None:
    if engine_name != "sqlite":
        pytest.skip("PostgreSQL runs reporters side by side (see the previous test)")
    usage = record_plenty(session)

    summaries = run_in_threads(session, gateway)

    assert all(s.exit_code == 0 for s in summaries)
    # Whichever came second found the lock taken, or found nothing left.
    assert sum(s.events_reported for s in summaries) == sum(
        s.claimed for s in summaries if not s.locked_out
    )
    if any(s.locked_out for s in summaries):
        run_reporter(session, gateway)
    assert_exactly_once(session, standin, usage.expected)
    assert standin.max_in_flight_per_customer == 1


@pytest.mark.parametrize("senders", [2, 4])
def test_a_run_with_several_senders_sends_each_batch_once_through_faults(
    session: Session,
    standin: StripeStandIn,
    gateway: StripeMeterEventGateway,
    engine_name: str,
    senders: int,
) -> None:
    if engine_name != "postgresql":
        pytest.skip("SQLite sends one batch at a time")
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
    engine_name: str,
) -> None:
    """With senders, the next claim runs while the last is sent; none is left behind."""
    if engine_name != "postgresql":
        pytest.skip("SQLite claims and sends in turn")
    record_plenty(session)

    summary = run_reporter(session, gateway, batch_size=40, limit=100, senders=2)

    assert summary.exit_code == 0, summary
    assert summary.claimed == summary.events_reported == 100
    assert summary.pending == 0
    # The rest waits in the backlog for the next run, unclaimed.
    session.expire_all()
    unclaimed = session.scalar(
        select(func.count()).select_from(UsageEvent).where(UsageEvent.stripe_reported_at.is_(None))
    )
    assert unclaimed == 150
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
    engine_name: str,
) -> None:
    if engine_name != "postgresql":
        pytest.skip("SQLite runs one reporter at a time, sending one batch at a time")
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


def test_a_claim_refuses_to_run_on_a_snapshot_older_than_the_claim_lock(
    session: Session,
    standin: StripeStandIn,
    gateway: StripeMeterEventGateway,
    engine_name: str,
) -> None:
    if engine_name != "postgresql":
        pytest.skip("SQLite claims under its one writer lock")
    usage = record_plenty(session)
    repeatable_read = db.engine.execution_options(isolation_level="REPEATABLE READ")

    with Session(repeatable_read) as own, pytest.raises(RuntimeError, match="READ COMMITTED"):
        run_reporter(own, gateway)

    assert standin.requests == []
    run_reporter(session, gateway)
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
    return subprocess.Popen(
        [sys.executable, "-m", "flask", "--app", "wsgi", "report-usage", "--json"],
        cwd=PROJECT_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_a_reporter_killed_after_stripe_accepted_its_batch_loses_and_doubles_nothing(
    session: Session, database_url: str, clock: object
) -> None:
    # The reporter process runs on the real clock, so the usage is recent for real.
    now = datetime.now(UTC).replace(microsecond=0)
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
        reported = session.scalar(
            select(func.count()).where(UsageEvent.stripe_reported_at.is_not(None))
        )
        assert reported == 0
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


def test_events_locked_on_an_outdated_snapshot_are_not_claimed_twice(
    session: Session,
    standin: StripeStandIn,
    gateway: StripeMeterEventGateway,
    engine_name: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The race the claim's second statement closes (see the reporter's docstring).

    A claim whose locking statement started before another claim committed
    can lock that claim's events once they are unlocked, because its snapshot
    does not show the other claim's batches. Here the locking statement sees
    no batches at all, as such a snapshot would: the claim must still leave
    out every event that a pending batch lists.
    """
    if engine_name != "postgresql":
        pytest.skip("SQLite claims under its one writer lock")
    usage = record_plenty(session)
    standin.add_faults(*[Fault.server_error(503)] * 1000)
    first = run_reporter(session, gateway, max_attempts=1)
    assert first.pending and standin.events == []  # its batches wait, listing their events
    standin.clear_faults()

    outdated_lock = text(
        "SELECT current_setting('transaction_isolation'), "
        "'{' || string_agg(CAST(id AS text), ',') || '}' "
        "FROM (SELECT id FROM usage_events WHERE report_status = 'pending' "
        "LIMIT :limit FOR UPDATE SKIP LOCKED) AS locked"
    )
    claim = reporter._Run._claim_in_sql
    outdated_claims: list[int] = []

    def first_claim_on_an_outdated_snapshot(run: reporter._Run, size: int) -> int:
        if outdated_claims:
            return claim(run, size)
        outdated_claims.append(size)
        statements = run.statements
        run.statements = dataclasses.replace(statements, lock_claim=outdated_lock)
        try:
            return claim(run, size)
        finally:
            run.statements = statements

    monkeypatch.setattr(reporter._Run, "_claim_in_sql", first_claim_on_an_outdated_snapshot)
    # The pending batches fail once more, so they are still pending when the
    # second run claims; then Stripe works again.
    standin.add_faults(*[Fault.server_error(503)] * first.pending)
    second = run_reporter(session, gateway, max_attempts=1)
    assert outdated_claims and second.pending == first.pending
    third = run_reporter(session, gateway)

    assert third.exit_code == 0
    assert_exactly_once(session, standin, usage.expected)
