"""Disabled users: signed out everywhere at their next request, nothing more recorded, their
usage kept in the pool."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable

from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from portal import clock
from portal.apikeys import create_api_key
from portal.models import UsageEvent
from portal.usage import record_usage
from tests.factories import make_org, make_user
from tests.views.conftest import PASSWORD, sign_in

SignIn = Callable[[str], FlaskClient]


def flask(app: Flask, *args: str) -> str:
    result = app.test_cli_runner().invoke(args=list(args))
    assert result.exit_code == 0, result.output
    return result.output


def events(session: Session) -> int:
    session.expire_all()
    return session.scalar(select(func.count()).select_from(UsageEvent)) or 0


def test_disabling_ends_open_sessions_at_their_next_request(
    app: Flask, session: Session, signed_in: SignIn
) -> None:
    user = make_user(session, plan="pro", password=PASSWORD, email="dee@example.com")
    session.commit()
    client = signed_in(user.email)
    assert client.get("/usage").status_code == 200

    assert "Disabled dee@example.com" in flask(app, "disable-user", "--email", "DEE@example.com")

    poll = client.get("/usage/current", headers={"HX-Request": "true"})
    assert poll.status_code == 401 and poll.headers["HX-Redirect"] == "/login"
    for path in ("/usage", "/usage/history"):
        page = client.get(path)
        assert page.status_code == 302 and page.headers["Location"].startswith("/login")
    refused = sign_in(app.test_client(), user.email)
    assert refused.status_code == 200 and "don&#39;t match an account" in refused.get_data(
        as_text=True
    )

    assert "Enabled dee@example.com" in flask(app, "enable-user", "--email", user.email)
    assert sign_in(app.test_client(), user.email).status_code == 302


def test_an_unknown_email_is_a_usage_error(app: Flask) -> None:
    result = app.test_cli_runner().invoke(args=["disable-user", "--email", "nobody@example.com"])
    assert result.exit_code == 2 and "no user with email 'nobody@example.com'" in result.output


def test_the_api_refuses_to_record_for_a_disabled_user(app: Flask, session: Session) -> None:
    user = make_user(session, plan="pro", email="dee@example.com")
    _, key = create_api_key(session, "backend", clock.now())
    session.commit()
    record_usage(session, user.id, idempotency_key="before", now=clock.now())
    flask(app, "disable-user", "--email", user.email)
    client = app.test_client()
    headers = {"Authorization": f"Bearer {key}"}

    check = client.get(f"/api/v1/users/{user.email}/usage", headers=headers)
    assert check.status_code == 200
    status = json.loads(check.data)
    assert (status["allowed"], status["reason"], status["used"]) == (False, "user_disabled", 1)

    event = {"user_email": user.email, "idempotency_key": "after"}
    single = client.post("/api/v1/usage-events", json=event, headers=headers)
    assert single.status_code == 403
    assert json.loads(single.data)["error"]["code"] == "user_disabled"
    batch = client.post("/api/v1/usage-events/batch", json={"events": [event]}, headers=headers)
    results = json.loads(batch.data)
    assert results["results"][0]["status"] == "user_disabled"
    assert results["summary"]["user_disabled"] == 1
    assert events(session) == 1

    flask(app, "enable-user", "--email", user.email)
    assert client.post("/api/v1/usage-events", json=event, headers=headers).status_code == 201


def test_org_pages_list_a_disabled_member_and_the_pool_keeps_their_usage(
    app: Flask, session: Session, signed_in: SignIn
) -> None:
    org = make_org(session, plan="team", seats=2)
    admin = make_user(session, org=org, role="admin", password=PASSWORD)
    member = make_user(session, org=org, name="Dee Disabled")
    session.commit()
    record_usage(session, member.id, idempotency_key="used", now=clock.now(), quantity=7)
    flask(app, "disable-user", "--email", member.email)

    client = signed_in(admin.email)
    page = client.get(f"/orgs/{org.slug}/usage").get_data(as_text=True)
    assert 'data-testid="disabled">Disabled</span>' in page
    assert "<strong>7</strong> of 100 used" in page
    export = client.get(f"/orgs/{org.slug}/usage.csv").get_data(as_text=True)
    rows = {row["email"]: row for row in csv.DictReader(io.StringIO(export))}
    assert rows[member.email]["account_status"] == "disabled"
    assert rows[member.email]["used"] == "7"
    assert rows[admin.email]["account_status"] == "active"
