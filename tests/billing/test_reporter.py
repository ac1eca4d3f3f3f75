from __future__ import annotations

import dataclasses
import random
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from portal.billing.preview import preview_report
from portal.billing.reporter import ReportOptions
from portal.billing.rules import meter_timestamp
from portal.billing.stripe_client import StripeMeterEventGateway
from portal.config import normalize_database_url
from portal.models import UsageEvent, UsageReportBatch, UsageReportRun, UserSubscription
from portal.periods import add_months
from tests.billing.helpers import (
    NOW,
    Clock,
    Usage,
    assert_exactly_once,
    customer_of,
    events_by_state,
    report_states,
    run_reporter,
)
from tests.factories import T0, make_org, make_user
from tests.stripe_standin import Fault, StripeStandIn


def test_billable_usage_reaches_stripe_once_per_customer_and_period(
    session: Session, standin: StripeStandIn, gateway: StripeMeterEventGateway
) -> None:
    starter = make_user(session, plan="starter")
    pro = make_user(session, plan="pro")
    team = make_org(session, plan="team")
    alice = make_user(session, org=team)
    bob = make_user(session, org=team)
    free = make_user(session)
    session.commit()
    usage = Usage(session)
    usage.record(starter, 3, billed_to=customer_of(starter))
    usage.record(starter, 30, billed_to=customer_of(starter))  # past the included 25
    usage.record(pro, 2, billed_to=customer_of(pro))
    usage.record(alice, 4, billed_to=customer_of(team))
    usage.record(bob, 5, billed_to=customer_of(team))
    usage.record(free, 1)
    usage.record(pro, 1, event_type="refinement")

    summary = run_reporter(session, gateway)

    assert_exactly_once(session, standin, usage.expected)
    # One meter event per customer and period, whatever the number of usage events.
    assert len(standin.events) == 3
    assert summary.exit_code == 0
    assert (summary.claimed, summary.batches_sent, summary.events_reported) == (7, 3, 5)
    assert summary.value_sent == 44
    assert summary.skipped_reasons == {"free_plan": 1, "not_billable": 1}
    assert (summary.failed, summary.pending, summary.retried) == (0, 0, 0)
    assert events_by_state(session) == {"reported": 5, "skipped": 2}
    run = session.scalars(select(UsageReportRun)).one()
    assert (run.outcome, run.events_reported, run.worker) == ("ok", 5, "test")

    again = run_reporter(session, gateway)
    assert (again.claimed, again.batches_sent, again.exit_code) == (0, 0, 0)
    assert len(standin.requests) == 3


FAULTS = {
    "500": Fault.server_error(500),
    "503": Fault.server_error(503),
    "500-after-recording": Fault.error_after_record(500),
    "429-retry-after": Fault.rate_limited(retry_after=0.05),
    "slow-reply-after-recording": Fault.slow_after_record(1.0),
    "dropped-after-recording": Fault.dropped_after_record(),
}


@pytest.mark.parametrize("fault", FAULTS.values(), ids=FAULTS.keys())
def test_each_fault_still_bills_exactly_once(
    session: Session, standin: StripeStandIn, gateway: StripeMeterEventGateway, fault: Fault
) -> None:
    starter = make_user(session, plan="starter")
    team = make_org(session)
    member = make_user(session, org=team)
    session.commit()
    usage = Usage(session)
    for quantity in (1, 2, 3):
        usage.record(starter, quantity, billed_to=customer_of(starter))
        usage.record(member, quantity, billed_to=customer_of(team))
    # Each customer's first request meets the fault.
    for customer in usage.expected:
        standin.add_faults(dataclasses.replace(fault, customer=customer))

    summary = run_reporter(session, gateway)

    assert summary.exit_code == 0, summary
    assert summary.retried == 2
    assert standin.pending_faults == 0
    assert_exactly_once(session, standin, usage.expected)


def test_retry_after_is_honoured_before_sending_again(
    session: Session, standin: StripeStandIn, gateway: StripeMeterEventGateway
) -> None:
    user = make_user(session, plan="pro")
    session.commit()
    usage = Usage(session)
    usage.record(user, 2, billed_to=customer_of(user))
    standin.add_faults(Fault.rate_limited(retry_after=7))
    waits: list[float] = []

    summary = run_reporter(session, gateway, sleep=waits.append)

    assert summary.exit_code == 0
    assert len(waits) == 1 and waits[0] >= 7
    assert_exactly_once(session, standin, usage.expected)


def test_a_mix_of_faults_over_several_runs_bills_every_unit_exactly_once(
    session: Session, standin: StripeStandIn, gateway: StripeMeterEventGateway, clock: Clock
) -> None:
    rng = random.Random(5)
    users = [make_user(session, plan=rng.choice(["starter", "pro"])) for _ in range(4)]
    orgs = [make_org(session, plan=plan) for plan in ("team", "business")]
    members = [make_user(session, org=org) for org in orgs for _ in range(2)]
    free = [make_user(session) for _ in range(2)]
    session.commit()
    usage = Usage(session)
    for _ in range(120):
        who = rng.choice(users + members + free)
        quantity = rng.randint(1, 4)
        if who in free:
            usage.record(who, 1)
        else:
            org = next((o for o in orgs if any(m.user_id == who.id for m in o.memberships)), None)
            usage.record(who, quantity, billed_to=customer_of(org or who))
    kinds = list(FAULTS.values())
    standin.add_faults(*(rng.choice(kinds) for _ in range(25)))

    summaries = []
    for attempt in range(10):
        # Two attempts per batch and run, so some batches wait for the next run.
        now = NOW + timedelta(minutes=5 * attempt)
        clock.now = now
        summaries.append(run_reporter(session, gateway, now, batch_size=17, max_attempts=2))
        if summaries[-1].exit_code == 0 and standin.pending_faults == 0:
            break
    assert summaries[-1].exit_code == 0
    assert any(s.pending for s in summaries[:-1]), "the faults should have left work for a rerun"
    recorded = session.scalar(select(func.count()).select_from(UsageEvent))
    assert sum(s.claimed for s in summaries) == recorded
    assert_exactly_once(session, standin, usage.expected)
    assert standin.max_in_flight_per_customer == 1


def test_events_at_a_period_boundary_go_into_separate_meter_events_inside_their_periods(
    session: Session, standin: StripeStandIn, gateway: StripeMeterEventGateway, clock: Clock
) -> None:
    user = make_user(session, plan="starter", anchor=T0)
    session.commit()
    boundary = add_months(T0, 1)
    now = boundary + timedelta(minutes=1)
    clock.now = now
    usage = Usage(session, now)
    usage.record(user, 2, occurred_at=boundary - timedelta(seconds=1), billed_to=customer_of(user))
    usage.record(user, 5, occurred_at=boundary, billed_to=customer_of(user))

    summary = run_reporter(session, gateway, now)

    assert summary.batches_sent == 2
    assert_exactly_once(session, standin, usage.expected)
    by_value = {e.value: e.timestamp for e in standin.events}
    assert by_value == {
        2: int(boundary.timestamp()) - 1,  # the last second of the first period
        5: int(boundary.timestamp()),  # the first second of the next
    }


def test_meter_timestamp_stays_inside_a_period_with_a_fractional_anchor() -> None:
    start = datetime(2026, 3, 15, 12, 0, 0, 400_000, tzinfo=UTC)
    end = add_months(start, 1)
    # Usage in the period's first and last fractions of a second.
    first = meter_timestamp(start + timedelta(microseconds=1), start, end, end)
    last = meter_timestamp(end - timedelta(microseconds=1), start, end, end)
    assert start <= first < end and start <= last < end
    assert first.microsecond == last.microsecond == 0
    # Usage ahead of the reporter's clock keeps its own period.
    early = meter_timestamp(start, start, end, start - timedelta(minutes=1))
    assert early == datetime(2026, 3, 15, 12, 0, 1, tzinfo=UTC)


def test_free_and_not_billable_usage_is_skipped_and_leaves_the_backlog(
    session: Session, standin: StripeStandIn, gateway: StripeMeterEventGateway
) -> None:
    free = make_user(session)
    pro = make_user(session, plan="pro")
    session.commit()
    usage = Usage(session)
    for _ in range(3):
        usage.record(free, 1)
    usage.record(pro, 1, event_type="refinement")

    summary = run_reporter(session, gateway)

    assert summary.exit_code == 0
    assert summary.skipped_reasons == {"free_plan": 3, "not_billable": 1}
    assert standin.requests == []
    assert events_by_state(session) == {"skipped": 4}
    assert run_reporter(session, gateway).claimed == 0


def test_paid_usage_without_a_stripe_customer_is_skipped_with_its_reason(
    session: Session, standin: StripeStandIn, gateway: StripeMeterEventGateway
) -> None:
    user = make_user(session, plan="starter")
    team = make_org(session, customer=None)
    member = make_user(session, org=team)
    session.commit()
    subscription = session.scalars(select(UserSubscription)).one()
    subscription.stripe_customer_id = None
    session.commit()
    usage = Usage(session)
    usage.record(user, 2)
    usage.record(member, 3)

    summary = run_reporter(session, gateway)

    assert summary.exit_code == 0
    assert summary.skipped_reasons == {"no_customer": 2}
    assert standin.requests == []
    assert list(report_states(session).values()) == ["skipped:no_customer"] * 2


def test_usage_older_than_stripes_window_fails_with_a_reason_and_is_not_sent(
    session: Session, standin: StripeStandIn, gateway: StripeMeterEventGateway, clock: Clock
) -> None:
    user = make_user(session, plan="pro")
    session.commit()
    usage = Usage(session)
    usage.record(user, 4)
    later = NOW + timedelta(days=36)
    clock.now = later

    summary = run_reporter(session, gateway, later)

    assert summary.exit_code == 1
    assert (summary.failed, summary.batches_sent) == (1, 0)
    assert standin.requests == []
    batch = session.scalars(select(UsageReportBatch)).one()
    assert batch.status == "failed"
    assert batch.last_error and "more than 35 days ago" in batch.last_error
    assert batch.meter_timestamp <= NOW  # not re-dated into the window
    assert list(report_states(session).values()) == ["failed"]  # the event stays with it


def test_a_batch_left_pending_until_it_is_too_old_fails_without_calling_stripe(
    session: Session, standin: StripeStandIn, gateway: StripeMeterEventGateway, clock: Clock
) -> None:
    user = make_user(session, plan="pro")
    session.commit()
    Usage(session).record(user, 4)
    standin.add_faults(Fault.server_error(503))
    first = run_reporter(session, gateway, max_attempts=1)
    assert (first.exit_code, first.pending) == (1, 1)
    later = NOW + timedelta(days=35)
    clock.now = later

    second = run_reporter(session, gateway, later)

    assert (second.exit_code, second.failed) == (1, 1)
    assert len(standin.requests) == 1
    batch = session.scalars(select(UsageReportBatch)).one()
    assert batch.status == "failed" and batch.last_error
    assert "more than 35 days old" in batch.last_error


def test_a_batch_pending_longer_than_stripes_dedupe_window_waits_for_a_person(
    session: Session, standin: StripeStandIn, gateway: StripeMeterEventGateway, clock: Clock
) -> None:
    user = make_user(session, plan="pro")
    session.commit()
    usage = Usage(session)
    usage.record(user, 4, billed_to=customer_of(user))
    # Stripe records the event but the answer is lost: it may or may not be there.
    standin.add_faults(Fault.dropped_after_record())
    run_reporter(session, gateway, max_attempts=1)
    next_day = NOW + timedelta(hours=24)
    clock.now = next_day

    blocked = run_reporter(session, gateway, next_day)

    assert (blocked.exit_code, blocked.failed, blocked.batches_sent) == (1, 1, 0)
    assert len(standin.requests) == 1
    batch = session.scalars(select(UsageReportBatch)).one()
    assert batch.last_error and "24 h" in batch.last_error and batch.identifier in batch.last_error

    # A person checked Stripe and asks for a resend: the identifier still protects it.
    recovered = run_reporter(session, gateway, next_day, retry_failed=True)
    assert (recovered.requeued, recovered.batches_sent, recovered.exit_code) == (1, 1, 0)
    assert_exactly_once(session, standin, usage.expected)


def test_unknown_customer_fails_with_stripes_message_until_retried_after_the_fix(
    session: Session, standin: StripeStandIn, gateway: StripeMeterEventGateway
) -> None:
    user = make_user(session, plan="starter")
    other = make_user(session, plan="pro")
    session.commit()
    usage = Usage(session)
    usage.record(user, 3, billed_to=customer_of(user))
    usage.record(other, 1, billed_to=customer_of(other))
    standin.missing_customers.add(customer_of(user))

    summary = run_reporter(session, gateway)

    assert (summary.exit_code, summary.failed, summary.batches_sent) == (1, 1, 1)
    failed = session.scalars(
        select(UsageReportBatch).where(UsageReportBatch.status == "failed")
    ).one()
    assert failed.last_error and f"No such customer: '{customer_of(user)}'" in failed.last_error
    assert failed.last_http_status == 400
    assert failed.stripe_request_id and failed.stripe_request_id.startswith("req_")
    # Failed batches are not retried by ordinary runs.
    assert run_reporter(session, gateway).batches_sent == 0

    standin.missing_customers.clear()
    retried = run_reporter(session, gateway, retry_failed=True)
    assert (retried.requeued, retried.batches_sent, retried.exit_code) == (1, 1, 0)
    assert_exactly_once(session, standin, usage.expected)


def test_a_refused_api_key_stops_the_run_and_leaves_the_batches_pending(
    session: Session, standin: StripeStandIn, gateway: StripeMeterEventGateway
) -> None:
    for plan in ("starter", "pro"):
        make_user(session, plan=plan)
    session.commit()
    usage = Usage(session)
    for user in session.scalars(select(UserSubscription)).all():
        usage.record(user.user, 1, billed_to=customer_of(user.user))
    standin.api_key = "sk_test_someoneelse000000000"

    summary = run_reporter(session, gateway)

    assert summary.exit_code == 2
    assert summary.error and "STRIPE_API_KEY" in summary.error
    assert len(standin.requests) == 1  # it stopped at the first refusal
    statuses = session.scalars(select(UsageReportBatch.status)).all()
    assert statuses == ["pending", "pending"]

    standin.api_key = None
    assert run_reporter(session, gateway).exit_code == 0
    assert_exactly_once(session, standin, usage.expected)


def test_limit_and_batch_size_bound_what_one_run_takes(
    session: Session, standin: StripeStandIn, gateway: StripeMeterEventGateway
) -> None:
    user = make_user(session, plan="pro")
    session.commit()
    usage = Usage(session)
    for _ in range(25):
        usage.record(user, 1, billed_to=customer_of(user))

    first = run_reporter(session, gateway, limit=15, batch_size=10)

    assert (first.claimed, first.batches_sent, first.exit_code) == (15, 2, 0)
    assert events_by_state(session) == {"reported": 15, "pending": 10}
    rest = run_reporter(session, gateway, batch_size=10)
    assert rest.claimed == 10
    assert_exactly_once(session, standin, usage.expected)


def test_the_time_budget_leaves_unsent_batches_for_the_next_run(
    session: Session, standin: StripeStandIn, gateway: StripeMeterEventGateway
) -> None:
    users = [make_user(session, plan="pro") for _ in range(3)]
    session.commit()
    usage = Usage(session)
    for user in users:
        usage.record(user, 2, billed_to=customer_of(user))

    class SlowStripe:
        """Each call takes 100 s of the run's (fake) clock."""

        def __init__(self) -> None:
            self.elapsed = 0.0

        def send(self, event):  # type: ignore[no-untyped-def]
            self.elapsed += 100
            return gateway.send(event)

    slow = SlowStripe()
    summary = run_reporter(session, slow, max_seconds=150, monotonic=lambda: slow.elapsed)

    assert (summary.batches_sent, summary.pending, summary.exit_code) == (2, 1, 1)
    rest = run_reporter(session, gateway)
    assert (rest.batches_sent, rest.exit_code) == (1, 0)
    assert_exactly_once(session, standin, usage.expected)


def test_dry_run_shows_what_would_be_sent_and_changes_nothing(
    session: Session, standin: StripeStandIn, gateway: StripeMeterEventGateway
) -> None:
    starter = make_user(session, plan="starter")
    team = make_org(session)
    member = make_user(session, org=team)
    free = make_user(session)
    session.commit()
    usage = Usage(session)
    usage.record(starter, 3, billed_to=customer_of(starter))
    usage.record(starter, 4, billed_to=customer_of(starter))
    usage.record(member, 5, billed_to=customer_of(team))
    usage.record(free, 1)

    def snapshot() -> tuple[object, ...]:
        session.expire_all()
        return (
            report_states(session),
            session.execute(select(func.count()).select_from(UsageReportBatch)).scalar(),
            session.execute(select(func.count()).select_from(UsageReportRun)).scalar(),
        )

    before = snapshot()
    preview = preview_report(session, NOW, ReportOptions())
    session.rollback()

    assert snapshot() == before
    assert standin.requests == []
    assert Counter({line.stripe_customer_id: line.value for line in preview.meter_events}) == (
        usage.expected
    )
    assert (preview.events_to_send, preview.skipped) == (3, {"free_plan": 1})


def test_a_database_time_zone_other_than_utc_changes_nothing(
    session: Session,
    standin: StripeStandIn,
    gateway: StripeMeterEventGateway,
    clock: Clock,
    database_url: str,
) -> None:
    user = make_user(session, plan="starter", anchor=T0)
    old = make_user(session, plan="pro", anchor=T0)
    session.commit()
    boundary = add_months(T0, 1)
    now = boundary + timedelta(minutes=1)
    usage = Usage(session, now)
    usage.record(user, 2, occurred_at=boundary - timedelta(seconds=1), billed_to=customer_of(user))
    usage.record(user, 5, occurred_at=boundary, billed_to=customer_of(user))
    usage.record(old, 1, occurred_at=now - timedelta(days=6))
    later = now + timedelta(days=30)  # the second user's usage is now 36 days old
    clock.now = later
    # The server answers in UTC+13:45.
    engine = create_engine(
        normalize_database_url(database_url),
        connect_args={"options": "-c timezone=Pacific/Chatham"},
    )
    try:
        with Session(engine) as chatham:
            summary = run_reporter(chatham, gateway, later)
    finally:
        engine.dispose()

    # The boundary usage is 30 days old and goes out; the other is 36 and fails.
    assert (summary.batches_sent, summary.failed) == (2, 1)
    assert {e.value: e.timestamp for e in standin.events} == {
        2: int(boundary.timestamp()) - 1,
        5: int(boundary.timestamp()),
    }
    session.expire_all()
    batches = session.scalars(select(UsageReportBatch).order_by(UsageReportBatch.id)).all()
    periods = {(b.period_start, b.period_end) for b in batches}
    assert periods == {(T0, boundary), (boundary, add_months(T0, 2))}
    oldest = now - timedelta(days=6)
    assert any(
        b.last_error and f"oldest at {oldest:%Y-%m-%d %H:%M} UTC" in b.last_error for b in batches
    )


def test_events_of_a_pending_batch_are_not_claimed_again(
    session: Session, standin: StripeStandIn, gateway: StripeMeterEventGateway
) -> None:
    from portal.billing.status import reporting_status

    user = make_user(session, plan="pro")
    session.commit()
    usage = Usage(session)
    usage.record(user, 2, billed_to=customer_of(user))
    usage.record(user, 3, billed_to=customer_of(user))
    standin.add_faults(Fault.server_error(503))

    first = run_reporter(session, gateway, max_attempts=1)

    assert (first.claimed, first.pending, first.batches_sent) == (2, 1, 0)
    # Claimed events are the outbox's now: not the backlog's, and not
    # claimable a second time.
    assert events_by_state(session) == {"claimed": 2}
    usage.record(user, 4, billed_to=customer_of(user))
    status = reporting_status(session, NOW)
    session.rollback()
    assert (status.pending_events, status.pending_batches, status.pending_batch_events) == (
        1,
        1,
        2,
    )
    preview = preview_report(session, NOW, ReportOptions())
    session.rollback()
    assert sorted((line.events, line.from_outbox) for line in preview.meter_events) == [
        (1, False),
        (2, True),
    ]

    second = run_reporter(session, gateway)

    assert (second.claimed, second.batches_sent, second.events_reported) == (1, 2, 3)
    assert_exactly_once(session, standin, usage.expected)
    batches = session.scalars(select(UsageReportBatch).order_by(UsageReportBatch.id)).all()
    assert [(b.event_count, b.value) for b in batches] == [(2, 5), (1, 4)]
