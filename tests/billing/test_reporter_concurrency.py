"""Overlapping runs, and a run killed at the worst moment: still exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.billing.reporter import ReportSummary
from portal.billing.stripe_client import StripeMeterEventGateway
from portal.extensions import db
from portal.models import UsageEvent, UsageReportBatch
from tests.billing.helpers import API_KEY, Usage, assert_exactly_once, customer_of, run_reporter
from tests.factories import make_org, make_user
from tests.stripe_standin import Fault, StripeStandIn

PROJECT_ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def run_in_threads(session: Session, gateway: StripeMeterEventGateway) -> list[ReportSummary]:
    """Two reporters started at the same instant, each on a session of its own."""
    barrier = threading.Barrier(2)
    engine = db.engine  # threads have no app context of their own
    results: list[ReportSummary | BaseException | None] = [None, None]

    def reporter(index: int) -> None:
        try:
            with Session(engine) as own:
                barrier.wait()
                results[index] = run_reporter(own, gateway, batch_size=40)
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
