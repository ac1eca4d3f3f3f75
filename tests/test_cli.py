from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

from flask import Flask
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal import clock
from portal.demo import UNREPORTED_WINDOW
from portal.models import (
    Membership,
    Organization,
    UsageEvent,
    User,
    UserSubscription,
    usage_report_backlog,
)
from portal.usage import check_usage, get_org_usage_summary, organization_period

ROOT = Path(__file__).resolve().parent.parent


def row_counts(session: Session) -> tuple[int, ...]:
    return tuple(
        session.scalar(select(func.count()).select_from(model)) or 0
        for model in (Organization, User, Membership, UserSubscription, UsageEvent)
    )


def test_create_org_and_users_from_the_command_line(app: Flask, session: Session) -> None:
    runner = app.test_cli_runner()
    result = runner.invoke(
        args=[
            "create-org",
            "--slug",
            "acme",
            "--name",
            "Acme",
            "--plan",
            "team",
            "--seats",
            "3",
            "--stripe-customer",
            "cus_acme1",
        ]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        args=[
            "create-user",
            "--email",
            "Admin@Acme.example",
            "--password",
            "s3cret-pass",
            "--org",
            "acme",
            "--role",
            "admin",
        ]
    )
    assert result.exit_code == 0, result.output
    result = runner.invoke(
        args=[
            "create-user",
            "--email",
            "solo@example.com",
            "--password",
            "s3cret-pass",
            "--plan",
            "starter",
            "--stripe-customer",
            "cus_solo",
        ]
    )
    assert result.exit_code == 0, result.output

    now = clock.now()
    admin = check_usage(session, "admin@acme.example", now)
    assert (admin.plan.id, admin.included, str(admin.subject)) == ("team", 150, "organization:acme")
    solo = check_usage(session, "solo@example.com", now)
    assert solo.plan.id == "starter" and solo.period.start <= now < solo.period.end
    assert (now - solo.period.start).total_seconds() < 60  # the period starts now
    user = session.scalars(select(User).where(User.email == "admin@acme.example")).one()
    assert user.password_hash and "s3cret-pass" not in user.password_hash


def test_wrong_arguments_give_a_usage_error_and_write_nothing(app: Flask, session: Session) -> None:
    runner = app.test_cli_runner()
    runner.invoke(
        args=["create-org", "--slug", "acme", "--name", "Acme", "--plan", "team", "--seats", "1"]
    )
    before = row_counts(session)
    bad_calls = [
        ["create-org", "--slug", "acme", "--name", "Again", "--plan", "team", "--seats", "1"],
        ["create-org", "--slug", "Bad Slug", "--name", "X", "--plan", "team", "--seats", "1"],
        ["create-org", "--slug", "x", "--name", "X", "--plan", "pro", "--seats", "1"],
        ["create-org", "--slug", "x", "--name", "X", "--plan", "team", "--seats", "0"],
        [
            "create-org",
            "--slug",
            "x",
            "--name",
            "X",
            "--plan",
            "team",
            "--seats",
            "2",
            "--stripe-customer",
            "acct_123",
        ],
        ["create-user", "--email", "not-an-email", "--password", "long-enough"],
        ["create-user", "--email", "a@example.com", "--password", "short"],
        ["create-user", "--email", "a@example.com", "--password", "long-enough", "--plan", "team"],
        ["create-user", "--email", "a@example.com", "--password", "long-enough", "--org", "nope"],
        ["create-user", "--email", "a@example.com", "--password", "long-enough", "--role", "admin"],
        [
            "create-user",
            "--email",
            "a@example.com",
            "--password",
            "long-enough",
            "--stripe-customer",
            "cus_x",
        ],
    ]
    for args in bad_calls:
        result = runner.invoke(args=args)
        assert result.exit_code == 2, (args, result.output)
        assert "Usage:" in result.output or "Error:" in result.output
    assert row_counts(session) == before


def test_seed_demo_loads_a_living_portal_once(app: Flask, session: Session) -> None:
    runner = app.test_cli_runner()
    first = runner.invoke(args=["seed-demo"])
    assert first.exit_code == 0, first.output
    assert "demo-password" in first.output
    # One sign-in per kind of user, each an account that exists and looks its part.
    sign_ins = dict(line.split(maxsplit=1) for line in first.output.splitlines() if "@" in line)
    assert list(sign_ins.values()) == [
        "free plan",
        "free plan, at its cap",
        "starter plan",
        "pro plan, in overage",
        "pro plan, trialing",
        "member of Acme Robotics (team)",
        "admin of Acme Robotics (team)",
        "admin of Globex Corporation (business)",
    ]
    now = clock.now()
    statuses = {email: check_usage(session, email, now) for email in sign_ins}
    assert statuses["capped@demo.example"].reason == "limit_reached"
    assert statuses["pro@demo.example"].reason == "overage"
    member = statuses[next(e for e, kind in sign_ins.items() if kind.startswith("member"))]
    assert member.subject.kind == "organization" and member.member_used is not None
    counts = row_counts(session)
    again = runner.invoke(args=["seed-demo"])
    assert "not loaded" in again.output
    assert row_counts(session) == counts

    levels = {
        str(check_usage(session, e, now).warning_level)
        for e in (
            "free@demo.example",
            "capped@demo.example",
            "starter@demo.example",
            "pro@demo.example",
            "trial@demo.example",
        )
    }
    assert levels == {"ok", "warning", "exceeded"}
    orgs = session.scalars(select(Organization)).all()
    assert {o.plan_id for o in orgs} == {"team", "business"}
    members = 0
    for org in orgs:
        summary = get_org_usage_summary(session, org, organization_period(org, now))
        members += summary.member_count
        assert summary.members_used == summary.pool.used > 0
        assert all(summary.members_per_level.values()), summary.members_per_level
        history_start = organization_period(org, now).shifted(-11).start
        assert org.billing_anchor <= history_start  # a full year of history
    assert members == 30
    # Only the last couple of days' usage waits for the reporter; what came
    # before was reported before this portal, and left the backlog.
    waiting, oldest_waiting = session.execute(
        select(func.count(), func.min(UsageEvent.recorded_at)).join_from(
            usage_report_backlog, UsageEvent, UsageEvent.id == usage_report_backlog.c.event_id
        )
    ).one()
    assert waiting > 0 and oldest_waiting is not None
    assert oldest_waiting >= now - UNREPORTED_WINDOW - timedelta(minutes=1)


def test_every_flask_command_works_in_a_fresh_shell(database_url: str) -> None:
    """No PORTAL_ENV, no SECRET_KEY: the production default, as in a new terminal or cron."""
    flask = str(Path(sys.executable).parent / "flask")
    environment = {"PATH": os.environ["PATH"], "DATABASE_URL": database_url}

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [flask, *args], cwd=ROOT, env=environment, capture_output=True, text=True, timeout=120
        )

    listing = run("--help")
    assert listing.returncode == 0, listing.stderr
    commands = [
        "create-org",
        "create-user",
        "disable-user",
        "enable-user",
        "seed-demo",
        "create-api-key",
        "revoke-api-key",
        "list-api-keys",
        "report-usage",
        "usage-status",
        "db",
    ]
    for command in commands:
        assert command in listing.stdout
        shown = run(command, "--help")
        assert shown.returncode == 0 and "Usage:" in shown.stdout, (command, shown.stderr)
    status = run("usage-status")
    assert status.returncode == 0 and "Backlog: empty." in status.stdout, status.stderr


def test_a_member_past_the_seats_is_warned_about_and_listed_by_usage_status(
    app: Flask, session: Session
) -> None:
    runner = app.test_cli_runner()
    runner.invoke(
        args=["create-org", "--slug", "acme", "--name", "Acme Robotics", "--plan", "team"]
        + ["--seats", "1"]
    )

    def join(email: str) -> Any:
        return runner.invoke(
            args=["create-user", "--email", email, "--password", "long-enough", "--org", "acme"]
        )

    first = join("ada@acme.example")
    assert first.exit_code == 0 and "Warning" not in first.output
    second = join("bob@acme.example")
    assert second.exit_code == 0  # created all the same: seats are bought in Stripe
    assert "Warning: Acme Robotics (acme): 2 members on 1 seat." in second.stderr

    status = runner.invoke(args=["usage-status"])
    assert "Organizations with more members than seats: 1" in status.output
    assert "  Acme Robotics (acme): 2 members on 1 seat" in status.output
    document = app.json.loads(runner.invoke(args=["usage-status", "--json"]).output)
    assert document["organizations_over_seats"] == [
        {"slug": "acme", "name": "Acme Robotics", "members": 2, "seats": 1}
    ]
