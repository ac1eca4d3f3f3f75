"""``flask report-usage`` and ``flask usage-status`` as cron and operators use them."""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import timedelta

import pytest
from click.testing import Result
from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal.models import UsageReportBatch, UsageReportRun
from tests.billing.helpers import (
    API_KEY,
    Usage,
    assert_exactly_once,
    customer_of,
    report_states,
)
from tests.factories import NOW, make_org, make_user
from tests.stripe_standin import StripeStandIn

REAL_NOW = NOW
"""The commands run in this process, on the test's clock, and so does the stand-in."""


@pytest.fixture
def real_standin() -> Iterator[StripeStandIn]:
    with StripeStandIn(api_key=API_KEY).running() as server:
        yield server


def invoke(app: Flask, standin: StripeStandIn | None, *args: str, **env: str | None) -> Result:
    environment: dict[str, str | None] = {
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": standin.url if standin else None,
        "STRIPE_METER_EVENT_NAME": None,
    }
    environment.update(env)
    return app.test_cli_runner().invoke(args=list(args), env=environment)


def record_some_usage(session: Session) -> Usage:
    anchor = REAL_NOW - timedelta(days=3)
    starter = make_user(session, plan="starter", anchor=anchor)
    team = make_org(session, anchor=anchor)
    member = make_user(session, org=team, anchor=anchor)
    free = make_user(session, anchor=anchor)
    session.commit()
    usage = Usage(session, REAL_NOW)
    usage.record(starter, 3, billed_to=customer_of(starter))
    usage.record(member, 4, billed_to=customer_of(team))
    usage.record(free, 1)
    return usage


CONFIG_ERRORS = {
    "missing key": ({"STRIPE_API_KEY": None}, "STRIPE_API_KEY is not set"),
    "publishable key": ({"STRIPE_API_KEY": "pk_test_0123456789abcdef"}, "STRIPE_API_KEY must be"),
    "malformed key": ({"STRIPE_API_KEY": "sk_nope"}, "STRIPE_API_KEY must be"),
    "plain http base": ({"STRIPE_API_BASE": "http://stripe.example.com"}, "STRIPE_API_BASE"),
    "bad event name": ({"STRIPE_METER_EVENT_NAME": "two words"}, "STRIPE_METER_EVENT_NAME"),
}


@pytest.mark.parametrize("env,message", CONFIG_ERRORS.values(), ids=CONFIG_ERRORS.keys())
def test_configuration_errors_exit_2_naming_the_variable_and_touch_nothing(
    app: Flask, session: Session, env: dict[str, str | None], message: str
) -> None:
    record_some_usage(session)

    result = invoke(app, None, "report-usage", **env)

    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "pk_test_0123456789abcdef" not in result.output  # keys are never echoed
    session.expire_all()
    assert session.scalar(select(func.count()).select_from(UsageReportRun)) == 0
    assert set(report_states(session).values()) == {"pending"}


def test_report_usage_prints_one_summary_line_for_the_cron_log(
    app: Flask, session: Session, real_standin: StripeStandIn
) -> None:
    usage = record_some_usage(session)

    result = invoke(app, real_standin, "report-usage")

    assert result.exit_code == 0, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("report-usage: claimed 3 events; sent 2 meter events")
    assert "skipped 1 (free_plan 1)" in lines[0]
    assert_exactly_once(session, real_standin, usage.expected)


def test_report_usage_json_summary_has_the_documented_fields(
    app: Flask, session: Session, real_standin: StripeStandIn
) -> None:
    record_some_usage(session)

    result = invoke(app, real_standin, "report-usage", "--json", "--batch-size", "2")

    assert result.exit_code == 0, result.output
    summary = json.loads(result.output)
    assert {
        "claimed",
        "batches_sent",
        "events_reported",
        "skipped",
        "failed",
        "retried",
        "pending",
        "duration_s",
    } <= set(summary)
    assert (summary["claimed"], summary["events_reported"], summary["skipped"]) == (3, 2, 1)
    assert summary["exit_code"] == 0


def test_dry_run_lists_the_meter_events_and_changes_nothing(
    app: Flask, session: Session, real_standin: StripeStandIn
) -> None:
    usage = record_some_usage(session)

    text = invoke(app, real_standin, "report-usage", "--dry-run")
    as_json = invoke(app, real_standin, "report-usage", "--dry-run", "--json")

    assert text.exit_code == as_json.exit_code == 0, text.output
    assert "Dry run: nothing is sent or changed" in text.output
    for customer in usage.expected:
        assert customer in text.output
    preview = json.loads(as_json.output)
    sent = {line["stripe_customer_id"]: line["value"] for line in preview["meter_events"]}
    assert sent == dict(usage.expected)
    assert preview["skipped"] == {"free_plan": 1}
    assert real_standin.requests == []
    session.expire_all()
    assert set(report_states(session).values()) == {"pending"}
    assert session.scalar(select(func.count()).select_from(UsageReportBatch)) == 0
    assert session.scalar(select(func.count()).select_from(UsageReportRun)) == 0


def test_dry_run_needs_no_stripe_key(app: Flask, session: Session) -> None:
    """It sends nothing: an operator may preview on a machine without the secret key."""
    usage = record_some_usage(session)

    result = invoke(app, None, "report-usage", "--dry-run", STRIPE_API_KEY=None)

    assert result.exit_code == 0, result.output
    assert "Dry run: nothing is sent or changed" in result.output
    for customer in usage.expected:
        assert customer in result.output


def test_dry_run_still_checks_the_meter_event_name(app: Flask, session: Session) -> None:
    record_some_usage(session)

    result = invoke(
        app,
        None,
        "report-usage",
        "--dry-run",
        STRIPE_API_KEY=None,
        STRIPE_METER_EVENT_NAME="two words",
    )

    assert result.exit_code == 2, result.output
    assert "STRIPE_METER_EVENT_NAME" in result.output


def test_a_failed_batch_exits_1_shows_in_usage_status_and_recovers_with_retry_failed(
    app: Flask, session: Session, real_standin: StripeStandIn
) -> None:
    usage = record_some_usage(session)
    customer = next(iter(usage.expected))
    real_standin.missing_customers.add(customer)

    failed = invoke(app, real_standin, "report-usage")
    status = invoke(app, None, "usage-status")
    status_json = json.loads(invoke(app, None, "usage-status", "--json").output)

    assert failed.exit_code == 1, failed.output
    assert "failed 1" in failed.output and "see flask usage-status" in failed.output
    assert status.exit_code == 0
    assert f"No such customer: '{customer}'" in status.output
    assert "--retry-failed" in status.output
    assert "Last successful run: never." in status.output
    assert status_json["failed_batch_count"] == 1
    assert status_json["failed_batches"][0]["stripe_customer_id"] == customer
    assert status_json["last_run"]["outcome"] == "failed"

    real_standin.missing_customers.clear()
    retried = invoke(app, real_standin, "report-usage", "--retry-failed", "--json")
    assert retried.exit_code == 0, retried.output
    assert json.loads(retried.output)["requeued"] == 1
    assert_exactly_once(session, real_standin, usage.expected)
    healthy = invoke(app, None, "usage-status")
    assert "Failed: none." in healthy.output
    assert "Last successful run: " in healthy.output and ": ok," in healthy.output


def test_usage_status_shows_the_backlog_before_any_run(app: Flask, session: Session) -> None:
    record_some_usage(session)

    result = invoke(app, None, "usage-status")
    data = json.loads(invoke(app, None, "usage-status", "--json").output)

    assert result.exit_code == 0
    assert "Backlog: 3 usage events waiting" in result.output
    assert data["backlog"]["pending_events"] == 3
    assert data["backlog"]["oldest_pending_age_s"] >= 0
    assert data["last_successful_run"] is None


def test_mark_sent_settles_a_failed_batch_without_calling_stripe(
    app: Flask, session: Session, real_standin: StripeStandIn
) -> None:
    usage = record_some_usage(session)
    customer = next(iter(usage.expected))
    real_standin.missing_customers.add(customer)
    assert invoke(app, real_standin, "report-usage").exit_code == 1
    failed = session.scalars(
        select(UsageReportBatch).where(UsageReportBatch.status == "failed")
    ).one()
    requests_before = len(real_standin.requests)

    # Say the usage was billed by hand: settle it.
    result = invoke(app, None, "report-usage", "--mark-sent", str(failed.id), STRIPE_API_KEY=None)

    assert result.exit_code == 0, result.output
    assert f"Marked batch #{failed.id} sent" in result.output
    assert len(real_standin.requests) == requests_before
    session.expire_all()
    assert failed.status == "sent" and failed.last_error
    assert failed.last_error.startswith("marked sent by hand")
    states = report_states(session)
    assert {states[uuid.UUID(str(event_id))] for event_id in failed.event_ids} == {"reported"}
    assert "Failed: none." in invoke(app, None, "usage-status").output

    again = invoke(app, None, "report-usage", "--mark-sent", str(failed.id))
    assert again.exit_code == 1
    assert "only a failed batch" in again.output


def test_unbilled_usage_shows_in_usage_status_and_is_billed_once_the_customer_is_set(
    app: Flask, session: Session, real_standin: StripeStandIn
) -> None:
    anchor = REAL_NOW - timedelta(days=3)
    team = make_org(session, anchor=anchor, customer=None)
    member = make_user(session, org=team, anchor=anchor)
    session.commit()
    usage = Usage(session, REAL_NOW)
    usage.record(member, 2)
    usage.record(member, 5)

    assert invoke(app, real_standin, "report-usage").exit_code == 0
    assert real_standin.requests == []
    assert set(report_states(session).values()) == {"skipped:no_customer"}
    status = json.loads(invoke(app, None, "usage-status", "--json").output)
    assert status["unbilled_no_customer"] == 2
    assert "Unbilled: 2 paid usage events" in invoke(app, None, "usage-status").output

    # The customer is set, then the skipped usage goes back and out.
    team.stripe_customer_id = "cus_found_later"
    session.commit()
    requeued = invoke(app, None, "report-usage", "--requeue-unbilled", STRIPE_API_KEY=None)
    assert requeued.exit_code == 0, requeued.output
    assert "Put 2 usage events back in the backlog" in requeued.output
    assert (
        json.loads(invoke(app, None, "usage-status", "--json").output)["unbilled_no_customer"] == 0
    )
    assert invoke(app, real_standin, "report-usage").exit_code == 0

    assert_exactly_once(session, real_standin, Counter({"cus_found_later": 7}))
    again = invoke(app, None, "report-usage", "--requeue-unbilled", STRIPE_API_KEY=None)
    assert "Put 0 usage events back" in again.output
