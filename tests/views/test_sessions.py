"""Sessions the server ends: sign-out, operators, password changes and timeouts."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session

from portal.config import load_config
from tests.factories import FrozenClock, make_org, make_user
from tests.views.conftest import PASSWORD, csrf_token, sign_in

SignIn = Callable[[str], FlaskClient]


def signed_in_everywhere(client: FlaskClient, org_slug: str, member_id: int) -> list[int]:
    """What each signed-in URL answers this client (200 while its session lives)."""
    paths = [
        "/usage",
        "/usage/history",
        f"/orgs/{org_slug}/usage",
        f"/orgs/{org_slug}/usage.csv",
        f"/orgs/{org_slug}/members/{member_id}/history",
    ]
    statuses = [client.get(path).status_code for path in paths]
    poll = client.get("/usage/current", headers={"HX-Request": "true"})
    if poll.status_code == 401:
        assert poll.headers["HX-Redirect"] == "/login"
    return [*statuses, poll.status_code]


def an_admin(session: Session) -> tuple[str, str, int]:
    org = make_org(session, plan="team", seats=2)
    admin = make_user(session, org=org, role="admin", password=PASSWORD, email="ada@example.com")
    member = make_user(session, org=org)
    session.commit()
    return admin.email, org.slug, member.id


def test_a_cookie_replayed_after_sign_out_signs_nobody_in(
    app: Flask, session: Session, signed_in: SignIn
) -> None:
    email, slug, member = an_admin(session)
    client = signed_in(email)
    assert signed_in_everywhere(client, slug, member) == [200] * 6
    saved = client.get_cookie("session")
    assert saved is not None

    token = csrf_token(client.get("/usage").get_data(as_text=True))
    assert client.post("/logout", data={"csrf_token": token}).status_code == 302

    replay = app.test_client()
    replay.set_cookie("session", saved.value)
    assert signed_in_everywhere(replay, slug, member) == [302] * 5 + [401]


def test_an_operator_signs_a_user_out_of_every_session(
    app: Flask, session: Session, signed_in: SignIn
) -> None:
    email, slug, member = an_admin(session)
    laptop, phone = signed_in(email), signed_in(email)
    result = app.test_cli_runner().invoke(args=["sign-out-user", "--email", email])
    assert result.exit_code == 0 and "out of 2 sessions" in result.output
    for browser in (laptop, phone):
        assert signed_in_everywhere(browser, slug, member) == [302] * 5 + [401]
    assert sign_in(app.test_client(), email).status_code == 302  # and may sign in again


def test_a_new_password_is_read_from_stdin_and_ends_every_session(
    app: Flask, session: Session, signed_in: SignIn
) -> None:
    email, slug, member = an_admin(session)
    browser = signed_in(email)
    runner = app.test_cli_runner()
    # Never from the command line, where other users and the shell's history see it.
    refused = runner.invoke(args=["set-password", "--email", email, "--password", "x" * 12])
    assert refused.exit_code == 2
    result = runner.invoke(args=["set-password", "--email", email], input="correct horse staple\n")
    assert result.exit_code == 0, result.output
    assert "correct horse staple" not in result.output
    assert signed_in_everywhere(browser, slug, member) == [302] * 5 + [401]
    assert sign_in(app.test_client(), email).status_code == 200  # the old one is refused
    assert sign_in(app.test_client(), email, "correct horse staple").status_code == 302
    short = runner.invoke(args=["set-password", "--email", email], input="short\n")
    assert short.exit_code == 2 and "at least 8 characters" in short.output


def test_an_idle_session_ends_and_a_used_one_lives_on(
    session: Session, signed_in: SignIn, clock: FrozenClock
) -> None:
    email, _, _ = an_admin(session)
    idle, busy = signed_in(email), signed_in(email)
    for _ in range(3):  # 33 hours, the busy browser seen every 11
        clock.advance(timedelta(hours=11))
        assert busy.get("/usage").status_code == 200
    assert idle.get("/usage").status_code == 302


def test_no_session_outlives_its_lifetime(
    session: Session, signed_in: SignIn, clock: FrozenClock
) -> None:
    email, _, _ = an_admin(session)
    browser = signed_in(email)
    for _ in range(30):  # every 11 hours for 13.75 days
        clock.advance(timedelta(hours=11))
        assert browser.get("/usage").status_code == 200
    clock.advance(timedelta(hours=6))  # 14 days and 30 minutes after signing in
    assert browser.get("/usage").status_code == 302


@pytest.mark.parametrize(
    ("environ", "hours", "days"),
    [({}, 12, 14), ({"SESSION_IDLE_HOURS": "1", "SESSION_LIFETIME_DAYS": "2"}, 1, 2)],
)
def test_the_timeouts_are_settings(
    environ: dict[str, str], hours: int, days: int, tmp_path: object
) -> None:
    config = load_config(
        {"DATABASE_URL": "postgresql://portal@db.example/portal", **environ}, str(tmp_path)
    )
    assert (config["SESSION_IDLE_HOURS"], config["SESSION_LIFETIME_DAYS"]) == (hours, days)
    assert config["PERMANENT_SESSION_LIFETIME"] == timedelta(days=days)


def test_a_session_ended_under_a_polling_page_says_so_and_comes_back_there(
    app: Flask, session: Session, signed_in: SignIn
) -> None:
    user = make_user(session, password=PASSWORD)
    session.commit()
    browser = signed_in(user.email)
    assert (
        app.test_cli_runner().invoke(args=["sign-out-user", "--email", user.email]).exit_code == 0
    )

    poll = browser.get(
        "/usage/current",
        headers={"HX-Request": "true", "HX-Current-URL": "http://localhost/usage/history?x=1"},
    )
    assert poll.status_code == 401
    assert poll.headers["HX-Redirect"] == "/login?next=/usage/history?x%3D1"
    login = browser.get(poll.headers["HX-Redirect"]).get_data(as_text=True)
    assert "Your session ended; sign in again." in login
    again = browser.get(poll.headers["HX-Redirect"]).get_data(as_text=True)
    assert "session ended" not in again  # told once
    token = csrf_token(again)
    back = browser.post(
        poll.headers["HX-Redirect"],
        data={"csrf_token": token, "email": user.email, "password": PASSWORD},
    )
    assert back.status_code == 302 and back.headers["Location"] == "/usage/history?x=1"


def test_a_visitor_who_never_signed_in_is_not_told_a_session_ended(app: Flask) -> None:
    page = app.test_client().get("/usage", follow_redirects=True).get_data(as_text=True)
    assert "Sign in" in page and "session ended" not in page
